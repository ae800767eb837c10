// The login and the REST calls that carry it. The token lives in sessionStorage: it ends
// with the tab, and a reload keeps it.

const KEY = 'floodcmd.session';

export function currentLogin() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY)) || null;
  } catch {
    return null;
  }
}

export function token() {
  return currentLogin()?.token || null;
}

function headers(extra) {
  const h = { ...extra };
  const tk = token();
  if (tk) h.authorization = `Bearer ${tk}`;
  return h;
}

export async function login(name, password) {
  const r = await fetch('/api/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name, password }),
  });
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
  const v = await r.json();
  sessionStorage.setItem(KEY, JSON.stringify(v));
  return v;
}

export async function logout() {
  const tk = token();
  sessionStorage.removeItem(KEY);
  if (tk) await fetch('/api/logout', { method: 'POST', headers: { authorization: `Bearer ${tk}` } }).catch(() => {});
}

/// Drop a login the server no longer knows (it restarted, or the login expired).
export async function checkLogin() {
  if (!token()) return;
  const r = await fetch('/api/me', { headers: headers() }).catch(() => null);
  if (r && r.status === 401) sessionStorage.removeItem(KEY);
}

export async function getJson(path) {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

/// POST an action; resolves with the server's answer, throws with its error message.
export async function act(incidentId, body) {
  const r = await fetch(`/api/incidents/${encodeURIComponent(incidentId)}/actions`, {
    method: 'POST',
    headers: headers({ 'content-type': 'application/json' }),
    body: JSON.stringify(body),
  });
  const v = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(v.error || `${r.status}`);
  return v;
}
