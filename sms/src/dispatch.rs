//! The dispatcher: sends each message through the first usable gateway of an ordered list.
//!
//! - **Rate limits.** Each gateway has a token bucket (its contracted submits per second; a
//!   long SMPP text costs one token per part). Waiting for a token is how the limit shapes a
//!   mass alert: senders queue, nobody is refused.
//! - **Throttling** ([`SmsError::Throttled`]) is retried on the same gateway after an
//!   exponential backoff with jitter (or the gateway's `Retry-After`, if longer), up to a cap.
//! - **Unavailable** gateways are skipped by a circuit breaker: the message moves to the next
//!   gateway at once, and the broken one is left alone for a cooldown. After it, one message
//!   probes it; success closes the breaker and traffic returns to the primary, failure doubles
//!   the cooldown (up to a maximum).
//! - **Rejected** is final: no other gateway would accept a bad number or text either.
//! - Every attempt, on any gateway, counts against `max_attempts`; so does a round in which
//!   every gateway is open, which waits for the earliest breaker to close.
//! - **One key at a time.** A second `send` of a key whose first send is still running does not
//!   send again: it waits for the first and returns the same outcome.

use crate::http_sendsms::{HttpSendSms, HttpSendSmsConfig};
use crate::metrics::metrics;
use crate::settings::{GatewaySettings, SettingsProblem, SmsSettings};
use crate::smpp::{SmppConfig, SmppGateway};
use crate::{DeliveryReceipt, Reply, SendReceipt, SmsError, SmsGateway, SmsMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

/// Retry and breaker timings.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// Attempts per message over all gateways, at least 1.
    pub max_attempts: u32,
    /// First wait after a throttle.
    pub backoff_initial: Duration,
    /// Longest wait after a throttle.
    pub backoff_max: Duration,
    /// How long an unavailable gateway is skipped before one message probes it.
    pub breaker_cooldown: Duration,
    /// Longest cooldown while probes keep failing.
    pub breaker_cooldown_max: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_attempts: 8,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            breaker_cooldown: Duration::from_secs(5),
            breaker_cooldown_max: Duration::from_secs(60),
        }
    }
}

/// A message that was not sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SMS {key} not sent after {attempts} attempt(s): {last}")]
pub struct DispatchError {
    /// The message key.
    pub key: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last gateway error.
    pub last: SmsError,
}

impl DispatchError {
    /// True when retrying later cannot help (the message was rejected).
    pub fn is_permanent(&self) -> bool {
        self.last.is_permanent()
    }
}

/// A gateway and its rate limit, for [`Dispatcher::new`].
pub struct Route {
    /// The gateway.
    pub gateway: Arc<dyn SmsGateway>,
    /// Tokens (SMPP submits, HTTP requests) per second; 0 is no limit.
    pub rate_per_s: f64,
}

/// Sends messages through an ordered list of gateways; see the module doc.
///
/// # Examples
///
/// ```no_run
/// use floodcmd_sms::{DispatchConfig, Dispatcher, SmsMessage, SmsSettings};
///
/// # async fn run(toml_text: &str) -> Result<(), Box<dyn std::error::Error>> {
/// let settings: SmsSettings = toml::from_str(toml_text)?;
/// let sms = Dispatcher::from_settings(&settings, DispatchConfig::default())
///     .map_err(|problems| format!("{problems:?}"))?;
/// let mut receipts = sms.receipts();
/// let msg = SmsMessage {
///     key: "INC-1/red.0.0/p-17".into(),
///     phone: "+8613800000000".into(),
///     text: "【新城区防汛】红色预警 解放门下穿 积水32cm 请立即封闭并到岗 回复1确认".into(),
/// };
/// match sms.send(&msg).await {
///     Ok(sent) => println!("{} took it as {:?}", sent.gateway, sent.message_ids),
///     Err(e) if e.is_permanent() => println!("give up: {e}"),
///     Err(e) => println!("retry later: {e}"),
/// }
/// let receipt = receipts.recv().await?; // matches one of sent.message_ids
/// println!("{} delivered: {}", receipt.message_id, receipt.delivered);
/// # Ok(())
/// # }
/// ```
pub struct Dispatcher {
    slots: Vec<Slot>,
    cfg: DispatchConfig,
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
    receipts: broadcast::Sender<DeliveryReceipt>,
    replies: broadcast::Sender<Reply>,
}

type Outcome = Result<SendReceipt, DispatchError>;

struct Slot {
    gateway: Arc<dyn SmsGateway>,
    bucket: Option<TokenBucket>,
    breaker: Mutex<Breaker>,
}

impl Dispatcher {
    /// A dispatcher over `routes`, tried in order. Must be called inside a tokio runtime: it
    /// starts one task per gateway that forwards delivery receipts.
    pub fn new(routes: Vec<Route>, cfg: DispatchConfig) -> Dispatcher {
        let (receipts, _) = broadcast::channel(8192);
        let (replies, _) = broadcast::channel::<Reply>(1024);
        let slots = routes
            .into_iter()
            .map(|r| {
                if let Some(mut rx) = r.gateway.replies() {
                    let tx = replies.clone();
                    tokio::spawn(async move {
                        loop {
                            match rx.recv().await {
                                Ok(reply) => {
                                    let _ = tx.send(reply);
                                }
                                Err(broadcast::error::RecvError::Lagged(n)) => {
                                    warn!(missed = n, "replies dropped: reader too slow")
                                }
                                Err(broadcast::error::RecvError::Closed) => return,
                            }
                        }
                    });
                }
                if let Some(mut rx) = r.gateway.receipts() {
                    let tx = receipts.clone();
                    tokio::spawn(async move {
                        loop {
                            match rx.recv().await {
                                Ok(receipt) => {
                                    let _ = tx.send(receipt);
                                }
                                Err(broadcast::error::RecvError::Lagged(n)) => {
                                    warn!(missed = n, "delivery receipts dropped: reader too slow")
                                }
                                Err(broadcast::error::RecvError::Closed) => return,
                            }
                        }
                    });
                }
                Slot {
                    bucket: TokenBucket::new(r.rate_per_s),
                    gateway: r.gateway,
                    breaker: Mutex::new(Breaker::Closed),
                }
            })
            .collect();
        Dispatcher {
            slots,
            cfg,
            inflight: Mutex::new(HashMap::new()),
            receipts,
            replies,
        }
    }

    /// Build every configured gateway (SMPP sessions start connecting now) and the dispatcher.
    /// Must be called inside a tokio runtime.
    pub fn from_settings(
        settings: &SmsSettings,
        cfg: DispatchConfig,
    ) -> Result<Dispatcher, Vec<SettingsProblem>> {
        settings.validate()?;
        if settings.gateways.is_empty() {
            return Err(vec![SettingsProblem {
                path: "sms.gateways".into(),
                message: "no gateway configured".into(),
            }]);
        }
        let mut routes = Vec::new();
        for ((i, g), name) in settings.gateways.iter().enumerate().zip(settings.names()) {
            let gateway: Arc<dyn SmsGateway> = match g {
                GatewaySettings::Smpp(s) => {
                    let mut c = SmppConfig::new(
                        name,
                        format!("{}:{}", s.host, s.port),
                        &s.system_id,
                        &s.password,
                        &s.source_addr,
                    );
                    c.window = s.window as usize;
                    Arc::new(SmppGateway::new(c))
                }
                GatewaySettings::HttpSendSms(h) => Arc::new(
                    HttpSendSms::new(HttpSendSmsConfig {
                        name,
                        url: h.url.clone(),
                        access_key_id: h.access_key_id.clone(),
                        access_key_secret: h.access_key_secret.clone(),
                        sign_name: h.sign_name.clone(),
                        template_code: h.template_code.clone(),
                        timeout: Duration::from_secs(10),
                    })
                    .map_err(|e| {
                        vec![SettingsProblem {
                            path: format!("sms.gateways[{i}]"),
                            message: e.to_string(),
                        }]
                    })?,
                ),
            };
            routes.push(Route {
                gateway,
                rate_per_s: g.rate_per_s(),
            });
        }
        Ok(Dispatcher::new(routes, cfg))
    }

    /// The gateways' names, in the order they are tried.
    pub fn gateways(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| s.gateway.name().to_string())
            .collect()
    }

    /// Replies from phones through every gateway that carries them, from now on.
    pub fn replies(&self) -> broadcast::Receiver<Reply> {
        self.replies.subscribe()
    }

    /// Delivery receipts from every gateway that reports them, from now on.
    pub fn receipts(&self) -> broadcast::Receiver<DeliveryReceipt> {
        self.receipts.subscribe()
    }

    /// Send `msg`, retrying and falling back as the module doc says. A concurrent send of the
    /// same key waits for this one and returns its outcome instead of sending again.
    pub async fn send(&self, msg: &SmsMessage) -> Result<SendReceipt, DispatchError> {
        loop {
            let claim = {
                let mut inflight = self.inflight.lock().expect("inflight");
                match inflight.get(&msg.key) {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        inflight.insert(msg.key.clone(), rx);
                        Ok(tx)
                    }
                }
            };
            match claim {
                Ok(tx) => {
                    let _guard = InflightGuard {
                        map: &self.inflight,
                        key: &msg.key,
                    };
                    let outcome = self.send_now(msg).await;
                    let _ = tx.send(Some(outcome.clone()));
                    return outcome;
                }
                Err(mut rx) => {
                    debug!(key = %msg.key, "same key already in flight; waiting for it");
                    if let Ok(v) = rx.wait_for(Option::is_some).await {
                        return v.clone().expect("waited for Some");
                    }
                    // The first sender was cancelled before it finished: claim the key anew.
                }
            }
        }
    }

    async fn send_now(&self, msg: &SmsMessage) -> Outcome {
        let fail = |attempts, last| {
            Err(DispatchError {
                key: msg.key.clone(),
                attempts,
                last,
            })
        };
        if self.slots.is_empty() {
            return fail(
                0,
                SmsError::Unavailable {
                    reason: "no gateway configured".into(),
                },
            );
        }
        let m = metrics();
        let mut attempts = 0u32;
        let mut backoff = self.cfg.backoff_initial;
        let mut last: Option<SmsError> = None;
        loop {
            if attempts >= self.cfg.max_attempts.max(1) {
                let last = last.expect("at least one attempt");
                warn!(key = %msg.key, attempts, error = %last, "SMS not sent; giving up");
                return fail(attempts, last);
            }
            let now = Instant::now();
            let picked = self
                .slots
                .iter()
                .find(|s| s.breaker.lock().expect("breaker").try_use(now));
            let Some(slot) = picked else {
                attempts += 1;
                let reopen = self
                    .slots
                    .iter()
                    .filter_map(|s| s.breaker.lock().expect("breaker").reopens_at())
                    .min()
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                let wait = reopen.min(backoff).max(Duration::from_millis(10));
                debug!(key = %msg.key, ?wait, "every gateway unavailable; waiting");
                last = Some(SmsError::Unavailable {
                    reason: "every gateway is unavailable".into(),
                });
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(self.cfg.backoff_max);
                continue;
            };
            let name = slot.gateway.name();
            if let Some(bucket) = &slot.bucket {
                bucket.acquire(slot.gateway.cost(msg)).await;
            }
            attempts += 1;
            match slot.gateway.send(msg).await {
                Ok(receipt) => {
                    slot.breaker.lock().expect("breaker").reachable(name);
                    m.sent.with_label_values(&[name]).inc();
                    debug!(key = %msg.key, gateway = name, parts = receipt.parts, attempts, "SMS sent");
                    return Ok(receipt);
                }
                Err(SmsError::Throttled { retry_after }) => {
                    slot.breaker.lock().expect("breaker").reachable(name);
                    m.throttled.with_label_values(&[name]).inc();
                    // Full jitter on the upper half keeps a burst of throttled senders from
                    // returning together.
                    let jittered = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
                    let wait = retry_after.unwrap_or_default().max(jittered);
                    debug!(key = %msg.key, gateway = name, ?wait, attempts, "throttled; backing off");
                    last = Some(SmsError::Throttled { retry_after });
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                    if attempts < self.cfg.max_attempts {
                        tokio::time::sleep(wait).await;
                    }
                }
                Err(e @ SmsError::Unavailable { .. }) => {
                    slot.breaker
                        .lock()
                        .expect("breaker")
                        .unavailable(name, &self.cfg, now);
                    m.failed.with_label_values(&[name]).inc();
                    if self.slots.len() > 1 {
                        m.fallback.with_label_values(&[name]).inc();
                    }
                    warn!(key = %msg.key, gateway = name, error = %e, "gateway unavailable; trying the next");
                    last = Some(e);
                }
                Err(e @ SmsError::Rejected { .. }) => {
                    slot.breaker.lock().expect("breaker").reachable(name);
                    m.failed.with_label_values(&[name]).inc();
                    warn!(key = %msg.key, gateway = name, error = %e, "SMS rejected; not retrying");
                    return fail(attempts, e);
                }
            }
        }
    }

    /// Close every gateway politely (SMPP unbinds).
    pub async fn close(&self) {
        for s in &self.slots {
            s.gateway.close().await;
        }
    }
}

/// Removes the in-flight entry however the owning send ends, cancellation included.
struct InflightGuard<'a> {
    map: &'a Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
    key: &'a str,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(self.key);
        }
    }
}

/// A gateway's circuit breaker.
#[derive(Debug)]
enum Breaker {
    Closed,
    Open { until: Instant, cooldown: Duration },
    Probing { since: Instant, cooldown: Duration },
}

impl Breaker {
    /// May a message use the gateway now? Past the cooldown, the first caller becomes the
    /// probe and the others keep away until it reports.
    fn try_use(&mut self, now: Instant) -> bool {
        match *self {
            Breaker::Closed => true,
            Breaker::Open { until, cooldown } if now >= until => {
                *self = Breaker::Probing {
                    since: now,
                    cooldown,
                };
                true
            }
            Breaker::Open { .. } => false,
            // A probe whose sender was cancelled never reports; let another one try.
            Breaker::Probing { since, cooldown } if now.duration_since(since) > cooldown * 4 => {
                *self = Breaker::Probing {
                    since: now,
                    cooldown,
                };
                true
            }
            Breaker::Probing { .. } => false,
        }
    }

    fn reopens_at(&self) -> Option<Instant> {
        match self {
            Breaker::Open { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// The gateway answered (accepted, throttled or rejected): it is up.
    fn reachable(&mut self, name: &str) {
        if !matches!(self, Breaker::Closed) {
            info!(gateway = name, "gateway available again");
        }
        *self = Breaker::Closed;
    }

    fn unavailable(&mut self, name: &str, cfg: &DispatchConfig, now: Instant) {
        match *self {
            Breaker::Closed => {
                info!(gateway = name, cooldown = ?cfg.breaker_cooldown, "gateway unavailable; skipping it for the cooldown");
                *self = Breaker::Open {
                    until: now + cfg.breaker_cooldown,
                    cooldown: cfg.breaker_cooldown,
                };
            }
            Breaker::Probing { cooldown, .. } => {
                let cooldown = (cooldown * 2).min(cfg.breaker_cooldown_max);
                info!(
                    gateway = name,
                    ?cooldown,
                    "probe failed; gateway still unavailable"
                );
                *self = Breaker::Open {
                    until: now + cooldown,
                    cooldown,
                };
            }
            // Sends that were already under way when it opened: the first failure set the time.
            Breaker::Open { .. } => {}
        }
    }
}

/// A token bucket that queues: a caller reserves its tokens at once (the balance may go
/// negative) and sleeps until the balance it took would have refilled, so waiters are served
/// in arrival order at exactly the rate.
struct TokenBucket {
    rate: f64,
    burst: f64,
    // tokio's clock, so tests with paused time see the bucket refill.
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl TokenBucket {
    /// `None` for no limit. The burst is a tenth of a second's worth (at least one token): the
    /// limit shapes traffic smoothly instead of letting a whole second's worth out at once.
    fn new(rate_per_s: f64) -> Option<TokenBucket> {
        (rate_per_s > 0.0 && rate_per_s.is_finite()).then(|| {
            let burst = (rate_per_s / 10.0).max(1.0);
            TokenBucket {
                rate: rate_per_s,
                burst,
                state: Mutex::new((burst, tokio::time::Instant::now())),
            }
        })
    }

    async fn acquire(&self, tokens: u32) {
        let wait = {
            let mut s = self.state.lock().expect("bucket");
            let now = tokio::time::Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - tokens as f64;
            s.1 = now;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A gateway that answers from a script, then accepts.
    struct Scripted {
        name: String,
        script: Mutex<Vec<SmsError>>,
        calls: AtomicU32,
        delay: Duration,
    }

    impl Scripted {
        fn new(name: &str, script: Vec<SmsError>) -> Arc<Scripted> {
            Arc::new(Scripted {
                name: name.into(),
                script: Mutex::new(script),
                calls: AtomicU32::new(0),
                delay: Duration::ZERO,
            })
        }
    }

    #[async_trait::async_trait]
    impl SmsGateway for Scripted {
        fn name(&self) -> &str {
            &self.name
        }
        async fn send(&self, _msg: &SmsMessage) -> Result<SendReceipt, SmsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let next = {
                let mut s = self.script.lock().unwrap();
                (!s.is_empty()).then(|| s.remove(0))
            };
            match next {
                Some(e) => Err(e),
                None => Ok(SendReceipt {
                    gateway: self.name.clone(),
                    message_ids: vec!["1".into()],
                    parts: 1,
                }),
            }
        }
    }

    fn msg(key: &str) -> SmsMessage {
        SmsMessage {
            key: key.into(),
            phone: "13800000000".into(),
            text: "测试".into(),
        }
    }

    fn fast() -> DispatchConfig {
        DispatchConfig {
            max_attempts: 5,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            breaker_cooldown: Duration::from_secs(3600),
            breaker_cooldown_max: Duration::from_secs(3600),
        }
    }

    fn route(g: Arc<Scripted>) -> Route {
        Route {
            gateway: g,
            rate_per_s: 0.0,
        }
    }

    const THROTTLED: SmsError = SmsError::Throttled { retry_after: None };

    fn down() -> SmsError {
        SmsError::Unavailable {
            reason: "down".into(),
        }
    }

    #[tokio::test]
    async fn throttling_is_retried_on_the_same_gateway() {
        let a = Scripted::new("a", vec![THROTTLED, THROTTLED]);
        let b = Scripted::new("b", vec![]);
        let d = Dispatcher::new(vec![route(a.clone()), route(b.clone())], fast());
        let r = d.send(&msg("k")).await.unwrap();
        assert_eq!(r.gateway, "a");
        assert_eq!(a.calls.load(Ordering::SeqCst), 3);
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn attempts_are_capped() {
        let a = Scripted::new("a", vec![THROTTLED; 10]);
        let d = Dispatcher::new(vec![route(a.clone())], fast());
        let e = d.send(&msg("k")).await.unwrap_err();
        assert_eq!(e.attempts, 5);
        assert_eq!(e.last, THROTTLED);
        assert!(!e.is_permanent());
        assert_eq!(a.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn unavailable_falls_back_and_the_breaker_keeps_traffic_away() {
        let a = Scripted::new("a", vec![down()]);
        let b = Scripted::new("b", vec![]);
        let d = Dispatcher::new(vec![route(a.clone()), route(b.clone())], fast());
        assert_eq!(d.send(&msg("1")).await.unwrap().gateway, "b");
        assert_eq!(d.send(&msg("2")).await.unwrap().gateway, "b");
        assert_eq!(
            a.calls.load(Ordering::SeqCst),
            1,
            "open breaker: a is skipped"
        );
    }

    #[tokio::test]
    async fn the_primary_gets_traffic_back_after_the_cooldown() {
        let a = Scripted::new("a", vec![down(), down()]);
        let b = Scripted::new("b", vec![]);
        let mut cfg = fast();
        cfg.breaker_cooldown = Duration::from_millis(20);
        cfg.breaker_cooldown_max = Duration::from_millis(40);
        let d = Dispatcher::new(vec![route(a.clone()), route(b.clone())], cfg);
        assert_eq!(d.send(&msg("1")).await.unwrap().gateway, "b");
        tokio::time::sleep(Duration::from_millis(30)).await;
        // The probe fails (second scripted error) and doubles the cooldown.
        assert_eq!(d.send(&msg("2")).await.unwrap().gateway, "b");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(d.send(&msg("3")).await.unwrap().gateway, "a");
        assert_eq!(d.send(&msg("4")).await.unwrap().gateway, "a");
    }

    #[tokio::test]
    async fn rejection_is_final() {
        let a = Scripted::new(
            "a",
            vec![SmsError::Rejected {
                reason: "bad number".into(),
            }],
        );
        let b = Scripted::new("b", vec![]);
        let d = Dispatcher::new(vec![route(a.clone()), route(b.clone())], fast());
        let e = d.send(&msg("k")).await.unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.attempts, 1);
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn all_down_gives_up_after_the_attempts() {
        let a = Scripted::new("a", vec![down(); 10]);
        let d = Dispatcher::new(vec![route(a.clone())], fast());
        let e = d.send(&msg("k")).await.unwrap_err();
        assert!(matches!(e.last, SmsError::Unavailable { .. }));
        assert_eq!(e.attempts, 5);
    }

    #[tokio::test]
    async fn one_key_is_never_in_flight_twice() {
        let a = Arc::new(Scripted {
            name: "a".into(),
            script: Mutex::new(vec![]),
            calls: AtomicU32::new(0),
            delay: Duration::from_millis(50),
        });
        let d = Arc::new(Dispatcher::new(vec![route(a.clone())], fast()));
        let sends: Vec<_> = (0..8)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { d.send(&msg("same")).await })
            })
            .collect();
        for s in sends {
            assert!(s.await.unwrap().is_ok());
        }
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
        // Once finished, the key may be sent again (durable dedup is the outbox's job).
        d.send(&msg("same")).await.unwrap();
        assert_eq!(a.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cancelled_send_frees_its_key() {
        let a = Arc::new(Scripted {
            name: "a".into(),
            script: Mutex::new(vec![]),
            calls: AtomicU32::new(0),
            delay: Duration::from_millis(200),
        });
        let d = Dispatcher::new(vec![route(a.clone())], fast());
        let first = tokio::time::timeout(Duration::from_millis(10), d.send(&msg("k"))).await;
        assert!(first.is_err());
        assert!(d.inflight.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_spaces_tokens_at_the_rate() {
        let b = TokenBucket::new(10.0).unwrap();
        let t0 = tokio::time::Instant::now();
        for _ in 0..21 {
            b.acquire(1).await;
        }
        // One token of burst, then 20 more at 10/s: 2 s of virtual time (the clock is paused
        // and only moves by the bucket's own sleeps, so this is exact on any machine).
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(1990), "{took:?}");
        assert!(took <= Duration::from_millis(2100), "{took:?}");
    }
}
