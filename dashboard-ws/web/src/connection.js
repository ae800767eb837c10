// The websocket: connect with the login's token (as a subprotocol), apply what comes, reconnect with
// `resume=<epoch>.<seq>` so the server can send only what was missed (docs/WEBSOCKET.md).

import { applyMessage } from './store.js';
import { token, checkLogin } from './session.js';

export function createConnection(store, { onChange, onStatus }) {
  let ws = null;
  let delay = 500;
  let timer = null;
  let stopped = false;

  function url(resume) {
    const q = new URLSearchParams();
    if (resume && store.epoch) q.set('resume', `${store.epoch}.${store.seq}`);
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const qs = q.toString();
    return `${proto}//${location.host}/ws${qs ? `?${qs}` : ''}`;
  }

  function open(resume) {
    clearTimeout(timer);
    // The token goes as a subprotocol, the one header a page can give a websocket; in the
    // URL it would end up in proxies' logs (the wall refuses it there).
    const tk = token();
    const sock = new WebSocket(url(resume), tk ? ['floodcmd', `bearer.${tk}`] : ['floodcmd']);
    ws = sock;
    let opened = false;
    sock.onopen = () => {
      opened = true;
      delay = 500;
      onStatus('connected');
    };
    sock.onmessage = (ev) => {
      if (sock !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (applyMessage(store, msg)) onChange(msg);
    };
    sock.onclose = async () => {
      if (sock !== ws || stopped) return;
      onStatus('disconnected');
      // Refused before it opened: perhaps the login is gone; fall back to anonymous.
      if (!opened) await checkLogin();
      timer = setTimeout(() => open(true), delay);
      delay = Math.min(delay * 2, 5000);
    };
  }

  return {
    start: () => open(false),
    /// A fresh snapshot, e.g. after logging in or out (phones are masked per session).
    restart() {
      const old = ws;
      ws = null;
      if (old) old.close();
      store.epoch = null;
      store.partial = null;
      open(false);
    },
    /// Close the socket as a network failure would; the usual reconnect follows.
    drop() {
      if (ws) ws.close();
    },
    socket: () => ws,
  };
}
