//! An SMPP 3.4 client (ESME) over tokio TCP: one `bind_transceiver` session per gateway, kept
//! up by a supervisor task that reconnects with backoff, probes the link with `enquire_link`,
//! answers the SMSC's requests, and turns `deliver_sm` receipts into [`DeliveryReceipt`]s.
//!
//! Submits are pipelined up to `window` outstanding `submit_sm` per gateway, matched to their
//! responses by sequence number. Texts go out as UCS-2 ([`segment`]); a long text is several
//! `submit_sm` with a concatenation header. If only some parts of a text were accepted, the
//! accepted ones are remembered by message key, so a retry of the same key sends only the
//! missing parts with the same concatenation reference and the handset still rejoins one text.

pub mod pdu;
pub mod segment;

use crate::{DeliveryReceipt, Reply, SendReceipt, SmsError, SmsGateway, SmsMessage};
use bytes::BytesMut;
use pdu::{status, tag, Bind, Body, Pdu, ShortMessage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, warn};

/// `esm_class` with the UDH indicator (a concatenation header leads the payload).
const ESM_UDHI: u8 = 0x40;
/// `esm_class` message-type bits that mark a delivery receipt.
const ESM_TYPE_MASK: u8 = 0x3C;
const ESM_DELIVERY_RECEIPT: u8 = 0x04;
/// UCS-2.
const DATA_CODING_UCS2: u8 = 0x08;
/// Partial sends older than this are forgotten: by then the outbox has given up or moved on.
const PARTIAL_TTL: Duration = Duration::from_secs(3600);

/// How to reach and use one SMSC. Debug hides the password.
#[derive(Clone)]
pub struct SmppConfig {
    /// The gateway's name (receipts, logs, metrics).
    pub name: String,
    /// `host:port` of the SMSC.
    pub addr: String,
    /// Bind account.
    pub system_id: String,
    /// Bind password.
    pub password: String,
    /// Sender address (short code) on every `submit_sm`.
    pub source_addr: String,
    /// Outstanding `submit_sm` without a response, at most.
    pub window: usize,
    /// Ask for delivery receipts (`registered_delivery` 1).
    pub receipts: bool,
    /// TCP connect plus bind, at most.
    pub connect_timeout: Duration,
    /// A request without a response after this is failed and the link is suspect.
    pub response_timeout: Duration,
    /// How often the link is probed with `enquire_link`.
    pub enquire_link_interval: Duration,
    /// First and longest wait between reconnect attempts.
    pub reconnect_min: Duration,
    /// Longest wait between reconnect attempts.
    pub reconnect_max: Duration,
    /// How long a send waits for a bind that is in progress before it reports
    /// [`SmsError::Unavailable`]; while the SMSC is known to be down, sends fail at once.
    pub bind_wait: Duration,
}

impl std::fmt::Debug for SmppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmppConfig")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("system_id", &self.system_id)
            .field("password", &"***")
            .field("source_addr", &self.source_addr)
            .field("window", &self.window)
            .field("receipts", &self.receipts)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("enquire_link_interval", &self.enquire_link_interval)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("bind_wait", &self.bind_wait)
            .finish()
    }
}

impl SmppConfig {
    /// A config with the usual timings.
    pub fn new(
        name: impl Into<String>,
        addr: impl Into<String>,
        system_id: impl Into<String>,
        password: impl Into<String>,
        source_addr: impl Into<String>,
    ) -> SmppConfig {
        SmppConfig {
            name: name.into(),
            addr: addr.into(),
            system_id: system_id.into(),
            password: password.into(),
            source_addr: source_addr.into(),
            window: 10,
            receipts: true,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            enquire_link_interval: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            bind_wait: Duration::from_secs(3),
        }
    }
}

/// An SMPP gateway. Creating it starts the connection task (a tokio runtime must be running);
/// dropping it ends that task and the connection.
pub struct SmppGateway {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    cfg: SmppConfig,
    state: watch::Sender<LinkState>,
    window: Semaphore,
    receipts: broadcast::Sender<DeliveryReceipt>,
    replies: broadcast::Sender<Reply>,
    next_ref: AtomicU8,
    partial: Mutex<HashMap<String, Partial>>,
    /// Set before our own unbind: the SMSC closing the socket after it is expected.
    closing: AtomicBool,
}

/// What a send finds when it looks for the link.
#[derive(Clone)]
enum LinkState {
    Connecting,
    Bound(Arc<Link>),
    Down(String),
}

/// Parts of one key's text already accepted by the SMSC.
struct Partial {
    reference: u8,
    ids: Vec<Option<String>>,
    text: String,
    since: Instant,
}

/// One bound TCP session.
struct Link {
    out: mpsc::Sender<BytesMut>,
    pending: Mutex<HashMap<u32, oneshot::Sender<Pdu>>>,
    seq: AtomicU32,
    closed: AtomicBool,
    response_timeout: Duration,
}

impl Link {
    fn next_seq(&self) -> u32 {
        // Sequence numbers run 1..=0x7FFFFFFF (§5.1.2.4); 1 went to the bind.
        let s = self.seq.fetch_add(1, Ordering::Relaxed);
        (s % 0x7FFF_FFFE) + 1
    }

    /// Send a request and wait for the PDU with its sequence number.
    async fn request(&self, body: Body) -> Result<Pdu, SmsError> {
        let seq = self.next_seq();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending").insert(seq, tx);
        // Checked after inserting: teardown sets the flag and then drains `pending`, so either
        // the drain sees this entry or this check sees the flag.
        if self.closed.load(Ordering::Acquire) {
            self.pending.lock().expect("pending").remove(&seq);
            return Err(unavailable("connection closed"));
        }
        if self
            .out
            .send(Pdu::request(seq, body).encode())
            .await
            .is_err()
        {
            self.pending.lock().expect("pending").remove(&seq);
            return Err(unavailable("connection closed"));
        }
        match tokio::time::timeout(self.response_timeout, rx).await {
            Ok(Ok(pdu)) => Ok(pdu),
            Ok(Err(_)) => Err(unavailable("connection lost before the response")),
            Err(_) => {
                self.pending.lock().expect("pending").remove(&seq);
                Err(unavailable(format!(
                    "no response within {:?}",
                    self.response_timeout
                )))
            }
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders wakes every waiting request with an error.
        self.pending.lock().expect("pending").clear();
    }
}

fn unavailable(reason: impl Into<String>) -> SmsError {
    SmsError::Unavailable {
        reason: reason.into(),
    }
}

impl SmppGateway {
    /// Start connecting to the SMSC in the background.
    pub fn new(cfg: SmppConfig) -> SmppGateway {
        let (state, _) = watch::channel(LinkState::Connecting);
        let (receipts, _) = broadcast::channel(4096);
        let (replies, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            window: Semaphore::new(cfg.window.max(1)),
            cfg,
            state,
            receipts,
            replies,
            next_ref: AtomicU8::new(rand::random()),
            partial: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(inner.clone(), stop_rx));
        SmppGateway {
            inner,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// True while a session is bound.
    pub fn is_bound(&self) -> bool {
        matches!(*self.inner.state.borrow(), LinkState::Bound(_))
    }

    /// Wait until a session is bound, at most `timeout`.
    pub async fn wait_bound(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.state.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| matches!(s, LinkState::Bound(_))))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The bound link, waiting for a bind in progress.
    async fn link(&self) -> Result<Arc<Link>, SmsError> {
        let mut rx = self.inner.state.subscribe();
        let waited = tokio::time::timeout(
            self.inner.cfg.bind_wait,
            rx.wait_for(|s| !matches!(s, LinkState::Connecting)),
        )
        .await;
        let state = match waited {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => return Err(unavailable("gateway stopped")),
            Err(_) => {
                return Err(unavailable(format!(
                    "not bound to {} within {:?}",
                    self.inner.cfg.addr, self.inner.cfg.bind_wait
                )))
            }
        };
        match state {
            LinkState::Bound(l) => Ok(l),
            LinkState::Down(reason) => Err(unavailable(reason)),
            LinkState::Connecting => unreachable!("waited for another state"),
        }
    }

    async fn submit_part(
        &self,
        link: &Link,
        msg: &SmsMessage,
        part: segment::Part,
        multipart: bool,
    ) -> Result<String, SmsError> {
        let (ton, npi, dest) = destination(&msg.phone);
        let sm = ShortMessage {
            source_addr_ton: 0,
            source_addr_npi: 0,
            source_addr: self.inner.cfg.source_addr.clone(),
            dest_addr_ton: ton,
            dest_addr_npi: npi,
            destination_addr: dest.to_string(),
            esm_class: if multipart { ESM_UDHI } else { 0 },
            registered_delivery: u8::from(self.inner.cfg.receipts),
            data_coding: DATA_CODING_UCS2,
            short_message: part.payload,
            ..Default::default()
        };
        let _permit = self.inner.window.acquire().await.expect("never closed");
        let resp = link.request(Body::SubmitSm(sm)).await?;
        submit_outcome(&resp)
    }
}

impl Drop for SmppGateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// TON/NPI and digits for a phone number: a leading `+` means international.
fn destination(phone: &str) -> (u8, u8, &str) {
    match phone.strip_prefix('+') {
        Some(rest) => (1, 1, rest),
        None => (0, 1, phone),
    }
}

/// What a `submit_sm_resp` (or `generic_nack`) means for the message.
fn submit_outcome(resp: &Pdu) -> Result<String, SmsError> {
    let st = resp.header.command_status;
    match (&resp.body, st) {
        (Body::SubmitSmResp { message_id }, status::ESME_ROK) => Ok(message_id.clone()),
        (_, status::ESME_RTHROTTLED | status::ESME_RMSGQFUL) => {
            Err(SmsError::Throttled { retry_after: None })
        }
        // The SMSC's own trouble, or our session's state: another gateway may do better.
        (_, status::ESME_RSYSERR | status::ESME_RINVBNDSTS) => Err(unavailable(format!(
            "submit_sm refused: {}",
            status_name(st)
        ))),
        (Body::GenericNack, _) => Err(SmsError::Rejected {
            reason: format!("generic_nack {}", status_name(st)),
        }),
        (Body::SubmitSmResp { .. }, _) => Err(SmsError::Rejected {
            reason: format!("submit_sm refused: {}", status_name(st)),
        }),
        (other, _) => Err(SmsError::Rejected {
            reason: format!("unexpected answer to submit_sm: {other:?}"),
        }),
    }
}

/// `ESME_R...` names for the statuses worth naming in logs.
pub fn status_name(st: u32) -> String {
    let name = match st {
        status::ESME_ROK => "ESME_ROK",
        status::ESME_RINVMSGLEN => "ESME_RINVMSGLEN",
        status::ESME_RINVCMDID => "ESME_RINVCMDID",
        status::ESME_RINVBNDSTS => "ESME_RINVBNDSTS",
        status::ESME_RALYBND => "ESME_RALYBND",
        status::ESME_RSYSERR => "ESME_RSYSERR",
        status::ESME_RINVDSTADR => "ESME_RINVDSTADR",
        status::ESME_RBINDFAIL => "ESME_RBINDFAIL",
        status::ESME_RINVPASWD => "ESME_RINVPASWD",
        status::ESME_RINVSYSID => "ESME_RINVSYSID",
        status::ESME_RMSGQFUL => "ESME_RMSGQFUL",
        status::ESME_RTHROTTLED => "ESME_RTHROTTLED",
        _ => return format!("0x{st:08X}"),
    };
    format!("{name} (0x{st:02X})")
}

/// The text of a mobile-originated `deliver_sm`: UCS-2 (data_coding 8) or, for anything
/// else, the bytes as Latin-1 (replies are digits and short words).
pub fn mo_text(sm: &ShortMessage) -> String {
    let body = if sm.esm_class & 0x40 != 0 {
        // A UDH leads the payload: skip it (its first byte is its length).
        let skip = sm.short_message.first().map_or(0, |n| *n as usize + 1);
        sm.short_message.get(skip..).unwrap_or_default()
    } else {
        &sm.short_message[..]
    };
    if sm.data_coding == 8 {
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        body.iter().map(|b| *b as char).collect()
    }
}

/// A delivery receipt from a `deliver_sm`, if it is one.
pub fn parse_receipt(gateway: &str, sm: &ShortMessage) -> Option<DeliveryReceipt> {
    if sm.esm_class & ESM_TYPE_MASK != ESM_DELIVERY_RECEIPT {
        return None;
    }
    // The receipt text is ASCII by convention ("id:.. sub:.. dlvrd:.. ... stat:.. err:..").
    let text = String::from_utf8_lossy(&sm.short_message);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|t| t.strip_prefix(name))
            .map(str::to_string)
    };
    // The TLVs are authoritative where present: some SMSCs print the id in decimal in the text
    // but return it in hex in submit_sm_resp and receipted_message_id.
    let message_id = sm
        .tlv(tag::RECEIPTED_MESSAGE_ID)
        .map(|v| {
            let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).into_owned()
        })
        .filter(|s| !s.is_empty())
        .or_else(|| field("id:"))?;
    let stat = field("stat:")
        .or_else(|| {
            let state = *sm.tlv(tag::MESSAGE_STATE)?.first()?;
            Some(
                match state {
                    1 => "ENROUTE",
                    2 => "DELIVRD",
                    3 => "EXPIRED",
                    4 => "DELETED",
                    5 => "UNDELIV",
                    6 => "ACCEPTD",
                    8 => "REJECTD",
                    _ => "UNKNOWN",
                }
                .to_string(),
            )
        })
        .unwrap_or_else(|| "UNKNOWN".into());
    Some(DeliveryReceipt {
        gateway: gateway.to_string(),
        message_id,
        delivered: stat == "DELIVRD",
        stat,
    })
}

#[async_trait::async_trait]
impl SmsGateway for SmppGateway {
    fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    fn cost(&self, msg: &SmsMessage) -> u32 {
        segment::count(&msg.text) as u32
    }

    fn receipts(&self) -> Option<broadcast::Receiver<DeliveryReceipt>> {
        Some(self.inner.receipts.subscribe())
    }

    fn replies(&self) -> Option<broadcast::Receiver<Reply>> {
        Some(self.inner.replies.subscribe())
    }

    async fn close(&self) {
        let link = match &*self.inner.state.borrow() {
            LinkState::Bound(l) => Some(l.clone()),
            _ => None,
        };
        self.inner.closing.store(true, Ordering::Release);
        if let Some(link) = link {
            match link.request(Body::Unbind).await {
                Ok(_) => info!(gateway = %self.inner.cfg.name, "unbound"),
                Err(e) => debug!(gateway = %self.inner.cfg.name, error = %e, "unbind"),
            }
        }
        let _ = self.stop.send(true);
        let task = self.task.lock().expect("task").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    async fn send(&self, msg: &SmsMessage) -> Result<SendReceipt, SmsError> {
        // A retry of a half-sent text reuses its reference and skips the accepted parts.
        let (reference, mut ids) = {
            let mut partial = self.inner.partial.lock().expect("partial");
            match partial.remove(&msg.key) {
                Some(p) if p.text == msg.text => (p.reference, p.ids),
                _ => (
                    self.inner.next_ref.fetch_add(1, Ordering::Relaxed),
                    Vec::new(),
                ),
            }
        };
        let parts = segment::split(&msg.text, reference).map_err(|e| SmsError::Rejected {
            reason: e.to_string(),
        })?;
        let total = parts.len();
        ids.resize(total, None);
        let link = self.link().await;
        let result = match link {
            Err(e) => Err(e),
            Ok(link) => {
                let todo: Vec<_> = parts
                    .into_iter()
                    .filter(|p| ids[p.seq as usize - 1].is_none())
                    .collect();
                let outcomes = futures::future::join_all(todo.into_iter().map(|p| {
                    let seq = p.seq;
                    let link = link.clone();
                    async move { (seq, self.submit_part(&link, msg, p, total > 1).await) }
                }))
                .await;
                let mut worst: Option<SmsError> = None;
                for (seq, outcome) in outcomes {
                    match outcome {
                        Ok(id) => ids[seq as usize - 1] = Some(id),
                        Err(e) => {
                            debug!(gateway = %self.inner.cfg.name, key = %msg.key, part = seq, error = %e, "part not accepted");
                            worst = Some(match worst {
                                None => e,
                                Some(w) => more_severe(w, e),
                            });
                        }
                    }
                }
                match worst {
                    None => Ok(()),
                    Some(e) => Err(e),
                }
            }
        };
        match result {
            Ok(()) => Ok(SendReceipt {
                gateway: self.inner.cfg.name.clone(),
                message_ids: ids.into_iter().map(|i| i.expect("all accepted")).collect(),
                parts: total,
            }),
            Err(e) => {
                if !e.is_permanent() && ids.iter().any(Option::is_some) {
                    let mut partial = self.inner.partial.lock().expect("partial");
                    partial.retain(|_, p| p.since.elapsed() < PARTIAL_TTL);
                    partial.insert(
                        msg.key.clone(),
                        Partial {
                            reference,
                            ids,
                            text: msg.text.clone(),
                            since: Instant::now(),
                        },
                    );
                }
                Err(e)
            }
        }
    }
}

/// Rejected outranks Unavailable outranks Throttled: the caller acts on the worst.
fn more_severe(a: SmsError, b: SmsError) -> SmsError {
    fn rank(e: &SmsError) -> u8 {
        match e {
            SmsError::Throttled { .. } => 0,
            SmsError::Unavailable { .. } => 1,
            SmsError::Rejected { .. } => 2,
        }
    }
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

/// Connect, bind, serve the session until it breaks, and again, until stopped.
async fn supervise(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let cfg = &inner.cfg;
    let mut backoff = cfg.reconnect_min;
    loop {
        inner.state.send_replace(LinkState::Connecting);
        let attempt = tokio::time::timeout(cfg.connect_timeout, connect_and_bind(cfg)).await;
        match attempt {
            Ok(Ok((reader, writer, smsc))) => {
                info!(gateway = %cfg.name, addr = %cfg.addr, system_id = %cfg.system_id, smsc = %smsc, "bound (transceiver)");
                backoff = cfg.reconnect_min;
                let why = serve(&inner, reader, writer, &mut stop).await;
                if *stop.borrow() || inner.closing.load(Ordering::Acquire) {
                    inner
                        .state
                        .send_replace(LinkState::Down("gateway stopped".into()));
                    return;
                }
                warn!(gateway = %cfg.name, reason = %why, "session ended; reconnecting");
                inner.state.send_replace(LinkState::Down(why));
            }
            Ok(Err(reason)) => {
                warn!(gateway = %cfg.name, addr = %cfg.addr, %reason, retry_in = ?backoff, "cannot bind");
                inner.state.send_replace(LinkState::Down(reason));
            }
            Err(_) => {
                let reason = format!("connect and bind took over {:?}", cfg.connect_timeout);
                warn!(gateway = %cfg.name, addr = %cfg.addr, %reason, retry_in = ?backoff, "cannot bind");
                inner.state.send_replace(LinkState::Down(reason));
            }
        }
        // Jitter keeps several gateways (or processes) from reconnecting in lockstep.
        let wait = backoff.mul_f64(0.75 + rand::random::<f64>() * 0.5);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => {
                inner.state.send_replace(LinkState::Down("gateway stopped".into()));
                return;
            }
        }
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}

/// TCP connect and `bind_transceiver`; returns the halves and the SMSC's system id.
async fn connect_and_bind(
    cfg: &SmppConfig,
) -> Result<(OwnedReadHalf, OwnedWriteHalf, String), String> {
    let stream = TcpStream::connect(&cfg.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", cfg.addr))?;
    // Writes are batched by the writer task; Nagle would only add latency to each batch.
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let bind = Pdu::request(
        1,
        Body::BindTransceiver(Bind {
            system_id: cfg.system_id.clone(),
            password: cfg.password.clone(),
            interface_version: pdu::INTERFACE_VERSION_34,
            ..Default::default()
        }),
    );
    writer
        .write_all(&bind.encode())
        .await
        .map_err(|e| format!("send bind: {e}"))?;
    // Some SMSCs probe with enquire_link before answering the bind.
    loop {
        let resp = read_pdu(&mut reader)
            .await
            .map_err(|e| format!("bind: {e}"))?;
        match resp.body {
            Body::BindTransceiverResp { system_id } if resp.header.sequence == 1 => {
                if resp.header.command_status != status::ESME_ROK {
                    return Err(format!(
                        "bind refused: {}",
                        status_name(resp.header.command_status)
                    ));
                }
                return Ok((reader, writer, system_id));
            }
            Body::EnquireLink => {
                let r = Pdu::response(resp.header.sequence, 0, Body::EnquireLinkResp);
                writer
                    .write_all(&r.encode())
                    .await
                    .map_err(|e| format!("bind: {e}"))?;
            }
            Body::GenericNack => {
                return Err(format!(
                    "bind answered with generic_nack {}",
                    status_name(resp.header.command_status)
                ))
            }
            other => debug!(gateway = %cfg.name, pdu = ?other, "ignored before bind response"),
        }
    }
}

/// Why reading a PDU failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("connection closed by the SMSC")]
    Eof,
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Pdu(#[from] pdu::PduError),
}

async fn read_pdu(r: &mut OwnedReadHalf) -> Result<Pdu, ReadError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ReadError::Eof),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len);
    if !(16..=pdu::MAX_PDU_LEN).contains(&n) {
        return Err(pdu::PduError::BadLength(n).into());
    }
    let mut frame = vec![0u8; n as usize];
    frame[..4].copy_from_slice(&len);
    r.read_exact(&mut frame[4..]).await?;
    Ok(Pdu::decode(&frame)?)
}

/// Serve one bound session; returns why it ended.
async fn serve(
    inner: &Arc<Inner>,
    mut reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let cfg = &inner.cfg;
    let (out, mut out_rx) = mpsc::channel::<BytesMut>(1024);
    let link = Arc::new(Link {
        out: out.clone(),
        pending: Mutex::new(HashMap::new()),
        seq: AtomicU32::new(1),
        closed: AtomicBool::new(false),
        response_timeout: cfg.response_timeout,
    });
    inner.state.send_replace(LinkState::Bound(link.clone()));

    let write = async move {
        let mut w = BufWriter::with_capacity(64 * 1024, writer);
        while let Some(first) = out_rx.recv().await {
            w.write_all(&first).await?;
            // Whatever else is queued goes in the same flush: one syscall per burst.
            while let Ok(more) = out_rx.try_recv() {
                w.write_all(&more).await?;
            }
            w.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    };

    let read = async {
        loop {
            let p = read_pdu(&mut reader).await?;
            let seq = p.header.sequence;
            let is_response = p.header.command_id & 0x8000_0000 != 0;
            if is_response {
                let waiter = link.pending.lock().expect("pending").remove(&seq);
                match waiter {
                    Some(w) => {
                        let _ = w.send(p);
                    }
                    None => {
                        debug!(gateway = %cfg.name, seq, cmd = pdu::command_name(p.header.command_id), "response nobody waits for")
                    }
                }
                continue;
            }
            let reply = match p.body {
                Body::DeliverSm(sm) => {
                    match parse_receipt(&cfg.name, &sm) {
                        Some(r) => {
                            debug!(gateway = %cfg.name, id = %r.message_id, stat = %r.stat, "delivery receipt");
                            // Nobody listening is fine: receipts are informative.
                            let _ = inner.receipts.send(r);
                        }
                        None => {
                            let text = mo_text(&sm);
                            info!(gateway = %cfg.name, from = %sm.source_addr, %text, "reply from a phone");
                            let _ = inner.replies.send(Reply {
                                gateway: cfg.name.clone(),
                                from: sm.source_addr.clone(),
                                text,
                            });
                        }
                    }
                    Pdu::response(seq, status::ESME_ROK, Body::DeliverSmResp)
                }
                Body::EnquireLink => Pdu::response(seq, status::ESME_ROK, Body::EnquireLinkResp),
                Body::Unbind => {
                    let _ = out
                        .send(Pdu::response(seq, status::ESME_ROK, Body::UnbindResp).encode())
                        .await;
                    return Ok::<String, ReadError>("the SMSC unbound".into());
                }
                _ => Pdu::response(seq, status::ESME_RINVCMDID, Body::GenericNack),
            };
            if out.send(reply.encode()).await.is_err() {
                return Ok("writer stopped".into());
            }
        }
    };

    let probe = async {
        let mut tick = tokio::time::interval(cfg.enquire_link_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = link.request(Body::EnquireLink).await {
                return format!("enquire_link failed: {e}");
            }
        }
    };

    let why = tokio::select! {
        r = write => match r {
            Ok(()) => "writer stopped".to_string(),
            Err(e) => format!("write: {e}"),
        },
        r = read => match r {
            Ok(why) => why,
            Err(e) => e.to_string(),
        },
        why = probe => why,
        _ = stop.wait_for(|s| *s) => "gateway stopped".to_string(),
    };
    link.close();
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt_sm(text: &str, tlvs: Vec<pdu::Tlv>) -> ShortMessage {
        ShortMessage {
            esm_class: 0x04,
            short_message: text.as_bytes().to_vec(),
            tlvs,
            ..Default::default()
        }
    }

    #[test]
    fn receipts_parse_from_text_and_tlvs() {
        let text = "id:0a1b2c sub:001 dlvrd:001 submit date:2607011200 done date:2607011201 stat:DELIVRD err:000 text:";
        let r = parse_receipt("g", &receipt_sm(text, vec![])).unwrap();
        assert_eq!(r.message_id, "0a1b2c");
        assert!(r.delivered);
        assert_eq!(r.stat, "DELIVRD");

        let tlvs = vec![
            pdu::Tlv {
                tag: tag::RECEIPTED_MESSAGE_ID,
                value: b"FF01\0".to_vec(),
            },
            pdu::Tlv {
                tag: tag::MESSAGE_STATE,
                value: vec![5],
            },
        ];
        let r = parse_receipt("g", &receipt_sm("", tlvs)).unwrap();
        assert_eq!(r.message_id, "FF01");
        assert_eq!(r.stat, "UNDELIV");
        assert!(!r.delivered);

        let undeliv = "id:77 sub:001 dlvrd:000 submit date:2607011200 done date:2607011201 stat:UNDELIV err:001";
        assert!(
            !parse_receipt("g", &receipt_sm(undeliv, vec![]))
                .unwrap()
                .delivered
        );

        let mut mo = receipt_sm("1", vec![]);
        mo.esm_class = 0;
        assert_eq!(parse_receipt("g", &mo), None);
    }

    #[test]
    fn statuses_map_to_what_the_caller_does() {
        let resp = |st, body| Pdu::response(1, st, body);
        let id = Body::SubmitSmResp {
            message_id: "m1".into(),
        };
        assert_eq!(submit_outcome(&resp(0, id.clone())), Ok("m1".into()));
        assert!(matches!(
            submit_outcome(&resp(status::ESME_RTHROTTLED, id.clone())),
            Err(SmsError::Throttled { .. })
        ));
        assert!(matches!(
            submit_outcome(&resp(status::ESME_RMSGQFUL, id.clone())),
            Err(SmsError::Throttled { .. })
        ));
        assert!(matches!(
            submit_outcome(&resp(status::ESME_RSYSERR, id.clone())),
            Err(SmsError::Unavailable { .. })
        ));
        assert!(matches!(
            submit_outcome(&resp(status::ESME_RINVDSTADR, id)),
            Err(SmsError::Rejected { .. })
        ));
        assert!(matches!(
            submit_outcome(&resp(status::ESME_RINVCMDID, Body::GenericNack)),
            Err(SmsError::Rejected { .. })
        ));
    }

    #[test]
    fn international_numbers_set_ton() {
        assert_eq!(destination("+8613800000000"), (1, 1, "8613800000000"));
        assert_eq!(destination("13800000000"), (0, 1, "13800000000"));
    }
}
