#!/usr/bin/env bash
# Live local test-pattern camera streams for the command wall's camera wall: one ffmpeg per
# camera of the district file (testsrc2 with the camera's name and a clock drawn on it),
# written as HLS to <dir>/<camera id>/index.m3u8, which the dashboard serves at
# /cameras/<camera id>/index.m3u8 (dashboard.cameras_dir, `floodcmd demo --cameras-dir`).
#
#   scripts/cameras.sh start [--all | CAM-ID...]   underpass cameras (CAM-UP-*) by default
#   scripts/cameras.sh stop                        stop the streams this script started
#   scripts/cameras.sh status                      list the running streams
#
# Environment:
#   FLOODCMD_CAMERAS_DIR   output directory (default <repo>/.cache/cameras)
#   FLOODCMD_DISTRICT      district file (default <repo>/config/xincheng.toml)
#   FLOODCMD_CAMERA_SIZE   frame size (default 320x180); FLOODCMD_CAMERA_FPS (default 8)
#
# CPU: each stream is small, low-rate x264 ultrafast (about 2-4 % of a core); the default of
# the 18 underpass cameras stays well under one core. Needs Debian's ffmpeg and
# fonts-wqy-microhei (for the Chinese labels).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${FLOODCMD_CAMERAS_DIR:-$REPO/.cache/cameras}
DISTRICT=${FLOODCMD_DISTRICT:-$REPO/config/xincheng.toml}
SIZE=${FLOODCMD_CAMERA_SIZE:-320x180}
FPS=${FLOODCMD_CAMERA_FPS:-8}
FONT=/usr/share/fonts/truetype/wqy/wqy-microhei.ttc
PIDS=$DIR/.pids

# id<TAB>name of every [[cameras]] entry of the district file.
cameras() {
  awk '
    /^\[\[cameras\]\]/ { if (inside && id != "") print id "\t" name; inside = 1; id = ""; name = ""; next }
    /^\[/ { if (inside && id != "") print id "\t" name; inside = 0; next }
    inside && /^id *=/ { sub(/^id *= *"/, ""); sub(/".*/, ""); id = $0 }
    inside && /^name *=/ { sub(/^name *= *"/, ""); sub(/".*/, ""); name = $0 }
    END { if (inside && id != "") print id "\t" name }
  ' "$DISTRICT"
}

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

start_one() {
  local id=$1 name=$2 out=$DIR/$1
  if [[ -f $PIDS ]] && alive "$(awk -v id="$id" '$1 == id { print $2 }' "$PIDS")"; then
    return 0
  fi
  mkdir -p "$out"
  rm -f "$out"/*.ts "$out"/index.m3u8
  # drawtext needs its text in a file: names are Chinese and may hold characters the filter
  # syntax treats specially.
  printf '%s  %s' "$id" "$name" >"$out/label.txt"
  local font=""
  [[ -f $FONT ]] && font="fontfile=$FONT:"
  ffmpeg -nostdin -hide_banner -loglevel error -re \
    -f lavfi -i "testsrc2=size=$SIZE:rate=$FPS" \
    -vf "drawtext=${font}textfile=$out/label.txt:fontsize=14:fontcolor=white:box=1:boxcolor=black@0.6:x=6:y=6,drawtext=${font}text='%{localtime\:%H\\\\\:%M\\\\\:%S}':fontsize=14:fontcolor=yellow:box=1:boxcolor=black@0.6:x=6:y=h-24" \
    -c:v libx264 -preset ultrafast -tune zerolatency -pix_fmt yuv420p -g $((FPS * 2)) -b:v 150k \
    -f hls -hls_time 2 -hls_list_size 4 -hls_flags delete_segments+omit_endlist+temp_file \
    -hls_segment_filename "$out/seg-%05d.ts" "$out/index.m3u8" \
    >"$out/ffmpeg.log" 2>&1 &
  echo "$id $!" >>"$PIDS"
}

cmd=${1:-status}
shift || true
case $cmd in
  start)
    command -v ffmpeg >/dev/null || { echo "cameras.sh: ffmpeg is not installed (apt-get install ffmpeg)" >&2; exit 1; }
    mkdir -p "$DIR"
    want_all=0
    ids=()
    for a in "$@"; do
      if [[ $a == --all ]]; then want_all=1; else ids+=("$a"); fi
    done
    n=0
    while IFS=$'\t' read -r id name; do
      if ((${#ids[@]})); then
        [[ " ${ids[*]} " == *" $id "* ]] || continue
      elif ((!want_all)); then
        [[ $id == CAM-UP-* ]] || continue
      fi
      start_one "$id" "$name"
      n=$((n + 1))
    done < <(cameras)
    echo "cameras.sh: $n stream(s) under $DIR (served at /cameras/<id>/index.m3u8)" >&2
    echo "$DIR"
    ;;
  stop)
    if [[ -f $PIDS ]]; then
      while read -r id pid; do
        if alive "$pid"; then kill "$pid" 2>/dev/null || true; fi
      done <"$PIDS"
      # Give them a moment, then make sure.
      sleep 0.5
      while read -r id pid; do
        if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
      done <"$PIDS"
      rm -f "$PIDS"
    fi
    echo "cameras.sh: stopped" >&2
    ;;
  status)
    running=0
    if [[ -f $PIDS ]]; then
      while read -r id pid; do
        if alive "$pid"; then
          echo "$id pid $pid $DIR/$id/index.m3u8"
          running=$((running + 1))
        fi
      done <"$PIDS"
    fi
    ((running > 0)) || { echo "cameras.sh: no streams running" >&2; exit 1; }
    ;;
  *)
    sed -n '2,16p' "$0" >&2
    exit 2
    ;;
esac
