#!/usr/bin/env bash
# Fuzz every decoder that takes bytes from outside (fuzz/README.md lists the targets): build
# the cargo-fuzz targets once, run each for SECONDS (default 20) from its committed seeds
# (fuzz/corpus/<target>), and fail on the first crash, hang or unbounded allocation of any.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   FUZZ_BUILD=dev scripts/fuzz.sh 8     # what .ci/run does: a cheaper build, a short run
#
# A crash leaves the input in fuzz/artifacts/<target>/; reproduce it with
#   fuzz/target/x86_64-unknown-linux-gnu/<release|debug>/<target> fuzz/artifacts/<target>/crash-...
# then fix the decoder and keep the input as a regression test in the owning crate (e.g.
# ingest/tests/fuzz_regressions.rs). What a run adds to the corpus stays in fuzz/corpus-run
# (ignored by git), so later runs continue from it; delete it to start from the seeds.
#
# How this builds on stable Rust (no nightly here): `cargo fuzz` (cargo install cargo-fuzz
# --locked) with `-s none`. The default `-s address` passes `-Zsanitizer=address`, a nightly
# flag; without a sanitizer cargo-fuzz passes only stable codegen flags (-Cpasses=sancov-module,
# -Cllvm-args=-sanitizer-coverage-*, --cfg fuzzing, -Cdebug-assertions), so no
# RUSTC_BOOTSTRAP is needed. Nothing is lost that matters here: AddressSanitizer finds memory
# errors of unsafe code, and floodcmd has none; panics, overflows (debug assertions are on),
# hangs (-timeout) and memory (-rss_limit_mb) are caught without it. libFuzzer's
# -malloc_limit_mb needs a sanitizer's malloc hooks, so the targets' own allocator
# (fuzz/src/lib.rs, LimitedAlloc) aborts on one allocation over 512 MiB or over 1.5 GiB held;
# the flag is passed anyway for a build with a sanitizer.
#
# FUZZ_BUILD=release (default): optimised, ~5 CPU-minutes to build, 2k-100k runs/s.
# FUZZ_BUILD=dev: unoptimised, ~2.5 CPU-minutes to build, about 8x fewer runs/s; enough for
# CI to replay every seed and explore a little on each commit.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
shift || true
build=${FUZZ_BUILD:-release}
case "$build" in
  release) flags=(--release --codegen-units 16) dir=release ;;
  dev) flags=(--dev) dir=debug ;;
  *) echo "FUZZ_BUILD must be release or dev, not $build" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

mapfile -t known < <(cargo fuzz list)
if [ $# -gt 0 ]; then
  targets=("$@")
  for t in "${targets[@]}"; do
    if ! printf '%s\n' "${known[@]}" | grep -qx "$t"; then
      echo "no fuzz target $t; there are: ${known[*]}" >&2
      exit 2
    fi
  done
else
  targets=("${known[@]}")
fi

echo "== cargo fuzz build ($build, no sanitizer)"
# Its own workspace and target dir (fuzz/target): the main build never compiles it.
cargo fuzz build -s none "${flags[@]}"
bin=fuzz/target/x86_64-unknown-linux-gnu/$dir

failed=()
summary=()
for t in "${targets[@]}"; do
  seeds=fuzz/corpus/$t
  work=fuzz/corpus-run/$t
  mkdir -p "$work" "fuzz/artifacts/$t"
  log=$(mktemp)
  echo "== $t (${secs}s)"
  # The first corpus dir receives new inputs; the seeds are only read.
  if "$bin/$t" "$work" "$seeds" \
      -max_total_time="$secs" -timeout=20 \
      -rss_limit_mb=2048 -malloc_limit_mb=512 \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    failed+=("$t")
    grep -v "^#" "$log" | tail -40 >&2
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  summary+=("$(printf '%-14s %10s runs %8s/s  %s' "$t" "${runs:-?}" "${rate:-?}" "$result")")
  rm -f "$log"
done

echo "== summary ($build build, ${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
