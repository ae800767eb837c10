// The command wall's entry point: wires the websocket store to the banner, map, incident
// panel, point panel, camera wall and feeds, and the login and language controls.

import 'leaflet/dist/leaflet.css';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { t, translate, setLang, lang, onLangChange } from './i18n.js';
import { createStore, LEVELS, serverNow } from './store.js';
import { createConnection } from './connection.js';
import { currentLogin, login, logout } from './session.js';
import { createMap } from './map.js';
import { createIncidents, clockText } from './incidents.js';
import { createPointPanel } from './point.js';
import { createCameraWall } from './cameras.js';

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

const store = createStore();
translate();

const point = createPointPanel($('#point'), store);
const select = (id) => point.select(id);
const map = createMap($('#map'), store, { onSelect: select });
const incidents = createIncidents($('#incidents'), store, { onSelect: select, countEl: $('#inc-count') });
const cameras = createCameraWall($('#cameras'), store, {
  onSelect: select,
  sizeButtons: [...document.querySelectorAll('#tile-size button')],
});

function renderBanner() {
  const c = store.counters;
  if (!c) return;
  for (const l of LEVELS) $(`#cnt-${l}`).textContent = String(c.levels?.[l] ?? 0);
  $('#cnt-silent').textContent = String(c.silent);
  $('#cnt-open').textContent = String(c.open_incidents);
  $('#cnt-sms').textContent = String(c.sms_sent);
  $('#cnt-ack').textContent = `${c.acknowledged}/${c.notified}`;
  $('#cnt-rejects').textContent = String(c.rejects);
  const sig = $('#signal');
  sig.className = `signal lv-${c.rain_signal}`;
  sig.dataset.level = c.rain_signal;
  sig.textContent = c.rain_signal === 'normal' ? t('signal_none') : t(`level_${c.rain_signal}`);
  if (store.district) $('#district').textContent = store.district.name;
}

function renderFeeds() {
  $('#alerts').innerHTML = store.alerts
    .slice(0, 30)
    .map((a) => {
      const p = store.points.get(a.point);
      return `<li class="lv-${a.to}"><time>${clockText(a.event_ms)}</time> <b>${esc(p?.name ?? a.point)}</b> ${t(`level_${a.from}`)} → <span class="lvl lv-${a.to}">${t(`level_${a.to}`)}</span> <small>${esc(a.rule)}</small></li>`;
    })
    .join('');
  $('#rejects').innerHTML = store.rejects
    .slice(0, 10)
    .map((r) => `<li><time>${clockText(r.received_ms)}</time> <b>${esc(r.reason)}</b> ${esc(r.sensor ?? '')} <small>${esc(r.detail)}</small></li>`)
    .join('');
}

let userDrawn = null;
function renderUser() {
  const s = currentLogin();
  const box = $('#user');
  // Redraw only when it changes: a button replaced ten times a second cannot be clicked.
  const key = JSON.stringify([s?.name, s?.role, store.session?.name ?? null, lang()]);
  if (key === userDrawn) return;
  userDrawn = key;
  if (s && store.session?.name) {
    box.innerHTML = `<span class="who" data-role="${esc(s.role)}">${esc(s.name)} · ${t(`role_${s.role}`)}</span> <button id="logout">${t('logout')}</button>`;
    $('#logout').onclick = async () => {
      await logout();
      conn.restart();
      renderUser();
    };
  } else {
    box.innerHTML = `<span class="who" data-role="anonymous">${t('anonymous')}</span> <button id="login-open">${t('login')}</button>`;
    $('#login-open').onclick = () => {
      $('#login-dialog').hidden = false;
      $('#login-name').focus();
    };
  }
}

let scheduled = false;
function renderAll(force) {
  scheduled = false;
  renderBanner();
  map.render();
  incidents.render(force);
  point.render();
  cameras.render();
  renderFeeds();
  renderUser();
  document.body.classList.toggle('can-act', store.canAct);
}
function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => renderAll(false));
}

const conn = createConnection(store, {
  onChange: (msg) => {
    // The last part of a snapshot in parts completes it.
    if (msg.type === 'snapshot' || msg.type === 'snapshot_part') {
      requestAnimationFrame(() => renderAll(true));
    } else schedule();
  },
  onStatus: (s) => {
    const el = $('#conn');
    el.dataset.state = s;
    el.textContent = t(s);
    document.body.classList.toggle('disconnected', s !== 'connected');
  },
});

$('#login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = $('#login-error');
  try {
    await login($('#login-name').value.trim(), $('#login-password').value);
    err.hidden = true;
    $('#login-dialog').hidden = true;
    $('#login-password').value = '';
    conn.restart();
  } catch {
    err.textContent = t('login_failed');
    err.hidden = false;
  }
});
$('#login-cancel').addEventListener('click', () => {
  $('#login-dialog').hidden = true;
});
$('#lang-toggle').addEventListener('click', () => setLang(lang() === 'zh' ? 'en' : 'zh'));
onLangChange(() => {
  map.relabel();
  point.relabel();
  renderAll(true);
  $('#conn').textContent = t($('#conn').dataset.state || 'connecting');
});

setInterval(() => {
  incidents.tick();
  $('#asof').textContent = store.clock.server ? clockText(serverNow(store)) : '--:--:--';
}, 1000);
window.addEventListener('resize', () => map.invalidate());

// For operators' scripts and the browser tests: the state, and a way to cut the connection
// as a network failure would.
window.floodcmdWall = {
  store,
  dropConnection: () => conn.drop(),
  pin: (id) => cameras.pin(id),
  unpin: (id) => cameras.unpin(id),
  select,
};

conn.start();
