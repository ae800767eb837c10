//! A per-key rate limit: at most `limit` hits per key in each fixed window, on any
//! [`Clock`]. The ingest gateway limits each device with it, the command wall each client
//! address, user name and login. A fixed window is crude at its edges (up to twice the limit
//! across a boundary) but needs one counter per key, which is what a limit facing a flood
//! can afford.

use crate::time::{Clock, Millis};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Keys held at most. Beyond it, expired windows are dropped (at most once a window, so a
/// flood of new keys does not scan the map on every request), and a new key that still finds
/// no room is let through untracked: refusing it would let anyone with many addresses or
/// names lock every operator out, and the map must not grow without bound either.
const MAX_KEYS: usize = 100_000;

/// At most `limit` hits per key per window.
pub struct RateLimiter {
    limit: u32,
    window_ms: Millis,
    clock: Arc<dyn Clock>,
    hits: Mutex<Hits>,
    /// Hits let through untracked because the map was full.
    untracked: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Hits {
    by_key: HashMap<String, (Millis, u32)>,
    last_prune_ms: Option<Millis>,
}

impl RateLimiter {
    /// `limit` hits per minute on `clock`; 0 means no limit.
    pub fn per_minute(limit: u32, clock: Arc<dyn Clock>) -> RateLimiter {
        RateLimiter {
            limit,
            window_ms: 60_000,
            clock,
            hits: Mutex::new(Hits::default()),
            untracked: Default::default(),
        }
    }

    /// Hits let through without a count because every slot was taken by a live window.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Would one more hit for `key` be over the limit? `Err` holds the whole seconds until
    /// the window ends (for `Retry-After`). Takes nothing.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.judge(key, false)
    }

    /// Take one hit for `key`; `Err` (seconds to wait) when the window is used up, and then
    /// nothing is taken.
    pub fn hit(&self, key: &str) -> Result<(), u64> {
        self.judge(key, true)
    }

    fn judge(&self, key: &str, take: bool) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let window = self.window_ms;
        let mut hits = self.hits.lock().expect("rate limiter lock");
        let Hits {
            by_key,
            last_prune_ms,
        } = &mut *hits;
        if !by_key.contains_key(key) {
            if !take {
                // Nothing counted yet for this key: a check takes no slot.
                return Ok(());
            }
            if by_key.len() >= MAX_KEYS && last_prune_ms.is_none_or(|p| now - p >= window) {
                by_key.retain(|_, (start, _)| now - *start < window);
                *last_prune_ms = Some(now);
            }
            if by_key.len() >= MAX_KEYS {
                self.untracked
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
        }
        let entry = by_key.entry(key.to_string()).or_insert((now, 0));
        if now - entry.0 >= window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let left_ms = (entry.0 + window - now).max(0);
            return Err(((left_ms + 999) / 1000).max(1) as u64);
        }
        if take {
            entry.1 += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    #[test]
    fn a_limiter_refuses_past_its_limit_per_key_until_the_window_ends() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let l = RateLimiter::per_minute(2, clock.clone());
        assert!(l.check("a").is_ok());
        assert!(l.hit("a").is_ok());
        assert!(l.hit("a").is_ok());
        assert_eq!(l.hit("a"), Err(60));
        assert_eq!(
            l.check("a"),
            Err(60),
            "a check takes nothing and is refused too"
        );
        assert!(l.hit("b").is_ok(), "another key has its own window");
        clock.advance(59_500);
        assert_eq!(l.hit("a"), Err(1));
        clock.advance(500);
        assert!(l.hit("a").is_ok(), "a new window");
        let open = RateLimiter::per_minute(0, clock);
        for _ in 0..1000 {
            assert!(open.hit("a").is_ok());
        }
    }

    /// Many keys cannot lock anyone out: past the map's size a new key goes through untracked,
    /// a key already tracked is still limited, and a check takes no slot.
    #[test]
    fn a_full_limiter_lets_new_keys_through_and_still_limits_old_ones() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let l = RateLimiter::per_minute(1, clock.clone());
        assert!(l.hit("old").is_ok());
        for i in 0..MAX_KEYS {
            let _ = l.hit(&format!("k{i}"));
        }
        assert!(l.hit("fresh").is_ok());
        assert!(l.hit("fresh").is_ok(), "untracked: never refused");
        assert!(l.untracked() >= 2);
        assert_eq!(l.hit("old"), Err(60), "a tracked key keeps its limit");
        assert!(l.check("never-seen").is_ok());
        clock.advance(60_000);
        assert!(l.hit("fresh").is_ok());
        assert_eq!(
            l.hit("fresh"),
            Err(60),
            "after the window, room again: tracked"
        );
    }
}
