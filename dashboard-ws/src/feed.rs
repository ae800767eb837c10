//! The wall's change feed: every change to the wall's view gets a sequence number, goes to
//! every connected client through a bounded broadcast queue, and is kept in a bounded ring
//! so a client that reconnects can be sent what it missed instead of a whole snapshot.
//!
//! The feed lives under the same lock as [`WallState`]: a snapshot or a resume taken under
//! that lock is exactly the state before the changes its subscriber receives next.

use crate::state::{Change, PendingDelta, WallState};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;

/// One change with its sequence number.
pub type Numbered = (u64, Arc<Change>);

/// Sequence numbers, the broadcast queue and the ring of recent changes.
pub struct Feed {
    /// Names this server's run: sequence numbers of another run mean nothing here.
    epoch: String,
    /// The sequence number of the newest change (0: none yet).
    seq: u64,
    ring: VecDeque<Numbered>,
    ring_len: usize,
    tx: broadcast::Sender<Numbered>,
}

/// How a reconnecting client is brought up to date.
pub enum Resume {
    /// Everything it missed, as one delta's worth of changes.
    Missed(Box<PendingDelta>),
    /// Too much was missed, or it knew another run: it needs a snapshot.
    Snapshot,
}

impl Feed {
    /// A feed whose clients may fall `queue` changes behind before they are re-synchronised,
    /// and that can replay the last `ring_len` changes to a reconnecting client.
    pub fn new(queue: usize, ring_len: usize) -> Feed {
        let (tx, _) = broadcast::channel(queue.max(1));
        let epoch = format!("{:016x}", rand::random::<u64>());
        Feed {
            epoch,
            seq: 0,
            ring: VecDeque::with_capacity(ring_len.min(65_536)),
            ring_len,
            tx,
        }
    }

    /// This run's name.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The newest change's number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Number, keep and broadcast one change. Never waits: a client that cannot keep up
    /// lags in its own queue and is re-synchronised later.
    pub fn publish(&mut self, change: Change) {
        self.seq += 1;
        let numbered = (self.seq, Arc::new(change));
        if self.ring_len > 0 {
            if self.ring.len() == self.ring_len {
                self.ring.pop_front();
            }
            self.ring.push_back(numbered.clone());
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(numbered);
    }

    /// A receiver that starts after the newest change.
    pub fn subscribe(&self) -> broadcast::Receiver<Numbered> {
        self.tx.subscribe()
    }

    /// What a client that last applied change `since` of run `epoch` needs.
    pub fn resume(&self, epoch: &str, since: u64) -> Resume {
        if epoch != self.epoch || since > self.seq {
            return Resume::Snapshot;
        }
        // The ring must still hold the change right after `since` (or nothing was missed).
        let oldest = self.ring.front().map(|(s, _)| *s).unwrap_or(self.seq + 1);
        if since < self.seq && since + 1 < oldest {
            return Resume::Snapshot;
        }
        let mut missed = PendingDelta::default();
        for (s, c) in self.ring.iter().filter(|(s, _)| *s > since) {
            missed.add(*s, c);
        }
        Resume::Missed(Box::new(missed))
    }
}

/// The wall's view and its feed, behind one lock.
pub struct Wall {
    /// The folded view.
    pub state: WallState,
    /// The change feed.
    pub feed: Feed,
}

impl Wall {
    /// Apply a fold and publish its changes.
    pub fn apply(&mut self, f: impl FnOnce(&mut WallState) -> Vec<Change>) {
        for c in f(&mut self.state) {
            self.feed.publish(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Counters;

    fn counters(n: u64) -> Change {
        Change::Counters(Counters {
            rejects: n,
            ..Counters::default()
        })
    }

    #[test]
    fn a_reconnecting_client_gets_what_it_missed_while_the_ring_holds_it() {
        let mut f = Feed::new(16, 4);
        let epoch = f.epoch().to_string();
        for n in 1..=3 {
            f.publish(counters(n));
        }
        match f.resume(&epoch, 1) {
            Resume::Missed(d) => {
                assert_eq!(d.last_seq(), Some(3));
                assert!(!d.is_empty());
            }
            Resume::Snapshot => panic!("changes 2 and 3 are in the ring"),
        }
        match f.resume(&epoch, 3) {
            Resume::Missed(d) => assert!(d.is_empty(), "nothing missed"),
            Resume::Snapshot => panic!("up to date"),
        }
        for n in 4..=9 {
            f.publish(counters(n));
        }
        // The ring holds 6..=9: change 2 is gone.
        assert!(matches!(f.resume(&epoch, 1), Resume::Snapshot));
        assert!(matches!(f.resume(&epoch, 5), Resume::Missed(_)));
        assert!(matches!(f.resume("another-run", 9), Resume::Snapshot));
        assert!(matches!(f.resume(&epoch, 99), Resume::Snapshot));
    }
}
