//! The SMSC simulator (scripts/smsc.sh) as the tests see it: its SMPP address from
//! `FLOODCMD_SMSC` and its HTTP control port one above. Every test binds with its own
//! system_id and scopes every control call to it, so tests run side by side.

#![allow(dead_code)]

use serde::Deserialize;
use std::time::Duration;

/// One `submit_sm` as the simulator recorded it.
#[derive(Deserialize, Debug, Clone)]
pub struct Received {
    pub system_id: String,
    pub destination: String,
    pub data_coding: u8,
    pub esm_class: u8,
    pub text: String,
    pub udh_ref: Option<u32>,
    pub udh_total: Option<u32>,
    pub udh_part: Option<u32>,
    pub command_status: u32,
    pub message_id: Option<String>,
}

pub struct Smsc {
    pub addr: String,
    control: String,
    pub system_id: String,
    http: reqwest::Client,
}

impl Smsc {
    /// The simulator, with a fresh system_id starting with `tag` (at most 8 characters).
    pub async fn new(tag: &str) -> Smsc {
        let addr = std::env::var("FLOODCMD_SMSC").unwrap_or_else(|_| {
            panic!(
                "FLOODCMD_SMSC is not set. These tests need the SMSC simulator: run \
                 `scripts/smsc.sh start` and `export FLOODCMD_SMSC=127.0.0.1:12775` \
                 (scripts/test.sh does both)"
            )
        });
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .unwrap_or_else(|| panic!("FLOODCMD_SMSC={addr} is not host:port"));
        let smsc = Smsc {
            control: format!("http://{host}:{}", port + 1),
            addr,
            system_id: format!("{tag}{:06x}", rand::random::<u32>() & 0xff_ffff),
            http: reqwest::Client::new(),
        };
        let health = smsc
            .http
            .get(format!("{}/health", smsc.control))
            .send()
            .await;
        assert!(
            health.is_ok_and(|r| r.status().is_success()),
            "the SMSC simulator's control port {} does not answer (FLOODCMD_SMSC={})",
            smsc.control,
            smsc.addr
        );
        smsc
    }

    async fn post(&self, path: &str, extra: &str) {
        let url = format!(
            "{}/{path}?system_id={}{extra}",
            self.control, self.system_id
        );
        let r = self.http.post(&url).send().await.expect("control port");
        assert!(r.status().is_success(), "POST {url}: {}", r.status());
    }

    /// Answer this system_id's next `n` submits with ESME_RTHROTTLED.
    pub async fn throttle(&self, n: u32) {
        self.post("throttle", &format!("&n={n}")).await;
    }

    /// Refuse this system_id's binds and close its sessions.
    pub async fn down(&self) {
        self.post("down", "").await;
    }

    /// Accept this system_id's binds again.
    pub async fn up(&self) {
        self.post("up", "").await;
    }

    /// Forget this system_id's messages and knobs.
    pub async fn reset(&self) {
        self.post("reset", "").await;
    }

    /// Every submit_sm of this system_id, oldest first.
    pub async fn messages(&self) -> Vec<Received> {
        self.http
            .get(format!(
                "{}/messages?system_id={}",
                self.control, self.system_id
            ))
            .send()
            .await
            .expect("control port")
            .json()
            .await
            .expect("JSON list")
    }

    /// The accepted ones only.
    pub async fn accepted(&self) -> Vec<Received> {
        self.messages()
            .await
            .into_iter()
            .filter(|m| m.command_status == 0)
            .collect()
    }
}

/// Poll `check` every 50 ms until it returns Some, at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A counter's value for one gateway from the process's default registry.
pub fn counter(name: &str, gateway: &str) -> f64 {
    prometheus::default_registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "gateway" && l.value() == gateway)
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}
