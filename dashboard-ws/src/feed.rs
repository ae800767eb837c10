//! The wall's change feed: every change to the wall's view gets a sequence number and is
//! gathered into one pending delta; every 100 ms the delta is cut, encoded once, and the same
//! text goes to every connected client through a bounded broadcast queue of deltas. A storm
//! changes thousands of points a second and a wall may have a thousand clients: per-client
//! gathering and encoding was what the wall spent its time on (and what made clients fall
//! behind), so all of it happens once per tick here.
//!
//! Clients join only at a cut: a client that connects, reconnects or falls behind waits for
//! the next tick, and gets its snapshot (or the changes it missed, from the ring of recent
//! changes) taken at exactly that cut, with a receiver that starts at the next delta. That is
//! what makes a shared delta right for every client: each holds the state as of the last cut,
//! so patches of the fields that changed since are all any of them needs. Snapshots for the
//! clients joining at one tick are built once per kind of session (phones masked or not).
//!
//! The feed lives under the same lock as [`WallState`], and cuts happen under it.

use crate::auth::Session;
use crate::state::{Change, PendingDelta, SentViews, SnapshotParts, WallState};
use floodcmd_model::time::Millis;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{broadcast, oneshot};

/// One change with its sequence number.
pub type Numbered = (u64, Arc<Change>);

/// One tick's delta, encoded once for every client.
#[derive(Debug)]
pub struct Frame {
    /// The number of the newest change it holds.
    pub seq: u64,
    /// The message.
    pub text: String,
}

/// What a client waits for at the next cut.
pub enum Want {
    /// A snapshot built for the session.
    Snapshot(Session),
    /// What it missed since change `since` of run `epoch`, or a snapshot when that is gone.
    Resume {
        /// Its session (for the snapshot, if it comes to that).
        session: Session,
        /// The run it knew.
        epoch: String,
        /// The last change it applied.
        since: u64,
    },
}

/// A client's start: its first messages, and the deltas after them.
pub struct Joined {
    /// The snapshot's first message, or the resumed delta.
    pub first: String,
    /// The snapshot's further parts, shared by the clients joining at the same cut.
    pub rest: Arc<[String]>,
    /// Every delta after `first` and `rest`.
    pub frames: broadcast::Receiver<Arc<Frame>>,
}

struct Joiner {
    want: Want,
    reply: oneshot::Sender<Joined>,
}

/// Sequence numbers, the pending delta, the broadcast queue of deltas, the ring of recent
/// changes and the clients waiting to join.
pub struct Feed {
    /// Names this server's run: sequence numbers of another run mean nothing here.
    epoch: String,
    /// The sequence number of the newest change (0: none yet).
    seq: u64,
    ring: VecDeque<Numbered>,
    ring_len: usize,
    /// Changes since the last cut.
    pending: PendingDelta,
    /// What every client holds of each point as of the last cut.
    sent: SentViews,
    frames: broadcast::Sender<Arc<Frame>>,
    joiners: Vec<Joiner>,
}

/// How a reconnecting client is brought up to date.
pub enum Resume {
    /// Everything it missed, as one delta's worth of changes.
    Missed(Box<PendingDelta>),
    /// Too much was missed, or it knew another run: it needs a snapshot.
    Snapshot,
}

impl Feed {
    /// A feed whose clients may fall `queue` deltas behind before they are re-synchronised,
    /// that can replay the last `ring_len` changes to a reconnecting client, and whose
    /// clients start from `sent` (the points every snapshot shows).
    pub fn new(queue: usize, ring_len: usize, sent: SentViews) -> Feed {
        let (frames, _) = broadcast::channel(queue.max(1));
        let epoch = format!("{:016x}", rand::random::<u64>());
        Feed {
            epoch,
            seq: 0,
            ring: VecDeque::with_capacity(ring_len.min(65_536)),
            ring_len,
            pending: PendingDelta::default(),
            sent,
            frames,
            joiners: Vec::new(),
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

    /// Number, keep and gather one change for the next cut. Never waits on a client.
    pub fn publish(&mut self, change: Change) {
        self.seq += 1;
        self.pending.add(self.seq, &change);
        if self.ring_len > 0 {
            if self.ring.len() == self.ring_len {
                self.ring.pop_front();
            }
            self.ring.push_back((self.seq, Arc::new(change)));
        }
    }

    /// Cut the pending changes into one delta stamped `now_ms` and send it to every client
    /// (none listening is fine). Never waits: a client that cannot keep up lags in its own
    /// place in the queue and is re-synchronised later.
    fn cut(&mut self, now_ms: Millis) {
        if let Some(mut msg) = self.pending.take_shared(&mut self.sent) {
            msg["now_ms"] = now_ms.into();
            let frame = Frame {
                seq: self.seq,
                text: msg.to_string(),
            };
            let _ = self.frames.send(Arc::new(frame));
        }
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

/// Points per snapshot message: some 175 KB each.
pub const SNAPSHOT_PART_POINTS: usize = 500;

/// The wall's view and its feed, behind one lock.
pub struct Wall {
    /// The folded view.
    pub state: WallState,
    /// The change feed.
    pub feed: Feed,
    /// Points per snapshot message ([`SNAPSHOT_PART_POINTS`]).
    pub part_points: usize,
}

impl Wall {
    /// A wall over `state`, whose clients may fall `queue` deltas behind and can resume from
    /// the last `ring_len` changes.
    pub fn new(state: WallState, queue: usize, ring_len: usize) -> Wall {
        let sent = SentViews::seeded(state.points().iter());
        Wall {
            state,
            feed: Feed::new(queue, ring_len, sent),
            part_points: SNAPSHOT_PART_POINTS,
        }
    }

    /// Apply a fold and publish its changes.
    pub fn apply(&mut self, f: impl FnOnce(&mut WallState) -> Vec<Change>) {
        for c in f(&mut self.state) {
            self.feed.publish(c);
        }
    }

    /// Let go of every client waiting to join (the wall is stopping).
    pub fn drop_joiners(&mut self) {
        self.feed.joiners.clear();
    }

    /// Ask to join at the next cut.
    pub fn join(&mut self, want: Want) -> oneshot::Receiver<Joined> {
        let (reply, rx) = oneshot::channel();
        self.feed.joiners.push(Joiner { want, reply });
        rx
    }

    /// The tick: cut the pending delta and send it, then start every client waiting to join
    /// from exactly this cut. Returns how many joined with a resume and with a snapshot.
    pub fn tick(&mut self, now_ms: Millis) -> (usize, usize) {
        self.feed.cut(now_ms);
        let joiners = std::mem::take(&mut self.feed.joiners);
        let (mut resumed, mut snapshots) = (0, 0);
        // One body per kind of session: viewers' phones masked, commanders' not.
        let mut bodies: [Option<SnapshotParts>; 2] = [None, None];
        for j in joiners {
            let session = match j.want {
                Want::Resume {
                    session,
                    epoch,
                    since,
                } => match self.feed.resume(&epoch, since) {
                    Resume::Missed(mut missed) => {
                        let mut msg = missed.take(self.feed.seq, true);
                        msg["now_ms"] = now_ms.into();
                        resumed += 1;
                        let _ = j.reply.send(Joined {
                            first: msg.to_string(),
                            rest: Arc::from([]),
                            frames: self.feed.frames.subscribe(),
                        });
                        continue;
                    }
                    Resume::Snapshot => session,
                },
                Want::Snapshot(session) => session,
            };
            let phones = session.sees_phones();
            let snap = bodies[usize::from(phones)].get_or_insert_with(|| {
                self.state
                    .snapshot_parts(self.feed.seq, &self.feed.epoch, phones, self.part_points)
            });
            snapshots += 1;
            // The session's own fields, then the shared body without its opening brace.
            let first = format!(
                r#"{{"type":"snapshot","now_ms":{now_ms},"session":{},"can_act":{},{}"#,
                serde_json::to_string(&session).expect("a session is plain data"),
                session.can_act(),
                &snap.body[1..],
            );
            let _ = j.reply.send(Joined {
                first,
                rest: snap.rest.clone(),
                frames: self.feed.frames.subscribe(),
            });
        }
        (resumed, snapshots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Counters;
    use crate::state::WallState;

    fn counters(n: u64) -> Change {
        Change::Counters(Counters {
            rejects: n,
            ..Counters::default()
        })
    }

    #[test]
    fn a_reconnecting_client_gets_what_it_missed_while_the_ring_holds_it() {
        let mut f = Feed::new(16, 4, SentViews::default());
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

    fn depth(v: &serde_json::Value, point: &str) -> Option<f64> {
        v["points"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(v["patches"].as_array().into_iter().flatten())
            .find(|p| p["id"] == point)
            .and_then(|p| p["depth_cm"].as_f64())
    }

    /// A client joins at a cut: its snapshot is the state at that cut, taken once for every
    /// client of a kind of session joining then, and the first delta it receives is the next
    /// one, whose patches are against exactly that state (a depth that goes back to what the
    /// last delta said is still sent).
    #[tokio::test]
    async fn clients_join_at_a_cut_and_the_next_shared_delta_continues_their_snapshot() {
        let d = std::sync::Arc::new(
            floodcmd_model::District::from_toml_str(include_str!("../../config/xincheng.toml"))
                .unwrap(),
        );
        let id = d.points[0].id.clone();
        let status = |depth: f64| floodcmd_model::event::PointStatus {
            point: id.clone(),
            kind: d.points[0].kind,
            level: floodcmd_model::Level::Normal,
            data_state: floodcmd_model::DataState::Fresh,
            depth_cm: Some(depth),
            rise_cm_per_min: None,
            rain_10m_mm: None,
            rain_1h_mm: None,
            rain_3h_mm: None,
            rain_24h_mm: None,
            last_reading_ms: Some(1),
            qc_flags: Vec::new(),
            next_level: None,
            minutes_to_next: None,
            flapping: false,
            as_of_ms: 1,
        };
        let mut wall = Wall::new(WallState::new(d.clone()), 8, 64);
        // 74 points: a snapshot of three messages.
        wall.part_points = 30;
        let mut early = wall.feed.frames.subscribe();
        wall.apply(|s| s.on_status(status(5.0)));
        wall.tick(100);
        let first: serde_json::Value =
            serde_json::from_str(&early.try_recv().unwrap().text).unwrap();
        assert_eq!(depth(&first, &id), Some(5.0));

        // Between two cuts the depth goes to 6 and two clients ask to join.
        wall.apply(|s| s.on_status(status(6.0)));
        let mut a = wall.join(Want::Snapshot(Session::anonymous()));
        let mut b = wall.join(Want::Snapshot(Session::anonymous()));
        assert!(a.try_recv().is_err(), "nobody starts between cuts");
        assert_eq!(wall.tick(200), (0, 2));
        let mut a = a.try_recv().unwrap();
        let b = b.try_recv().unwrap();
        let msgs: Vec<serde_json::Value> = std::iter::once(&a.first)
            .chain(a.rest.iter())
            .map(|m| serde_json::from_str(m).unwrap())
            .collect();
        let snap = &msgs[0];
        assert_eq!(snap["type"], "snapshot");
        assert_eq!(snap["seq"], wall.feed.seq());
        assert_eq!(snap["now_ms"], 200);
        assert_eq!(snap["can_act"], false);
        assert_eq!(snap["parts"], 3);
        assert_eq!(msgs.len(), 3);
        for (i, part) in msgs.iter().enumerate().skip(1) {
            assert_eq!(part["type"], "snapshot_part");
            assert_eq!((&part["seq"], &part["part"]), (&snap["seq"], &i.into()));
        }
        let mut ids: Vec<&str> = msgs
            .iter()
            .flat_map(|m| m["points"].as_array().unwrap())
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), d.points.len(), "every point once over the parts");
        let point = msgs
            .iter()
            .flat_map(|m| m["points"].as_array().unwrap())
            .find(|p| p["id"] == id.as_str());
        assert_eq!(point.unwrap()["depth_cm"], 6.0);
        let snap = snap.clone();
        assert_eq!(
            a.first, b.first,
            "one snapshot for every viewer joining at this cut"
        );
        assert!(
            Arc::ptr_eq(&a.rest, &b.rest),
            "its parts shared, not copied"
        );
        assert!(
            a.frames.try_recv().is_err(),
            "the cut's own delta is in the snapshot"
        );
        let cut: serde_json::Value = serde_json::from_str(&early.try_recv().unwrap().text).unwrap();
        assert_eq!(depth(&cut, &id), Some(6.0));

        // Back to 5: the next delta says so to both the early client and the joined one.
        wall.apply(|s| s.on_status(status(5.0)));
        wall.tick(300);
        let next = a.frames.try_recv().unwrap();
        let v: serde_json::Value = serde_json::from_str(&next.text).unwrap();
        assert_eq!(depth(&v, &id), Some(5.0));
        assert!(v["seq"].as_u64().unwrap() > snap["seq"].as_u64().unwrap());
        assert_eq!(
            early.try_recv().unwrap().text,
            next.text,
            "the same delta for everyone"
        );

        // A resume from the snapshot's number, after one more change: the missed change, whole.
        wall.apply(|s| s.on_status(status(7.0)));
        let mut r = wall.join(Want::Resume {
            session: Session::anonymous(),
            epoch: wall.feed.epoch().to_string(),
            since: snap["seq"].as_u64().unwrap(),
        });
        assert_eq!(wall.tick(400), (1, 0));
        let r: serde_json::Value = serde_json::from_str(&r.try_recv().unwrap().first).unwrap();
        assert_eq!(r["resumed"], true);
        assert_eq!(depth(&r, &id), Some(7.0));
        assert_eq!(r["seq"], wall.feed.seq());
    }
}
