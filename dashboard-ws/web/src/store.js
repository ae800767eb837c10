// The wall's state in the browser: what the websocket's snapshot and deltas say
// (docs/WEBSOCKET.md), plus an estimate of the server's clock so countdowns run between
// messages (the demo's clock runs faster than real time).

export const LEVELS = ['normal', 'blue', 'yellow', 'orange', 'red'];
export const levelRank = (l) => LEVELS.indexOf(l);

export function createStore() {
  return {
    epoch: null,
    seq: 0,
    district: null,
    points: new Map(),
    incidents: new Map(),
    people: {},
    counters: null,
    alerts: [],
    rejects: [],
    session: null,
    canAct: false,
    // A snapshot whose parts are still coming.
    partial: null,
    // Server clock estimate: the last server time and when it arrived, and the rate of the
    // server clock against ours.
    clock: { server: null, local: null, rate: 1, anchor: null },
  };
}

function noteClock(store, nowMs) {
  if (typeof nowMs !== 'number') return;
  const local = Date.now();
  const c = store.clock;
  if (!c.anchor) c.anchor = { server: nowMs, local };
  const dl = local - c.anchor.local;
  if (dl > 3000) {
    const rate = (nowMs - c.anchor.server) / dl;
    if (rate > 0 && Number.isFinite(rate)) c.rate = rate;
  }
  c.server = nowMs;
  c.local = local;
}

/// The server's "now" (ms), extrapolated from the last message.
export function serverNow(store) {
  const c = store.clock;
  if (c.server == null) return Date.now();
  return c.server + (Date.now() - c.local) * c.rate;
}

const MAX_ALERTS = 50;
const MAX_REJECTS = 20;

/// Apply one message; returns false when it was ignored (an old delta, or a part of a
/// snapshot whose other parts have not all come yet).
export function applyMessage(store, msg) {
  // A large snapshot comes in parts (docs/WEBSOCKET.md): gather them, apply it whole. A new
  // snapshot drops any half-gathered one.
  if (msg.type === 'snapshot') store.partial = null;
  if (msg.type === 'snapshot' && msg.parts > 1) {
    store.partial = { msg, points: [...msg.points], got: 1 };
    return false;
  }
  if (msg.type === 'snapshot_part') {
    const partial = store.partial;
    if (!partial || partial.msg.seq !== msg.seq || partial.msg.epoch !== msg.epoch) return false;
    partial.points.push(...msg.points);
    partial.got += 1;
    if (partial.got < partial.msg.parts) return false;
    store.partial = null;
    msg = { ...partial.msg, points: partial.points };
  }
  if (msg.type === 'snapshot') {
    store.epoch = msg.epoch;
    store.seq = msg.seq;
    store.district = msg.district;
    store.points = new Map(msg.points.map((p) => [p.id, p]));
    store.incidents = new Map(msg.incidents.filter((i) => i.state !== 'closed').map((i) => [i.id, i]));
    store.people = msg.people || {};
    store.counters = msg.counters;
    store.alerts = msg.alerts || [];
    store.rejects = msg.rejects || [];
    store.session = msg.session || null;
    store.canAct = !!msg.can_act;
    // A new run of the server keeps its own clock pace.
    store.clock.anchor = null;
    noteClock(store, msg.now_ms);
    return true;
  }
  if (msg.type === 'delta') {
    if (msg.seq <= store.seq && !(msg.resumed && msg.seq === store.seq)) return false;
    store.seq = msg.seq;
    for (const p of msg.points || []) store.points.set(p.id, p);
    // A patch holds the fields that changed since the last message; null: the field is gone.
    for (const patch of msg.patches || []) {
      const cur = store.points.get(patch.id);
      if (!cur) {
        // Cannot happen while the server keeps its promise (every client holds every point
        // a patch names); say so rather than guess the rest of the point.
        console.warn('patch for a point this page does not hold', patch.id);
        continue;
      }
      const next = { ...cur };
      for (const [k, v] of Object.entries(patch)) {
        if (v === null) delete next[k];
        else next[k] = v;
      }
      store.points.set(patch.id, next);
    }
    // Live rows, `[id, live_depth_cm, live_ms]`: a point's live depth, apart from its patch.
    for (const [id, depth, ms] of msg.live || []) {
      const cur = store.points.get(id);
      if (!cur) {
        console.warn('live row for a point this page does not hold', id);
        continue;
      }
      const next = { ...cur };
      if (depth === null) delete next.live_depth_cm;
      else next.live_depth_cm = depth;
      if (ms === null) delete next.live_ms;
      else next.live_ms = ms;
      store.points.set(id, next);
    }
    for (const i of msg.incidents || []) {
      if (i.state === 'closed') store.incidents.delete(i.id);
      else store.incidents.set(i.id, i);
    }
    if (msg.counters) store.counters = msg.counters;
    for (const a of msg.alerts || []) store.alerts.unshift(a);
    store.alerts.length = Math.min(store.alerts.length, MAX_ALERTS);
    for (const r of msg.rejects || []) store.rejects.unshift(r);
    store.rejects.length = Math.min(store.rejects.length, MAX_REJECTS);
    noteClock(store, msg.now_ms);
    return true;
  }
  return false;
}

/// Open incidents, most severe first, then oldest first.
export function sortedIncidents(store) {
  return [...store.incidents.values()].sort(
    (a, b) => levelRank(b.level) - levelRank(a.level) || a.opened_at - b.opened_at || (a.id < b.id ? -1 : 1),
  );
}

/// The point's live depth (off the readings topic, before the stream stage's quality control
/// and levels) while it is newer than the stage's status and says something the status does
/// not, else null: the wall shows it beside the status, marked live, never as the level. The
/// stage publishes a status only when more than its times change, so a flat or stuck sensor's
/// status keeps an old `last_reading_ms`; its live depth, the same as the status's, is not
/// shown.
export function liveDepth(p) {
  if (p.live_depth_cm == null || p.live_ms == null) return null;
  if (p.last_reading_ms != null && p.live_ms <= p.last_reading_ms) return null;
  if (p.depth_cm != null && Math.abs(p.live_depth_cm - p.depth_cm) < 0.005) return null;
  return { depth_cm: p.live_depth_cm, ms: p.live_ms };
}

/// How severe a point is now, for the camera wall's automatic choice.
export function severity(p, store) {
  const open = [...store.incidents.values()].some((i) => i.point_id === p.id);
  const closure = p.closure === 'suggested' || p.closure === 'closed' ? 1 : 0;
  return levelRank(p.level) * 1000 + closure * 100 + (open ? 50 : 0) + Math.min(49, Math.max(0, p.depth_cm || 0));
}
