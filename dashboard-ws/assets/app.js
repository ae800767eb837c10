/* floodcmd 防汛指挥大屏 — the wall page's client.
 * Connects to /ws, folds the `snapshot` / `delta` messages into in-memory maps (exposed as
 * window.__wall) and re-renders the banner, SVG map, incidents, trouble table and feeds,
 * batched to at most ~10 renders a second. Server text is only ever set via textContent.
 * The pure helpers at the top are exported for node tests when `module` exists. */
(function () {
  'use strict';

  // ---------------------------------------------------------------- constants
  const LEVELS = ['normal', 'blue', 'yellow', 'orange', 'red'];
  const LEVEL_ZH = { normal: '正常', blue: '蓝色', yellow: '黄色', orange: '橙色', red: '红色' };
  const KIND_ZH = { underpass: '下穿', low_point: '低洼点', rain_gauge: '雨量站' };
  const STATE_ZH = { fresh: '正常', late: '迟到', suspect: '可疑', silent: '失联' };
  const STATE_RANK = { fresh: 0, late: 1, suspect: 2, silent: 3 };
  const QC_ZH = { range: '超出量程', spike: '跳变', stuck: '数值不变', rate: '变化过快', rain_intensity: '雨强异常' };
  const PROBLEM_ZH = { water: '积水', silent: '设备失联' };
  const TRANSITION_ZH = { raised: '发布', upgraded: '升级', downgraded: '降级', cleared: '解除', silent: '失联', recovered: '恢复' };
  const WHAT_ZH = Object.assign({ notified: '通知', acknowledged: '确认', checked_in: '到岗', note: '备注', closed: '关闭' }, TRANSITION_ZH);
  const REASON_ZH = {
    malformed: '格式错误', missing_field: '缺少字段', unknown_sensor: '未知传感器', not_a_number: '非数值',
    out_of_range: '超出量程', future_timestamp: '时间超前', too_old: '数据过旧', duplicate_sequence: '重复序号',
    too_large: '数据过大', undecodable: '无法解码',
  };
  const MAX_ALERTS = 50, SHOW_ALERTS = 30, MAX_REJECTS = 20, SHOW_REJECTS = 10, TIMELINE_SHOWN = 3;
  const MIN_RENDER_MS = 100; // at most ~10 renders a second
  const TZ_OFFSET_MS = 8 * 3600 * 1000; // Asia/Shanghai, no DST

  // ---------------------------------------------------------------- pure helpers
  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const levelRank = (l) => Math.max(0, LEVELS.indexOf(l));
  const stateRank = (s) => (s in STATE_RANK ? STATE_RANK[s] : 0);
  /** A token safe to use inside a class name (server values are otherwise untrusted). */
  const token = (v) => String(v == null ? '' : v).replace(/[^a-z0-9_-]/gi, '') || 'unknown';
  const levelZh = (l) => LEVEL_ZH[l] || String(l == null ? '' : l);
  const unitOf = (kind) => (kind === 'rain_gauge' ? 'mm' : 'cm');

  /** HH:MM:SS in Asia/Shanghai for an epoch-ms time; placeholder when unknown. */
  function fmtTime(ms) {
    if (!isNum(ms)) return '--:--:--';
    const d = new Date(ms + TZ_OFFSET_MS);
    return Number.isNaN(d.getTime()) ? '--:--:--' : d.toISOString().slice(11, 19);
  }

  const fmtNum = (v, digits = 1) => (isNum(v) ? v.toFixed(digits) : '—');

  function truncate(s, n) {
    const str = String(s == null ? '' : s);
    return str.length > n ? str.slice(0, n - 1) + '…' : str;
  }

  /** Rate of rise as shown on the wall: ↑1.2 cm/分, ↓0.4 cm/分; '' when unknown. */
  function riseText(v) {
    if (!isNum(v)) return '';
    const arrow = v > 0.05 ? '↑' : v < -0.05 ? '↓' : '→';
    return arrow + Math.abs(v).toFixed(1) + ' cm/分';
  }

  /** When a rising point reaches its next level: '8 分钟后达到红色', '即将达到红色'; '' when unknown. */
  function forecastText(next, minutes) {
    if (!next || !isNum(minutes) || minutes < 0) return '';
    const when = minutes < 1 ? '即将' : Math.floor(minutes) + ' 分钟后';
    return when + '达到' + levelZh(next);
  }

  /** Quality-control flags in words: '跳变、变化过快'; '' when none. */
  function qcText(flags) {
    if (!Array.isArray(flags) || !flags.length) return '';
    return flags.map((f) => QC_ZH[f] || String(f)).join('、');
  }

  /** The current reading of a point: depth for depth points, rolling rain for gauges. */
  function pointValueText(p) {
    if (p.kind === 'rain_gauge') {
      const parts = [];
      if (isNum(p.rain_1h_mm)) parts.push('1小时 ' + fmtNum(p.rain_1h_mm) + ' mm');
      if (isNum(p.rain_3h_mm)) parts.push('3小时 ' + fmtNum(p.rain_3h_mm) + ' mm');
      if (!parts.length && isNum(p.rain_10m_mm)) parts.push('10分钟 ' + fmtNum(p.rain_10m_mm) + ' mm');
      return parts.length ? parts.join(' · ') : '—';
    }
    return isNum(p.depth_cm) ? '水深 ' + fmtNum(p.depth_cm) + ' cm' : '—';
  }

  function incidentValueText(inc, point) {
    if (inc.problem === 'silent') return '—';
    return fmtNum(inc.value) + ' ' + unitOf(point && point.kind);
  }

  /** Open incidents, most severe first, then oldest first. */
  function sortIncidents(list) {
    return list.slice().sort((a, b) => levelRank(b.level) - levelRank(a.level)
      || (a.opened_at || 0) - (b.opened_at || 0) || String(a.id).localeCompare(String(b.id)));
  }

  /** Points that are not normal-and-fresh, most severe first. */
  function troublePoints(points) {
    return points.filter((p) => p.level !== 'normal' || p.data_state !== 'fresh')
      .sort((a, b) => levelRank(b.level) - levelRank(a.level)
        || stateRank(b.data_state) - stateRank(a.data_state)
        || String(a.name).localeCompare(String(b.name), 'zh'));
  }

  /** Banner counters computed from points, used only if the server sent none. */
  function computeCounters(state) {
    const levels = { normal: 0, blue: 0, yellow: 0, orange: 0, red: 0 };
    let silent = 0;
    for (const p of Object.values(state.points)) {
      if (p.level in levels) levels[p.level] += 1;
      if (p.data_state === 'silent') silent += 1;
    }
    return { levels, silent, open_incidents: Object.keys(state.incidents).length, notifications: 0, rejects: 0, transitions: 0 };
  }

  /** The pieces of one feed line; `alertLine` joins them. */
  function alertParts(a, points) {
    const p = points && points[a.point];
    const same = a.from === a.to;
    return {
      time: fmtTime(a.event_ms),
      name: p ? p.name : String(a.point),
      word: TRANSITION_ZH[a.transition] || String(a.transition),
      levels: same ? '(' + levelZh(a.to) + ')' : levelZh(a.from) + '→' + levelZh(a.to),
      rule: String(a.rule == null ? '' : a.rule),
      rise: riseText(a.rise_cm_per_min),
      forecast: forecastText(a.next_level, a.minutes_to_next),
      late: a.late ? '(迟到)' : '',
      flapping: a.flapping ? '(反复波动)' : '',
    };
  }

  function alertLine(a, points) {
    const x = alertParts(a, points);
    return [x.time, x.name, x.word, x.levels, x.rule, x.rise, x.forecast, x.late, x.flapping].filter(Boolean).join(' ');
  }

  /** lat/lon → px inside w×h with padding, equal scale after cos(lat) correction. */
  function makeProjection(points, w, h, pad) {
    const ok = points.filter((p) => isNum(p.lat) && isNum(p.lon));
    if (!ok.length) {
      const f = () => [w / 2, h / 2];
      f.pxPerDegLat = 1;
      return f;
    }
    const lats = ok.map((p) => p.lat), lons = ok.map((p) => p.lon);
    const minLat = Math.min(...lats), maxLat = Math.max(...lats);
    const minLon = Math.min(...lons), maxLon = Math.max(...lons);
    const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
    const xr = Math.max((maxLon - minLon) * k, 1e-4), yr = Math.max(maxLat - minLat, 1e-4);
    const s = Math.max(1e-6, Math.min((w - 2 * pad) / xr, (h - 2 * pad) / yr));
    const ox = (w - (maxLon - minLon) * k * s) / 2, oy = (h - (maxLat - minLat) * s) / 2;
    const f = (lat, lon) => [ox + (lon - minLon) * k * s, oy + (maxLat - lat) * s];
    f.pxPerDegLat = s;
    return f;
  }

  /** Reconnect delay: 1s, 2s, 4s, 8s, then 10s. */
  const backoffDelay = (attempt) => Math.min(10000, 1000 * Math.pow(2, Math.max(0, attempt)));

  const wsUrl = (loc) => (loc.protocol === 'https:' ? 'wss' : 'ws') + '://' + loc.host + '/ws';

  // ---------------------------------------------------------------- state folding
  function createState() {
    return {
      points: Object.create(null), incidents: Object.create(null), lastSeq: null, connected: false,
      district: null, alerts: [], rejects: [], counters: null, latestMs: null, synced: false, epoch: 0,
    };
  }

  const ALL_DIRTY = () => ({ banner: true, map: true, incidents: true, trouble: true, alerts: true, rejects: true });
  const maxMs = (cur, v) => (isNum(v) && (!isNum(cur) || v > cur) ? v : cur);
  const alertKey = (a) => [a.point, a.transition, a.from, a.to, a.event_ms, a.rule].join('|');
  const rejectKey = (r) => [r.received_ms, r.reason, r.source, r.index, r.sensor, r.detail].join('|');

  function notePointTime(state, p) {
    state.latestMs = maxMs(maxMs(state.latestMs, p.last_reading_ms), p.as_of_ms);
  }

  function putIncident(state, inc) {
    if (inc.state === 'closed') delete state.incidents[inc.id];
    else state.incidents[inc.id] = inc;
    state.latestMs = maxMs(state.latestMs, inc.updated_at);
  }

  /** Replace everything with a snapshot. */
  function applySnapshot(state, msg) {
    state.district = msg.district || null;
    state.points = Object.create(null);
    state.incidents = Object.create(null);
    state.latestMs = null;
    for (const p of msg.points || []) { state.points[p.id] = p; notePointTime(state, p); }
    for (const i of msg.incidents || []) putIncident(state, i);
    state.alerts = (msg.alerts || []).slice(0, MAX_ALERTS);
    state.rejects = (msg.rejects || []).slice(0, MAX_REJECTS);
    for (const a of state.alerts) state.latestMs = maxMs(state.latestMs, a.event_ms);
    state.counters = msg.counters || computeCounters(state);
    state.lastSeq = isNum(msg.seq) ? msg.seq : state.lastSeq;
    state.synced = true;
    state.epoch += 1;
    return ALL_DIRTY();
  }

  /** Merge a delta (alerts/rejects arrive oldest first; lists are kept newest first). */
  function applyDelta(state, msg) {
    const dirty = {};
    if (!state.synced) return dirty; // a snapshot always comes first; wait for it
    if (isNum(msg.seq) && isNum(state.lastSeq) && msg.seq <= state.lastSeq) return dirty; // stale
    for (const p of msg.points || []) {
      if (!(p.id in state.points)) state.epoch += 1; // a new point: rebuild the map
      state.points[p.id] = p;
      notePointTime(state, p);
      dirty.map = dirty.trouble = dirty.incidents = dirty.banner = true;
    }
    for (const i of msg.incidents || []) { putIncident(state, i); dirty.incidents = dirty.banner = true; }
    const seenA = new Set(state.alerts.slice(0, 20).map(alertKey));
    for (const a of msg.alerts || []) {
      if (seenA.has(alertKey(a))) continue; // may repeat right after a snapshot
      state.alerts.unshift(a);
      state.latestMs = maxMs(state.latestMs, a.event_ms);
      dirty.alerts = dirty.banner = true;
    }
    state.alerts.length = Math.min(state.alerts.length, MAX_ALERTS);
    const seenR = new Set(state.rejects.slice(0, 20).map(rejectKey));
    for (const r of msg.rejects || []) {
      if (seenR.has(rejectKey(r))) continue;
      state.rejects.unshift(r);
      dirty.rejects = true;
    }
    state.rejects.length = Math.min(state.rejects.length, MAX_REJECTS);
    if (msg.counters) { state.counters = msg.counters; dirty.banner = true; }
    if (isNum(msg.seq)) state.lastSeq = msg.seq;
    return dirty;
  }

  function applyMessage(state, msg) {
    if (!msg || typeof msg !== 'object') return {};
    if (msg.type === 'snapshot') return applySnapshot(state, msg);
    if (msg.type === 'delta') return applyDelta(state, msg);
    return {};
  }

  const pure = {
    LEVELS, LEVEL_ZH, KIND_ZH, STATE_ZH, TRANSITION_ZH, QC_ZH, levelRank, fmtTime, fmtNum, truncate, riseText,
    forecastText, qcText,
    pointValueText, incidentValueText, sortIncidents, troublePoints, computeCounters, alertParts, alertLine,
    makeProjection, backoffDelay, wsUrl, createState, applySnapshot, applyDelta, applyMessage,
  };
  if (typeof module !== 'undefined' && module.exports) module.exports = pure;
  if (typeof window === 'undefined' || typeof document === 'undefined') return;

  // ---------------------------------------------------------------- DOM helpers
  const SVGNS = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }

  const levelChip = (level) => el('span', 'chip lv-' + token(level), levelZh(level));
  const stateChip = (ds) => el('span', 'st st-' + token(ds), STATE_ZH[ds] || String(ds));

  // ---------------------------------------------------------------- app state
  const state = createState();
  window.__wall = state;
  let dirty = {};
  let renderQueued = false, lastRender = 0;
  let mapView = null; // { epoch, w, h, r, proj, markers: Map, order, labels }
  let tip = { id: null, pinned: false, x: 0, y: 0 };
  let everConnected = false, attempt = 0; // attempt: reconnects since the last open

  const markDirty = (d) => { Object.assign(dirty, d); scheduleRender(); };

  /** Coalesce renders: at most one per MIN_RENDER_MS, on an animation frame. */
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    const wait = Math.max(0, lastRender + MIN_RENDER_MS - Date.now());
    setTimeout(() => requestAnimationFrame(render), wait);
  }

  function render() {
    renderQueued = false;
    lastRender = Date.now();
    const d = dirty;
    dirty = {};
    try {
      if (d.banner) renderBanner();
      if (d.map) renderMap();
      if (d.incidents) renderIncidents();
      if (d.trouble) renderTrouble();
      if (d.alerts) renderAlerts();
      if (d.rejects) renderRejects();
    } catch (e) {
      console.error('render failed', e);
    }
  }

  // ---------------------------------------------------------------- banner
  function renderBanner() {
    const name = state.district && state.district.name ? String(state.district.name) : '';
    $('title').textContent = name + '防汛指挥大屏';
    document.title = name + '防汛指挥大屏';
    const conn = $('conn');
    conn.textContent = state.connected ? '已连接' : (everConnected || attempt > 0) ? '重连中…' : '连接中…';
    conn.className = 'conn ' + (state.connected ? 'on' : 'off');
    conn.dataset.connected = String(state.connected);
    document.body.classList.toggle('disconnected', !state.connected);
    $('asof').textContent = fmtTime(state.latestMs);
    const c = state.counters || computeCounters(state);
    const lv = c.levels || {};
    for (const l of LEVELS) $('cnt-' + l).textContent = String(lv[l] || 0);
    $('cnt-silent').textContent = String(c.silent || 0);
    $('cnt-silent').parentElement.classList.toggle('hot', (c.silent || 0) > 0);
    $('cnt-open').textContent = String(c.open_incidents || 0);
    $('cnt-notifications').textContent = String(c.notifications || 0);
    $('cnt-rejects').textContent = String(c.rejects || 0);
  }

  // ---------------------------------------------------------------- map
  function shapeFor(kind, r) {
    if (kind === 'underpass') return svg('polygon', { class: 'shape', points: `0,${-r * 1.25} ${r * 1.25},0 0,${r * 1.25} ${-r * 1.25},0` });
    if (kind === 'rain_gauge') {
      const t = r * 0.95;
      return svg('polygon', { class: 'shape', points: `0,${-t} ${t * 0.9},${t * 0.6} ${-t * 0.9},${t * 0.6}` });
    }
    return svg('circle', { class: 'shape', r: r * 0.9 });
  }

  function makeMarker(p, r) {
    const g = svg('g', { 'data-point-id': p.id, tabindex: 0 });
    g.append(svg('circle', { class: 'halo', r: r * 1.6 }), shapeFor(p.kind, r));
    const c = r * 0.5;
    g.append(svg('path', { class: 'cross', d: `M${-c},${-c}L${c},${c}M${c},${-c}L${-c},${c}` }));
    g.addEventListener('pointerenter', (e) => { if (!tip.pinned) showTip(p.id, e); });
    g.addEventListener('pointerleave', () => { if (!tip.pinned) hideTip(); });
    g.addEventListener('click', (e) => { e.stopPropagation(); tip.pinned = !(tip.pinned && tip.id === p.id); showTip(p.id, e); if (!tip.pinned) hideTip(); });
    return g;
  }

  function buildMap() {
    const wrap = $('map-wrap'), root = $('map');
    const w = Math.max(200, wrap.clientWidth), h = Math.max(150, wrap.clientHeight);
    root.setAttribute('viewBox', `0 0 ${w} ${h}`);
    root.replaceChildren();
    const pts = Object.values(state.points);
    const r = Math.max(6, Math.min(14, Math.min(w, h) / 70));
    const proj = makeProjection(pts, w, h, Math.max(r * 4, 48));
    const bg = svg('g', { class: 'bg' }), marks = svg('g', { class: 'marks' }), labels = svg('g', { class: 'labels' });
    root.append(bg, marks, labels);
    drawSubDistricts(bg, pts, proj);
    drawScaleBar(bg, proj, w, h);
    const markers = new Map();
    for (const p of pts) {
      const g = makeMarker(p, r);
      const [x, y] = proj(p.lat, p.lon);
      if (isNum(x) && isNum(y)) g.setAttribute('transform', `translate(${x.toFixed(1)},${y.toFixed(1)})`);
      else g.setAttribute('display', 'none');
      markers.set(p.id, { g, x, y, cls: '' });
      marks.append(g);
    }
    mapView = { epoch: state.epoch, w, h, r, proj, markers, marks, labels, order: '' };
  }

  /** Faint sub-district names at the centroid of their points. */
  function drawSubDistricts(layer, pts, proj) {
    const groups = new Map();
    for (const p of pts) {
      if (!isNum(p.lat) || !isNum(p.lon)) continue;
      const g = groups.get(p.sub_district) || { x: 0, y: 0, n: 0 };
      const [x, y] = proj(p.lat, p.lon);
      g.x += x; g.y += y; g.n += 1;
      groups.set(p.sub_district, g);
    }
    for (const [name, g] of groups) {
      const t = svg('text', { class: 'sd', x: (g.x / g.n).toFixed(1), y: (g.y / g.n).toFixed(1) });
      t.textContent = String(name || '');
      layer.append(t);
    }
  }

  function drawScaleBar(layer, proj, w, h) {
    const pxPerKm = proj.pxPerDegLat / 111.32;
    const km = [0.2, 0.5, 1, 2, 5].find((k) => k * pxPerKm >= 60) || 5;
    const len = km * pxPerKm, x = w - len - 20, y = h - 20;
    layer.append(svg('path', { class: 'scale', d: `M${x},${y - 5}V${y}H${x + len}V${y - 5}` }));
    const t = svg('text', { class: 'scale-t', x: x + len / 2, y: y - 8 });
    t.textContent = km >= 1 ? km + ' 公里' : km * 1000 + ' 米';
    layer.append(t);
  }

  function renderMap() {
    if (!mapView || mapView.epoch !== state.epoch) buildMap();
    const pts = Object.values(state.points);
    for (const p of pts) {
      const m = mapView.markers.get(p.id);
      if (!m) { mapView = null; return renderMap(); }
      const cls = `mk k-${token(p.kind)} lv-${token(p.level)} st-${token(p.data_state)}`;
      if (cls !== m.cls) {
        m.g.setAttribute('class', cls);
        m.g.setAttribute('data-level', String(p.level));
        m.g.setAttribute('data-state', String(p.data_state));
        m.g.setAttribute('aria-label', `${p.name} ${levelZh(p.level)} ${STATE_ZH[p.data_state] || ''}`);
        m.cls = cls;
      }
    }
    // Severe markers on top; only re-append when the order changed (it restarts animations).
    const sorted = pts.slice().sort((a, b) => levelRank(a.level) - levelRank(b.level) || stateRank(a.data_state) - stateRank(b.data_state));
    const order = sorted.map((p) => p.id).join('\n');
    if (order !== mapView.order) {
      for (const p of sorted) mapView.marks.append(mapView.markers.get(p.id).g);
      mapView.order = order;
    }
    renderLabels(pts);
    if (tip.id) renderTip();
  }

  /** Names of underpasses at orange or above. */
  function renderLabels(pts) {
    const frag = document.createDocumentFragment();
    for (const p of pts) {
      if (p.kind !== 'underpass' || levelRank(p.level) < levelRank('orange')) continue;
      const m = mapView.markers.get(p.id);
      const t = svg('text', { class: 'lbl lv-' + token(p.level), x: (m.x + mapView.r * 1.8).toFixed(1), y: (m.y + mapView.r * 0.5).toFixed(1) });
      t.textContent = p.name + (p.data_state === 'silent' ? ' · 失联' : '');
      frag.append(t);
    }
    mapView.labels.replaceChildren(frag);
  }

  // ---------------------------------------------------------------- tooltip
  function showTip(id, e) {
    const rect = $('map-wrap').getBoundingClientRect();
    tip.id = id;
    if (e && isNum(e.clientX)) { tip.x = e.clientX - rect.left; tip.y = e.clientY - rect.top; }
    renderTip();
  }

  function hideTip() {
    tip = { id: null, pinned: false, x: 0, y: 0 };
    $('tip').hidden = true;
  }

  function tipRow(box, k, v) {
    if (v == null || v === '') return;
    const row = el('div', 'row');
    row.append(el('span', 'k', k), el('span', 'v', v));
    box.append(row);
  }

  function renderTip() {
    const p = state.points[tip.id], box = $('tip');
    if (!p) return hideTip();
    const head = el('div', 'tip-head');
    head.append(levelChip(p.level), el('b', null, p.name));
    const body = el('div', 'tip-body');
    tipRow(body, '类型', KIND_ZH[p.kind] || p.kind);
    tipRow(body, '街道', p.sub_district);
    tipRow(body, '编号', p.id);
    if (p.kind === 'rain_gauge') {
      for (const [k, f] of [['10分钟', 'rain_10m_mm'], ['1小时', 'rain_1h_mm'], ['3小时', 'rain_3h_mm'], ['24小时', 'rain_24h_mm']]) {
        tipRow(body, k, isNum(p[f]) ? fmtNum(p[f]) + ' mm' : '—');
      }
    } else {
      tipRow(body, '水深', isNum(p.depth_cm) ? fmtNum(p.depth_cm) + ' cm' : '—');
      tipRow(body, '涨速', riseText(p.rise_cm_per_min) || '—');
      tipRow(body, '预计', forecastText(p.next_level, p.minutes_to_next));
    }
    tipRow(body, '数据', STATE_ZH[p.data_state] || p.data_state);
    tipRow(body, '质控', qcText(p.qc_flags));
    if (p.flapping) tipRow(body, '波动', '级别反复波动');
    tipRow(body, '最近读数', fmtTime(p.last_reading_ms));
    if (p.camera) tipRow(body, '摄像头', p.camera);
    box.replaceChildren(head, body);
    box.className = 'tip st-' + token(p.data_state) + (tip.pinned ? ' pinned' : '');
    box.hidden = false;
    const wrap = $('map-wrap');
    const x = Math.min(tip.x + 16, wrap.clientWidth - box.offsetWidth - 8);
    const y = Math.min(tip.y + 16, wrap.clientHeight - box.offsetHeight - 8);
    box.style.left = Math.max(8, x) + 'px';
    box.style.top = Math.max(8, y) + 'px';
  }

  // ---------------------------------------------------------------- incidents
  function timelineItem(t) {
    const li = el('li', 'tl-' + token(t.what));
    li.append(el('span', 'tl-time', fmtTime(t.at_ms)), el('span', 'tl-what', WHAT_ZH[t.what] || t.what));
    if (t.by) li.append(el('span', 'tl-by', t.by));
    li.append(el('span', 'tl-detail', truncate(t.detail, 80)));
    return li;
  }

  function incidentCard(inc) {
    const p = state.points[inc.point_id];
    const card = el('article', `inc prob-${token(inc.problem)} lv-${token(inc.level)}`);
    card.setAttribute('data-incident-id', String(inc.id));
    card.setAttribute('data-level', String(inc.level));
    const head = el('div', 'inc-head');
    if (inc.problem === 'silent') head.append(el('span', 'chip silent', '失联'));
    else head.append(levelChip(inc.level));
    head.append(el('span', 'inc-name', p ? p.name : inc.point_id), el('span', 'inc-problem', PROBLEM_ZH[inc.problem] || inc.problem));
    if (inc.problem !== 'silent') head.append(el('span', 'inc-value', incidentValueText(inc, p)));
    const timeline = Array.isArray(inc.timeline) ? inc.timeline : [];
    const meta = el('div', 'inc-meta');
    meta.append(el('span', null, '开始 ' + fmtTime(inc.opened_at)));
    if (isNum(state.latestMs) && isNum(inc.opened_at) && state.latestMs >= inc.opened_at) {
      meta.append(el('span', null, '持续 ' + Math.floor((state.latestMs - inc.opened_at) / 60000) + ' 分'));
    }
    if (inc.problem !== 'silent' && levelRank(inc.peak_level) > levelRank(inc.level)) meta.append(el('span', null, '峰值 ' + levelZh(inc.peak_level)));
    if (p && inc.problem !== 'silent' && p.data_state !== 'fresh') meta.append(stateChip(p.data_state));
    const acked = timeline.some((t) => t.what === 'acknowledged');
    meta.append(el('span', acked ? 'ack yes' : 'ack no', acked ? '已确认' : '未确认'));
    const ul = el('ul', 'timeline');
    for (const t of timeline.slice(-TIMELINE_SHOWN)) ul.append(timelineItem(t));
    card.append(head, meta, ul);
    return card;
  }

  function renderIncidents() {
    const list = sortIncidents(Object.values(state.incidents));
    const frag = document.createDocumentFragment();
    if (!list.length) frag.append(el('div', 'empty', '暂无未结事件'));
    for (const inc of list) frag.append(incidentCard(inc));
    $('incidents').replaceChildren(frag);
    $('inc-count').textContent = String(list.length);
  }

  // ---------------------------------------------------------------- trouble table
  function renderTrouble() {
    const rows = troublePoints(Object.values(state.points));
    const frag = document.createDocumentFragment();
    for (const p of rows) {
      const tr = el('tr', `lv-${token(p.level)} st-${token(p.data_state)}`);
      tr.setAttribute('data-row-point', String(p.id));
      const lv = el('td');
      lv.append(levelChip(p.level));
      const st = el('td');
      st.append(stateChip(p.data_state));
      tr.append(el('td', 'name', p.name), el('td', null, KIND_ZH[p.kind] || p.kind), lv,
        el('td', 'num', pointValueText(p)), el('td', 'num', riseText(p.rise_cm_per_min) || '—'), st);
      frag.append(tr);
    }
    if (!rows.length) {
      const tr = el('tr', 'empty');
      const td = el('td', null, '全部点位正常');
      td.colSpan = 6;
      tr.append(td);
      frag.append(tr);
    }
    $('trouble-body').replaceChildren(frag);
    $('trouble-count').textContent = String(rows.length);
  }

  // ---------------------------------------------------------------- feeds
  function renderAlerts() {
    const frag = document.createDocumentFragment();
    for (const a of state.alerts.slice(0, SHOW_ALERTS)) {
      const x = alertParts(a, state.points);
      const li = el('li', `al lv-${token(a.to)} tr-${token(a.transition)}`);
      li.setAttribute('data-transition', String(a.transition));
      li.append(el('span', 'time', x.time), el('span', 'name', x.name), el('span', 'word', x.word),
        el('span', 'levels', x.levels), el('span', 'rule', x.rule));
      if (x.rise) li.append(el('span', 'rise', x.rise));
      if (x.forecast) li.append(el('span', 'forecast', x.forecast));
      if (x.late) li.append(el('span', 'late', x.late));
      if (x.flapping) li.append(el('span', 'flapping', x.flapping));
      frag.append(li);
    }
    if (!state.alerts.length) frag.append(el('li', 'empty', '暂无预警变化'));
    $('alerts').replaceChildren(frag);
  }

  function renderRejects() {
    const frag = document.createDocumentFragment();
    for (const r of state.rejects.slice(0, SHOW_REJECTS)) {
      const li = el('li', 'rj rs-' + token(r.reason));
      li.setAttribute('title', truncate(r.detail, 500) + '\n' + truncate(r.raw, 300));
      li.append(el('span', 'time', fmtTime(r.received_ms)), el('span', 'reason', REASON_ZH[r.reason] || r.reason));
      li.append(el('span', 'src', [r.sensor, r.source].filter(Boolean).join(' · ')));
      li.append(el('span', 'detail', truncate(r.detail, 90)));
      frag.append(li);
    }
    if (!state.rejects.length) frag.append(el('li', 'empty', '暂无拒收数据'));
    $('rejects').replaceChildren(frag);
  }

  // ---------------------------------------------------------------- websocket
  function onMessage(ev) {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { console.warn('bad message', e); return; }
    const d = applyMessage(state, msg);
    if (Object.keys(d).length) markDirty(d);
  }

  function connect() {
    let ws;
    try { ws = new WebSocket(wsUrl(window.location)); } catch (e) { return reconnectLater(); }
    ws.onopen = () => { attempt = 0; everConnected = true; state.connected = true; markDirty({ banner: true }); };
    ws.onmessage = onMessage;
    ws.onerror = () => { try { ws.close(); } catch (e) { /* already closed */ } };
    ws.onclose = () => {
      ws.onclose = null;
      state.connected = false;
      markDirty({ banner: true });
      reconnectLater();
    };
  }

  function reconnectLater() {
    const delay = backoffDelay(attempt);
    attempt += 1;
    setTimeout(connect, delay);
  }

  function start() {
    $('map-wrap').addEventListener('click', () => { if (tip.pinned) hideTip(); });
    if (typeof ResizeObserver !== 'undefined') {
      new ResizeObserver(() => { mapView = null; markDirty({ map: true }); }).observe($('map-wrap'));
    } else {
      window.addEventListener('resize', () => { mapView = null; markDirty({ map: true }); });
    }
    markDirty(ALL_DIRTY());
    connect();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
