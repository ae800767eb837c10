// SMSC simulator for floodcmd tests: a real SMPP 3.4 server (npm `smpp`, createServer) with an
// HTTP control port. Started and stopped by scripts/smsc.sh; see scripts/README.md.
//
// SMPP (default 127.0.0.1:12775): bind_transceiver/transmitter/receiver, submit_sm, enquire_link,
// unbind. Every submit_sm is recorded; accepted ones get a message id and, when the ESME asked
// for one (registered_delivery bit 0), a delivery receipt (deliver_sm, esm_class 0x04,
// "id:.. stat:DELIVRD", TLVs receipted_message_id and message_state) shortly after.
// Destinations that are not 5..20 digits (optionally with '+') are refused with
// ESME_RINVDSTADR, the permanent error the client must not retry.
//
// HTTP control (default 127.0.0.1:12776). Each knob can be scoped to one bind's system_id with
// `?system_id=X`, so tests running side by side do not disturb each other:
//   GET  /health              {"ok":true, sessions, log}
//   GET  /messages            every received submit_sm (accepted or not), oldest first
//   POST /reset               forget messages and knobs
//   POST /throttle?n=K        answer the next K submits with ESME_RTHROTTLED (0x58)
//   POST /mo?from=P&text=T    a reply from phone P (mobile-originated deliver_sm, UCS-2)
//   POST /down, POST /up      refuse binds (ESME_RBINDFAIL) and close bound sessions / accept again
//
// Every accepted submit_sm is also appended as one JSON line to the received-message log
// (FLOODCMD_SMSC_LOG): what the phones would have got, for crash tests that look for duplicates
// and gaps. Throttled and refused submits are not in it (they are in GET /messages).
'use strict';

const fs = require('fs');
const http = require('http');
const crypto = require('crypto');
const smpp = require('smpp');

const HOST = process.env.FLOODCMD_SMSC_HOST || '127.0.0.1';
const PORT = Number(process.env.FLOODCMD_SMSC_PORT || 12775);
const CONTROL_PORT = Number(process.env.FLOODCMD_SMSC_CONTROL_PORT || PORT + 1);
const LOG = process.env.FLOODCMD_SMSC_LOG || 'received.jsonl';
const RECEIPT_DELAY_MS = Number(process.env.FLOODCMD_SMSC_RECEIPT_DELAY_MS || 20);

const ESME_ROK = 0x00;
const ESME_RINVDSTADR = 0x0b;
const ESME_RBINDFAIL = 0x0d;
const ESME_RTHROTTLED = 0x58;

// A message id unique across restarts of the simulator (a restart must not reuse ids that a
// client may still be waiting on receipts for).
const BOOT = crypto.randomBytes(4).toString('hex');
let nextId = 1;

let messages = [];
// Knobs per scope: '' is every system_id, otherwise one system_id.
let throttle = new Map();
let down = new Set();
const sessions = new Set();

const logStream = fs.createWriteStream(LOG, { flags: 'a' });

function log(...args) {
  console.log(new Date().toISOString(), ...args);
}

function isDown(systemId) {
  return down.has('') || down.has(systemId);
}

// Takes one throttled answer from the narrowest scope that has any left.
function takeThrottle(systemId) {
  for (const scope of [systemId, '']) {
    const n = throttle.get(scope) || 0;
    if (n > 0) {
      throttle.set(scope, n - 1);
      return true;
    }
  }
  return false;
}

function pad(n) {
  return String(n).padStart(2, '0');
}

function smppDate(d) {
  return (
    pad(d.getUTCFullYear() % 100) +
    pad(d.getUTCMonth() + 1) +
    pad(d.getUTCDate()) +
    pad(d.getUTCHours()) +
    pad(d.getUTCMinutes())
  );
}

// The concatenation header, 8-bit (IEI 0x00) or 16-bit (IEI 0x08) reference.
function concatInfo(udhList) {
  for (const ie of udhList || []) {
    if (ie[0] === 0x00 && ie[1] === 3) return { ref: ie[2], total: ie[3], part: ie[4] };
    if (ie[0] === 0x08 && ie[1] === 4) return { ref: ie.readUInt16BE(2), total: ie[4], part: ie[5] };
  }
  return null;
}

function decodeText(sm) {
  if (sm === null || sm === undefined) return { text: '', udh: null };
  if (Buffer.isBuffer(sm)) return { text: sm.toString('latin1'), udh: null };
  if (typeof sm === 'string') return { text: sm, udh: null };
  const text = Buffer.isBuffer(sm.message) ? sm.message.toString('latin1') : String(sm.message || '');
  return { text, udh: sm.udh || null };
}

function onSubmit(session, pdu) {
  const systemId = session.systemId || '';
  const { text, udh } = decodeText(pdu.short_message);
  const concat = concatInfo(udh);
  let status = ESME_ROK;
  let messageId = null;
  if (takeThrottle(systemId)) {
    status = ESME_RTHROTTLED;
  } else if (!/^\+?[0-9]{5,20}$/.test(pdu.destination_addr || '')) {
    status = ESME_RINVDSTADR;
  } else {
    messageId = BOOT + (nextId++).toString(16).padStart(8, '0');
  }
  const record = {
    system_id: systemId,
    source: pdu.source_addr,
    destination: pdu.destination_addr,
    data_coding: pdu.data_coding,
    esm_class: pdu.esm_class,
    text,
    udh_ref: concat ? concat.ref : null,
    udh_total: concat ? concat.total : null,
    udh_part: concat ? concat.part : null,
    command_status: status,
    message_id: messageId,
    time: new Date().toISOString(),
  };
  messages.push(record);
  if (status !== ESME_ROK) {
    session.send(pdu.response({ command_status: status }));
    return;
  }
  logStream.write(JSON.stringify(record) + '\n');
  session.send(pdu.response({ message_id: messageId }));
  if ((pdu.registered_delivery & 0x01) === 0x01) {
    const submitted = new Date();
    setTimeout(() => {
      if (!sessions.has(session)) return;
      const now = new Date();
      const body =
        `id:${messageId} sub:001 dlvrd:001 submit date:${smppDate(submitted)} ` +
        `done date:${smppDate(now)} stat:DELIVRD err:000 text:`;
      session.deliver_sm({
        source_addr: pdu.destination_addr,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        data_coding: 0,
        // A Buffer bypasses the library's GSM 03.38 encoder: the receipt is plain ASCII.
        short_message: Buffer.from(body, 'ascii'),
        receipted_message_id: messageId,
        message_state: 2, // DELIVERED
      });
    }, RECEIPT_DELAY_MS);
  }
}

function onBind(session, pdu) {
  if (isDown(pdu.system_id || '')) {
    log('bind refused (down)', pdu.command, pdu.system_id);
    session.send(pdu.response({ command_status: ESME_RBINDFAIL }));
    session.close();
    return;
  }
  session.systemId = pdu.system_id || '';
  session.bound = true;
  session.send(pdu.response({ system_id: 'floodcmd-smsc' }));
  log('bound', pdu.command, session.systemId);
}

const server = smpp.createServer((session) => {
  sessions.add(session);
  session.on('close', () => sessions.delete(session));
  session.on('error', (e) => log('session error', e.message));
  for (const cmd of ['bind_transceiver', 'bind_transmitter', 'bind_receiver']) {
    session.on(cmd, (pdu) => onBind(session, pdu));
  }
  session.on('submit_sm', (pdu) => {
    if (!session.bound) {
      session.send(pdu.response({ command_status: 0x04 })); // ESME_RINVBNDSTS
      return;
    }
    onSubmit(session, pdu);
  });
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on('unknown', (pdu) => session.send(pdu.response()));
});
server.on('error', (e) => {
  log('smpp server error', e.message);
  process.exit(1);
});

function closeSessions(systemId) {
  for (const s of sessions) {
    if (systemId === '' || s.systemId === systemId) s.destroy();
  }
}

function reply(res, code, body) {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json' });
  res.end(text);
}

const control = http.createServer((req, res) => {
  const url = new URL(req.url, `http://${req.headers.host || 'localhost'}`);
  const scope = url.searchParams.get('system_id') || '';
  const route = `${req.method} ${url.pathname}`;
  switch (route) {
    case 'GET /health':
      return reply(res, 200, { ok: true, sessions: sessions.size, log: fs.realpathSync(LOG) });
    case 'GET /messages':
      return reply(res, 200, scope ? messages.filter((m) => m.system_id === scope) : messages);
    case 'POST /reset':
      if (scope) {
        messages = messages.filter((m) => m.system_id !== scope);
        throttle.delete(scope);
        down.delete(scope);
      } else {
        messages = [];
        throttle = new Map();
        down = new Set();
      }
      return reply(res, 200, { ok: true });
    case 'POST /throttle': {
      const n = Number(url.searchParams.get('n') || '1');
      if (!Number.isInteger(n) || n < 0) return reply(res, 400, { error: 'n must be a whole number' });
      throttle.set(scope, n);
      log('throttle', scope || '*', n);
      return reply(res, 200, { ok: true, throttle: n });
    }
    case 'POST /mo': {
      // A reply from a phone (mobile-originated), e.g. "1" to acknowledge: delivered to one
      // bound session of the scope as a deliver_sm with esm_class 0.
      const from = url.searchParams.get('from') || '';
      const text = url.searchParams.get('text') || '';
      const target = [...sessions].find((s) => !scope || s.systemId === scope);
      if (!target) return reply(res, 409, { error: 'no bound session for that system_id' });
      target.deliver_sm({
        source_addr: from,
        destination_addr: url.searchParams.get('to') || '10690000',
        esm_class: 0,
        data_coding: 8,
        short_message: Buffer.from(text, 'utf16le').swap16(),
      });
      log('mo', scope || '*', from, text);
      return reply(res, 200, { ok: true });
    }
    case 'POST /down':
      down.add(scope);
      closeSessions(scope);
      log('down', scope || '*');
      return reply(res, 200, { ok: true });
    case 'POST /up':
      down.delete(scope);
      log('up', scope || '*');
      return reply(res, 200, { ok: true });
    default:
      return reply(res, 404, { error: `no route ${route}` });
  }
});

server.listen(PORT, HOST, () => {
  control.listen(CONTROL_PORT, HOST, () => {
    log(`smsc listening smpp ${HOST}:${PORT} control ${HOST}:${CONTROL_PORT} log ${LOG}`);
  });
});

function shutdown() {
  log('stopping');
  closeSessions('');
  logStream.end(() => process.exit(0));
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
