// The camera wall: 4 or 9 tiles. Pinned cameras come first (pins are this browser's,
// kept in localStorage); the other tiles follow the most severe points that have a camera.
// Streams are HLS (hls.js; Safari-style native HLS where hls.js is unsupported).

import Hls from 'hls.js/dist/hls.light.mjs';
import { t } from './i18n.js';
import { severity } from './store.js';

const PINS = 'floodcmd.pins';
const SIZE = 'floodcmd.tiles';
const RETRY_MS = 5000;

export function createCameraWall(el, store, { onSelect, sizeButtons }) {
  let size = Number(localStorage.getItem(SIZE)) === 9 ? 9 : 4;
  let pins = JSON.parse(localStorage.getItem(PINS) || '[]');
  const tiles = new Map(); // point id -> { el, hls, stream, retry }

  function savePins() {
    localStorage.setItem(PINS, JSON.stringify(pins));
  }

  function choose() {
    const withCamera = [...store.points.values()].filter((p) => p.camera);
    const pinned = pins.map((id) => store.points.get(id)).filter((p) => p && p.camera);
    const rest = withCamera
      .filter((p) => !pins.includes(p.id))
      .sort((a, b) => severity(b, store) - severity(a, store) || (a.id < b.id ? -1 : 1));
    return [...pinned, ...rest].slice(0, size);
  }

  function play(tile) {
    const video = tile.el.querySelector('video');
    const overlay = tile.el.querySelector('.no-signal');
    clearTimeout(tile.retry);
    if (tile.hls) {
      tile.hls.destroy();
      tile.hls = null;
    }
    const fail = () => {
      overlay.hidden = false;
      tile.retry = setTimeout(() => play(tile), RETRY_MS);
    };
    if (Hls.isSupported()) {
      const hls = new Hls({ liveSyncDurationCount: 2, manifestLoadingMaxRetry: 1, enableWorker: false });
      tile.hls = hls;
      hls.on(Hls.Events.MANIFEST_PARSED, () => {
        overlay.hidden = true;
        video.play().catch(() => {});
      });
      hls.on(Hls.Events.ERROR, (_e, data) => {
        if (data.fatal) fail();
      });
      hls.loadSource(tile.stream);
      hls.attachMedia(video);
    } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
      video.src = tile.stream;
      video.onloadedmetadata = () => {
        overlay.hidden = true;
        video.play().catch(() => {});
      };
      video.onerror = fail;
    } else {
      fail();
    }
  }

  function tileLabel(tile, p) {
    const pinned = pins.includes(p.id);
    tile.el.dataset.level = p.level;
    tile.el.className = `tile lv-${p.level}${pinned ? ' pinned' : ''}`;
    tile.el.querySelector('.cam-name').textContent = p.name;
    const lvl = tile.el.querySelector('.lvl');
    lvl.className = `lvl lv-${p.level}`;
    lvl.textContent = t(`level_${p.level}`);
    const btn = tile.el.querySelector('.pin');
    btn.textContent = pinned ? t('unpin') : t('pin');
    btn.dataset.pinned = String(pinned);
    tile.el.querySelector('.no-signal').textContent = t('no_signal');
  }

  function render() {
    el.dataset.size = String(size);
    for (const b of sizeButtons) b.classList.toggle('on', Number(b.dataset.size) === size);
    const chosen = choose();
    const keep = new Set(chosen.map((p) => p.id));
    for (const [id, tile] of tiles) {
      if (!keep.has(id)) {
        clearTimeout(tile.retry);
        if (tile.hls) tile.hls.destroy();
        tile.el.remove();
        tiles.delete(id);
      }
    }
    if (!chosen.length) {
      if (!el.querySelector('.empty')) el.innerHTML = `<p class="empty">${t('no_camera')}</p>`;
      return;
    }
    el.querySelector('.empty')?.remove();
    let prev = null;
    for (const p of chosen) {
      let tile = tiles.get(p.id);
      if (!tile) {
        const div = document.createElement('div');
        div.dataset.point = p.id;
        div.dataset.stream = p.camera;
        div.innerHTML = `<video muted autoplay playsinline></video>
          <div class="no-signal" hidden></div>
          <div class="cap"><span class="lvl"></span><a class="cam-name"></a><button class="pin"></button></div>`;
        tile = { el: div, hls: null, stream: p.camera, retry: null };
        tiles.set(p.id, tile);
        div.querySelector('.cam-name').addEventListener('click', () => onSelect(p.id));
        div.querySelector('.pin').addEventListener('click', () => {
          pins = pins.includes(p.id) ? pins.filter((x) => x !== p.id) : [...pins, p.id];
          savePins();
          render();
        });
        tileLabel(tile, p);
        if (prev) prev.after(div);
        else el.prepend(div);
        play(tile);
      } else {
        tileLabel(tile, p);
      }
      if (prev ? prev.nextElementSibling !== tile.el : el.firstElementChild !== tile.el) {
        if (prev) prev.after(tile.el);
        else el.prepend(tile.el);
      }
      prev = tile.el;
    }
  }

  for (const b of sizeButtons) {
    b.addEventListener('click', () => {
      size = Number(b.dataset.size) === 9 ? 9 : 4;
      localStorage.setItem(SIZE, String(size));
      render();
    });
  }

  return {
    render,
    /// Pin a point's camera (operators, and tests).
    pin(id) {
      if (!pins.includes(id)) pins = [id, ...pins];
      savePins();
      render();
    },
    unpin(id) {
      pins = pins.filter((x) => x !== id);
      savePins();
      render();
    },
  };
}
