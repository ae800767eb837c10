// The command wall in a real browser: Debian's Chromium driven by playwright-core, against
// `floodcmd demo` (the whole pipeline with the simulated storm at 60x) and live test-pattern
// camera streams from scripts/cameras.sh.
//
//   node --test dashboard-ws/web/tests/      (scripts/test.sh runs it after the cargo tests)
//
// Environment: FLOODCMD_BIN (default: the newest floodcmd under $CARGO_TARGET_DIR or
// target/, release or debug), CHROMIUM (default /usr/bin/chromium), FLOODCMD_ARTIFACTS
// (screenshots; default <repo>/artifacts/wall).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, statSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const artifacts = process.env.FLOODCMD_ARTIFACTS || join(repo, 'artifacts/wall');
// Launch flags that work on these machines (shared/notes/real-services.md); playwright
// gives every launch a fresh profile directory of its own.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];
// Long waits are for the storm to get somewhere, never assertions about speed.
const STORM_MS = 240_000;
const STEP_MS = 60_000;
// The cameras this test streams: two underpasses, to keep CPU low.
const CAMERAS = ['CAM-UP-01', 'CAM-UP-02'];

function binary() {
  if (process.env.FLOODCMD_BIN) return process.env.FLOODCMD_BIN;
  const roots = [process.env.CARGO_TARGET_DIR, join(repo, 'target')].filter(Boolean);
  const found = roots
    .flatMap((r) => ['release', 'debug'].map((p) => join(r, p, 'floodcmd')))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (!found.length) throw new Error('no floodcmd binary: run `cargo build` first or set FLOODCMD_BIN');
  return found[0];
}

let demo;
let wallUrl;
const users = {};
let camerasDir;
let browser;

/// Start `floodcmd demo` and read its address and the logins it prints.
function startDemo() {
  return new Promise((ok, fail) => {
    const child = spawn(binary(), ['demo', '--port', '0', '--cameras-dir', camerasDir], {
      cwd: repo,
      env: { ...process.env, FLOODCMD_LOG: process.env.FLOODCMD_LOG || 'warn' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    const timer = setTimeout(() => fail(new Error(`demo did not print its address:\n${out}`)), 120_000);
    child.stdout.on('data', (b) => {
      out += b.toString();
      for (const m of out.matchAll(/^\s*user (\S+) role (\S+) password (\S+)$/gm)) users[m[2]] = { name: m[1], password: m[3] };
      const url = out.match(/command wall:\s+(http:\/\/\S+)/);
      if (url && out.includes('cameras:')) {
        clearTimeout(timer);
        ok({ child, url: url[1].replace(/\/$/, '') });
      }
    });
    child.on('exit', (code) => fail(new Error(`demo exited with ${code}:\n${out}`)));
  });
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  camerasDir = mkdtempSync(join(tmpdir(), 'floodcmd-cameras-'));
  execFileSync(join(repo, 'scripts/cameras.sh'), ['start', ...CAMERAS], {
    env: { ...process.env, FLOODCMD_CAMERAS_DIR: camerasDir },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const started = await startDemo();
  demo = started.child;
  wallUrl = started.url;
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: CHROMIUM_ARGS });
});

after(async () => {
  if (browser) await browser.close();
  if (demo && demo.exitCode === null) {
    demo.kill('SIGTERM');
    await new Promise((r) => demo.once('exit', r));
  }
  if (camerasDir) {
    execFileSync(join(repo, 'scripts/cameras.sh'), ['stop'], {
      env: { ...process.env, FLOODCMD_CAMERAS_DIR: camerasDir },
      stdio: 'ignore',
    });
    rmSync(camerasDir, { recursive: true, force: true });
  }
});

/// A page of its own (fresh storage), recording its websockets' frames.
async function openWall() {
  const context = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  const page = await context.newPage();
  const sockets = [];
  page.on('websocket', (ws) => {
    const rec = { url: ws.url(), frames: [] };
    sockets.push(rec);
    ws.on('framereceived', (f) => {
      try {
        rec.frames.push(JSON.parse(f.payload));
      } catch {
        rec.frames.push({ type: 'unparsable' });
      }
    });
  });
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(`${wallUrl}/`);
  return { page, sockets, context };
}

async function loginAs(page, role) {
  const u = users[role];
  assert.ok(u, `the demo printed a ${role} login`);
  await page.click('#login-open');
  await page.fill('#login-name', u.name);
  await page.fill('#login-password', u.password);
  await page.click('#login-submit');
  await page.locator(`.who[data-role="${role}"]`).waitFor({ timeout: STEP_MS });
  // The fresh snapshot for this login has arrived when the session it names is ours.
  await page.waitForFunction((name) => window.floodcmdWall.store.session?.name === name, u.name, { timeout: STEP_MS });
  return u;
}

const redUnderpass = 'article.incident[data-kind="underpass"][data-level="red"]';
let redPoint;
let viewer;
let commander;

const compressedConnections = async () => {
  const metrics = await (await fetch(`${wallUrl}/metrics`)).text();
  const m = metrics.match(/^floodcmd_dashboard_ws_compressed_connections_total (\d+)$/m);
  return m ? Number(m[1]) : 0;
};

test('the map shows every point and websocket frames arrive: a snapshot, then deltas', async () => {
  const compressedBefore = await compressedConnections();
  viewer = await openWall();
  const { page, sockets } = viewer;
  const points = await (await fetch(`${wallUrl}/api/points`)).json();
  assert.equal(points.length, 74);
  await page.waitForFunction((n) => document.querySelectorAll('#map .pm').length === n, points.length, { timeout: STEP_MS });
  const ids = await page.$$eval('#map .pm', (els) => els.map((e) => e.dataset.point).sort());
  assert.deepEqual(ids, points.map((p) => p.id).sort());
  // Sub-district outlines are drawn from /api/geo.
  assert.ok((await page.locator('#map path.leaflet-interactive').count()) >= 9);
  await page.waitForFunction(() => true);
  const ws = sockets.find((s) => s.url.includes('/ws'));
  assert.ok(ws, 'the page opened the websocket');
  await waitFor(() => ws.frames.some((f) => f.type === 'delta'), 'a delta frame');
  assert.equal(ws.frames[0].type, 'snapshot');
  assert.equal(ws.frames[0].points.length, 74);
  const delta = ws.frames.find((f) => f.type === 'delta');
  assert.ok(delta.seq > ws.frames[0].seq, 'deltas continue the snapshot');
  // Chromium offers permessage-deflate, and the wall agreed for this page's connection: the
  // frames above came compressed (the wall's own framing) and the browser inflated them.
  const compressedAfter = await compressedConnections();
  assert.ok(compressedAfter > compressedBefore, `compressed connections: ${compressedBefore} → ${compressedAfter}`);
});

test('a red underpass incident appears with its escalation steps, on the map and in the panel', async () => {
  const { page } = viewer;
  const card = page.locator(redUnderpass).first();
  await card.waitFor({ timeout: STORM_MS });
  redPoint = await card.getAttribute('data-point');
  assert.ok((await card.locator('tr.step').count()) >= 1, 'who was told, at which rung');
  const rungs = await card.locator('tr.step td:first-child').allTextContents();
  assert.ok(rungs.some((r) => r.includes('点位责任人')), rungs.join(' | '));
  await page.locator(`#map .pm[data-point="${redPoint}"][data-level="red"]`).waitFor({ timeout: STEP_MS });
  // Open incidents are listed most severe first.
  const levels = await page.$$eval('article.incident', (els) => els.map((e) => e.dataset.level));
  const rank = ['normal', 'blue', 'yellow', 'orange', 'red'];
  for (let i = 1; i < levels.length; i++) assert.ok(rank.indexOf(levels[i - 1]) >= rank.indexOf(levels[i]), levels.join(','));
  // The point panel: values, prediction line, charts of the last hours.
  await card.locator('a.pname').click();
  await page.locator(`#point[data-point="${redPoint}"] .v-depth`).waitFor({ timeout: STEP_MS });
  await page.locator('#point .chart.depth .uplot').waitFor({ timeout: STEP_MS });
  assert.match(await page.locator('#point .v-depth').textContent(), /^\d+\.\d$/);
  assert.ok((await page.locator('#point .forecast').textContent()).length > 0);
  // The live depth: the newest reading off the readings topic, shown (marked live, not yet
  // quality-checked) whenever it is newer than the status, which waits for the stream
  // stage's epoch and lateness budget. In the storm that is most of the time.
  const live = page.locator(`#point[data-point="${redPoint}"] .live`);
  await live.waitFor({ timeout: STEP_MS });
  assert.match(await live.locator('.v-live').textContent(), /^-?\d+\.\d$/);
  assert.match(await live.textContent(), /实时水深/);
  const ws = viewer.sockets.find((s) => s.url.includes('/ws'));
  assert.ok(
    ws.frames.some((f) => f.type === 'delta' && (f.live || []).some(([id, depth]) => id === redPoint && typeof depth === 'number')),
    'deltas carry the live depth',
  );
  await page.screenshot({ path: join(artifacts, 'wall-anonymous.png') });
});

test('a viewer sees phone numbers masked, no action buttons, and the API refuses', async () => {
  const { page } = viewer;
  await loginAs(page, 'viewer');
  await page.locator(redUnderpass).first().waitFor({ timeout: STEP_MS });
  const phones = (await page.locator('article.incident td.phone').allTextContents()).filter(Boolean);
  assert.ok(phones.length > 0);
  for (const p of phones) assert.match(p, /^\d{3}\*{4}\d{4}$/);
  const chain = await page.locator('#point td.phone').allTextContents();
  for (const p of chain) assert.match(p, /^\d{3}\*{4}\d{4}$/);
  assert.equal(await page.locator('button.act').count(), 0, 'viewers get no action buttons');
  const statuses = await page.evaluate(async (id) => {
    const token = JSON.parse(sessionStorage.getItem('floodcmd.session')).token;
    const url = `/api/incidents/${encodeURIComponent(id)}/actions`;
    const body = JSON.stringify({ kind: 'note', text: 'viewer note' });
    const headers = { 'content-type': 'application/json' };
    const asViewer = await fetch(url, { method: 'POST', headers: { ...headers, authorization: `Bearer ${token}` }, body });
    const anonymous = await fetch(url, { method: 'POST', headers, body });
    return [asViewer.status, anonymous.status];
  }, await page.locator(redUnderpass).first().getAttribute('data-incident'));
  assert.deepEqual(statuses, [403, 401]);
  await page.screenshot({ path: join(artifacts, 'wall-viewer.png') });
});

test('a commander acknowledges and checks in; the timeline attributes both and escalation stops', async (t) => {
  commander = await openWall();
  const { page } = commander;
  const u = await loginAs(page, 'commander');
  // A red underpass whose ladder has someone waiting to acknowledge (a new loop starts when
  // the last one ran out, so one comes along). At the demo's 60x a red step has 3 real
  // seconds to be acknowledged, so the pending button is found and clicked inside the page in
  // the same animation frame it is first seen: a round trip per lookup between node and a
  // loaded browser can cost that much on its own. The click is the user's (the wall's own
  // click handler sends it). When it still lands after its deadline, the alerts stage records
  // it as not on the current list, and the test tries the next pending step.
  let incident;
  let step;
  let person;
  let landed = false;
  let attempt = 0;
  for (; attempt < 10 && !landed; attempt++) {
    const clicked = await page.waitForFunction(
      ([cards, who]) => {
        // A button a user could click: enabled (not one already sent), shown, and on top
        // at its centre (the checks playwright's own click makes).
        const clickable = (b) => {
          if (b.disabled || !b.checkVisibility()) return false;
          b.scrollIntoView({ block: 'center' });
          const r = b.getBoundingClientRect();
          return b.contains(document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2));
        };
        const button = [...document.querySelectorAll(`${cards} tr.step[data-state="pending"] button[data-act="acknowledge"]`)].find(clickable);
        if (!button) return null;
        const tr = button.closest('tr');
        const card = tr.closest('article');
        const acks = `li[data-what="acknowledged"][data-by="${who}"]`;
        const seen = card.querySelectorAll(acks).length;
        const attrs = {
          incident: card.dataset.incident,
          step: tr.dataset.step,
          person: tr.dataset.person,
          phone: tr.querySelector('td.phone').textContent,
          seen,
        };
        button.click();
        return attrs;
      },
      [redUnderpass, u.name],
      { timeout: STORM_MS, polling: 'raf' },
    );
    const attrs = await clicked.jsonValue();
    await clicked.dispose();
    ({ incident, step, person } = attrs);
    // A commander sees phone numbers in full.
    assert.match(attrs.phone, /^\d{11}$/);
    const acksSel = `article.incident[data-incident="${incident}"] li[data-what="acknowledged"][data-by="${u.name}"]`;
    // The acknowledgement comes back in the timeline, attributed to the logged-in user.
    await page.waitForFunction(([sel, n]) => document.querySelectorAll(sel).length > n, [acksSel, attrs.seen], { timeout: STEP_MS });
    landed = !(await page.locator(acksSel).first().textContent()).includes('不在当前通知名单中');
  }
  t.diagnostic(`acknowledgements clicked: ${attempt}`);
  assert.ok(landed, 'an acknowledgement landed on a pending step');
  const at = page.locator(`article.incident[data-incident="${incident}"]`);
  const acked = await page.evaluate(
    ([id, stepId, who]) => window.floodcmdWall.store.incidents.get(id).steps.find((s) => s.id === stepId && s.person === who),
    [incident, step, person],
  );
  assert.ok(acked.acked_ms, JSON.stringify(acked));
  assert.ok((await page.evaluate(() => window.floodcmdWall.store.counters.acknowledged)) > 0);
  // On site (到岗) for the point owner: the climb stops.
  await at.locator('.actions button[data-act="check_in"]').click();
  await at.locator(`li[data-what="checked_in"][data-by="${u.name}"]`).waitFor({ timeout: STEP_MS });
  await page.locator(`article.incident[data-incident="${incident}"][data-escalating="false"]`).waitFor({ timeout: STEP_MS });
  assert.equal(await at.locator('tr.step:is([data-state="pending"], [data-state="acknowledged"])').count(), 0);
  // The underpass closure buttons are there for the commander.
  assert.ok((await at.locator('button[data-act="confirm_closure"], button[data-act="receding"], button[data-act="reopen"]').count()) > 0);
  await page.screenshot({ path: join(artifacts, 'wall-commander.png') });
});

test('after a forced disconnect the client resumes from where it was, without a snapshot', async () => {
  const { page, sockets } = commander;
  const before = sockets.length;
  const seq = await page.evaluate(() => window.floodcmdWall.store.seq);
  await page.evaluate(() => window.floodcmdWall.dropConnection());
  await waitFor(() => sockets.length > before && sockets.at(-1).frames.length > 0, 'a new connection with a first frame');
  const again = sockets.at(-1);
  assert.match(again.url, /resume=[0-9a-f]+\.\d+/);
  assert.equal(again.frames[0].type, 'delta');
  assert.equal(again.frames[0].resumed, true);
  assert.ok(again.frames[0].seq >= seq);
  await page.locator('#conn[data-state="connected"]').waitFor({ timeout: STEP_MS });
  // The page goes on applying deltas on the new connection.
  const after = await page.evaluate(() => window.floodcmdWall.store.seq);
  await page.waitForFunction((s) => window.floodcmdWall.store.seq > s, after, { timeout: STEP_MS });
});

test('the English toggle switches the labels and back', async () => {
  const { page } = commander;
  assert.equal(await page.locator('#incidents-title').textContent(), '未结事件');
  await page.click('#lang-toggle', { timeout: STEP_MS });
  assert.equal(await page.locator('#incidents-title').textContent(), 'Open incidents');
  assert.equal(await page.evaluate(() => document.documentElement.lang), 'en');
  await page.locator('article.incident .lvl').first().waitFor();
  assert.match(await page.locator('article.incident .lvl').first().textContent(), /^(Red|Orange|Yellow|Blue|Normal)$/);
  await page.screenshot({ path: join(artifacts, 'wall-english.png') });
  await page.click('#lang-toggle', { timeout: STEP_MS });
  assert.equal(await page.locator('#incidents-title').textContent(), '未结事件');
});

test('a pinned camera tile plays the live stream', async () => {
  const { page } = commander;
  await page.evaluate(() => window.floodcmdWall.pin('UP-01'));
  const video = page.locator('#cameras .tile[data-point="UP-01"] video');
  await video.waitFor({ timeout: STEP_MS });
  assert.equal(await page.locator('#cameras .tile').first().getAttribute('data-point'), 'UP-01', 'pinned first');
  await page.waitForFunction(() => document.querySelector('#cameras .tile[data-point="UP-01"] video').currentTime > 0, null, { timeout: STEP_MS });
  const t1 = await video.evaluate((v) => v.currentTime);
  await page.waitForFunction((t) => document.querySelector('#cameras .tile[data-point="UP-01"] video').currentTime > t + 0.5, t1, { timeout: STEP_MS });
  assert.ok((await video.evaluate((v) => v.videoWidth)) > 0, 'frames decoded');
  await page.screenshot({ path: join(artifacts, 'wall-cameras.png') });
  await page.evaluate(() => window.floodcmdWall.unpin('UP-01'));
});

async function waitFor(cond, what, timeout = STEP_MS) {
  const end = Date.now() + timeout;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
