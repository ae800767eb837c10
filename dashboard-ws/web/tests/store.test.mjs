// The page's store without a browser: a snapshot in parts, patches with removed fields, and
// deltas that are older than what the store holds (docs/WEBSOCKET.md).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createStore, applyMessage, liveDepth } from '../src/store.js';

const point = (id, extra = {}) => ({ id, name: id, level: 'normal', data_state: 'fresh', ...extra });

function snapshotInParts() {
  const head = {
    type: 'snapshot', seq: 7, epoch: 'e1', now_ms: 1000, parts: 3,
    district: { id: 'd', name: 'D' }, points: [point('A'), point('B')],
    incidents: [], counters: { silent: 0 }, alerts: [], rejects: [], people: {},
    session: null, can_act: false,
  };
  const part = (i, ids) => ({ type: 'snapshot_part', seq: 7, epoch: 'e1', part: i, parts: 3, points: ids.map((id) => point(id)) });
  return [head, part(1, ['C', 'D']), part(2, ['E'])];
}

test('a snapshot in parts is applied whole, when its last part comes', () => {
  const store = createStore();
  const [head, p1, p2] = snapshotInParts();
  assert.equal(applyMessage(store, head), false);
  assert.equal(store.points.size, 0, 'nothing shown from half a snapshot');
  assert.equal(applyMessage(store, p1), false);
  assert.equal(applyMessage(store, p2), true);
  assert.deepEqual([...store.points.keys()], ['A', 'B', 'C', 'D', 'E']);
  assert.equal(store.seq, 7);
  assert.equal(store.epoch, 'e1');
  assert.equal(store.partial, null);
  // A part with no snapshot being gathered is ignored.
  assert.equal(applyMessage(store, { ...p2, seq: 99 }), false);
  assert.equal(store.points.size, 5);
});

test('a stray part, or a new snapshot mid-gather, never mixes two snapshots', () => {
  const store = createStore();
  const [head, p1, p2] = snapshotInParts();
  applyMessage(store, head);
  // A part of another snapshot while this one is gathered: ignored.
  assert.equal(applyMessage(store, { ...p1, seq: 6, points: [point('X')] }), false);
  // A new single-message snapshot replaces the half-gathered one.
  assert.equal(applyMessage(store, { ...head, seq: 8, parts: 1, points: [point('Z')] }), true);
  assert.equal(store.partial, null);
  assert.deepEqual([...store.points.keys()], ['Z']);
  // The old snapshot's remaining parts find nothing to complete.
  assert.equal(applyMessage(store, p1), false);
  assert.equal(applyMessage(store, p2), false);
  assert.deepEqual([...store.points.keys()], ['Z']);
});

test('a resumed delta at the number the store holds is applied', () => {
  const store = createStore();
  for (const m of snapshotInParts()) applyMessage(store, m);
  assert.equal(applyMessage(store, { type: 'delta', seq: 7, resumed: true, points: [point('A', { depth_cm: 3 })], patches: [] }), true);
  assert.equal(store.points.get('A').depth_cm, 3);
});

test('patches change only the fields they name, and null removes a field', () => {
  const store = createStore();
  for (const m of snapshotInParts()) applyMessage(store, m);
  applyMessage(store, {
    type: 'delta', seq: 8, now_ms: 1100,
    points: [point('F', { depth_cm: 1 })],
    patches: [{ id: 'A', depth_cm: 12.5, next_level: 'red', minutes_to_next: 8 }],
    incidents: [], alerts: [], rejects: [], counters: null,
  });
  assert.deepEqual(store.points.get('A'), point('A', { depth_cm: 12.5, next_level: 'red', minutes_to_next: 8 }));
  assert.equal(store.points.get('F').depth_cm, 1);
  const before = store.points.get('A');
  assert.equal(
    applyMessage(store, { type: 'delta', seq: 9, points: [], patches: [{ id: 'A', next_level: null, minutes_to_next: null, depth_cm: 9 }] }),
    true,
  );
  assert.deepEqual(store.points.get('A'), point('A', { depth_cm: 9 }));
  assert.equal(before.next_level, 'red', 'a patch makes a new object; the old one is left as it was');
  // An old delta is ignored.
  assert.equal(applyMessage(store, { type: 'delta', seq: 9, points: [], patches: [{ id: 'A', depth_cm: 1 }] }), false);
  assert.equal(store.points.get('A').depth_cm, 9);
});

test('the live depth shows only while it is newer than the status', () => {
  assert.equal(liveDepth(point('A')), null);
  assert.deepEqual(liveDepth(point('A', { live_depth_cm: 12.5, live_ms: 2000 })), { depth_cm: 12.5, ms: 2000 });
  assert.deepEqual(liveDepth(point('A', { live_depth_cm: 12.5, live_ms: 2000, last_reading_ms: 1000 })), { depth_cm: 12.5, ms: 2000 });
  assert.equal(liveDepth(point('A', { live_depth_cm: 12.5, live_ms: 2000, last_reading_ms: 2000 })), null);
  assert.equal(liveDepth(point('A', { live_depth_cm: 12.5, live_ms: 2000, last_reading_ms: 3000 })), null);
  // Newer, but the same depth as the status (a flat sensor, whose status the stage does not
  // publish again): nothing to add.
  assert.equal(liveDepth(point('A', { live_depth_cm: 12.5, live_ms: 2000, last_reading_ms: 1000, depth_cm: 12.5 })), null);
  assert.deepEqual(liveDepth(point('A', { live_depth_cm: 12.6, live_ms: 2000, last_reading_ms: 1000, depth_cm: 12.5 })), { depth_cm: 12.6, ms: 2000 });
  // Through a live row, as the wall sends it.
  const s = createStore();
  const [head] = snapshotInParts();
  applyMessage(s, { ...head, parts: 1 });
  applyMessage(s, { type: 'delta', seq: 8, epoch: 'e1', now_ms: 1100, points: [], patches: [], live: [['A', 30.1, 5000]], incidents: [] });
  assert.deepEqual(liveDepth(s.points.get('A')), { depth_cm: 30.1, ms: 5000 });
  assert.equal(s.points.get('A').name, 'A', 'a live row leaves the rest of the point');
  applyMessage(s, { type: 'delta', seq: 9, epoch: 'e1', now_ms: 1200, points: [], patches: [{ id: 'A', depth_cm: 30.1, last_reading_ms: 5000 }], incidents: [] });
  assert.equal(liveDepth(s.points.get('A')), null);
});

test('a patch and a live row of one point in one delta both apply; a null removes; an unknown id is skipped', () => {
  const s = createStore();
  const [head] = snapshotInParts();
  applyMessage(s, { ...head, parts: 1 });
  applyMessage(s, {
    type: 'delta', seq: 8, epoch: 'e1', now_ms: 1100, points: [],
    patches: [{ id: 'A', depth_cm: 10, last_reading_ms: 900 }],
    live: [['A', 12.5, 1000], ['NOPE', 1, 1]],
    incidents: [],
  });
  const a = s.points.get('A');
  assert.equal(a.depth_cm, 10);
  assert.equal(a.last_reading_ms, 900);
  assert.deepEqual(liveDepth(a), { depth_cm: 12.5, ms: 1000 });
  assert.equal(s.points.has('NOPE'), false);
  applyMessage(s, { type: 'delta', seq: 9, epoch: 'e1', now_ms: 1200, points: [], patches: [], live: [['A', null, null]], incidents: [] });
  assert.equal('live_depth_cm' in s.points.get('A'), false);
  assert.equal('live_ms' in s.points.get('A'), false);
  assert.equal(s.points.get('A').depth_cm, 10);
});
