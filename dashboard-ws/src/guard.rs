//! What stands between the internet and the wall's sessions: rate limits on logins and
//! actions, the websocket's Origin check, and the counter of everything refused.
//!
//! Password guessing is the attack a login endpoint meets first, so logins are limited per
//! client address (every attempt) and per user name (failed attempts only, so guesses spread
//! over many addresses still stop). Actions are limited per login, so a stolen or scripted
//! commander token cannot flood the `actions` topic. A refused request gets 429 with
//! `Retry-After` and is counted in `floodcmd_dashboard_refused_total{what,reason}`; the
//! limiter itself is [`floodcmd_model::limit::RateLimiter`].
//!
//! The Origin check stops cross-site websocket hijacking: a page on another site cannot open
//! the wall's websocket in a logged-in operator's browser. Clients that send no Origin
//! (scripts, not browsers) are let through: Origin protects browsers, a script can send any.

use prometheus::{IntCounterVec, Opts};
use std::sync::OnceLock;

/// Refused requests, by what was refused and why.
pub fn refused() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        let m = IntCounterVec::new(
            Opts::new(
                "floodcmd_dashboard_refused_total",
                "Requests the wall refused, by what (login, action, ws) and reason",
            ),
            &["what", "reason"],
        )
        .expect("metric");
        let _ = prometheus::default_registry().register(Box::new(m.clone()));
        m
    })
}

/// Count one refusal.
pub fn count(what: &str, reason: &str) {
    refused().with_label_values(&[what, reason]).inc();
}

/// Which browser origins may open the websocket.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    /// Allowed origins as browsers send them (`https://wall.example.org`, no trailing
    /// slash); empty: only the wall's own host (the `Host` the request came to).
    pub allowed: Vec<String>,
}

impl Origins {
    /// May a websocket request with this `Origin` and `Host` be accepted?
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            // Not a browser: Origin protects browsers' sessions, a script can forge it.
            return true;
        };
        let origin = origin.trim().trim_end_matches('/');
        if !self.allowed.is_empty() {
            return self
                .allowed
                .iter()
                .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin));
        }
        // Same host: the origin's authority (after the scheme) is the Host the browser
        // connected to. `null` (sandboxed frames, file://) never matches.
        let Some((_, authority)) = origin.split_once("://") else {
            return false;
        };
        host.is_some_and(|h| h.trim().eq_ignore_ascii_case(authority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_default_to_the_walls_own_host() {
        let same = Origins::default();
        assert!(same.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(same.allows(Some("https://wall.example.org"), Some("wall.example.org")));
        assert!(!same.allows(Some("http://evil.example"), Some("127.0.0.1:8080")));
        assert!(!same.allows(Some("null"), Some("127.0.0.1:8080")));
        assert!(!same.allows(Some("http://127.0.0.1:8080"), None));
        assert!(same.allows(None, Some("127.0.0.1:8080")), "not a browser");
        let listed = Origins {
            allowed: vec!["https://wall.example.org/".into()],
        };
        assert!(listed.allows(Some("https://wall.example.org"), Some("10.0.0.5:8080")));
        assert!(!listed.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
    }
}
