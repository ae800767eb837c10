//! The wall's change feed: every change to the wall's view gets a sequence number and is
//! gathered into one pending delta; every 100 ms the delta is cut, encoded once, and the same
//! message goes to every connected client through a bounded broadcast queue of deltas. A storm
//! changes thousands of points a second and a wall may have a thousand clients: per-client
//! gathering and encoding was what the wall spent its time on (and what made clients fall
//! behind), so all of it happens once per tick here.
//!
//! Clients join only at a cut: a client that connects, reconnects or falls behind waits for
//! the next tick, and gets its snapshot (or the changes it missed, from the ring of recent
//! changes) taken at exactly that cut, with a receiver that starts at the next delta. That is
//! what makes a shared delta right for every client: each holds the state as of the last cut,
//! so patches of the fields that changed since (and rows of the live depths that moved) are
//! all any of them needs. Snapshots for the
//! clients joining at one tick are built once per kind of session (phones masked or not).
//!
//! The feed lives under the same lock as [`WallState`], and cuts and joins happen under it;
//! encoding a cut happens outside it, in the one ticker ([`DeltaEncoder`]), so the bus
//! followers folding a storm into the view wait only for the cut itself.

use crate::auth::Session;
use crate::state::{Change, PendingDelta, SentViews, SnapshotParts, WallState};
use floodcmd_model::time::Millis;
use floodcmd_ws_frames::OutFrame;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{broadcast, oneshot};

/// One change with its sequence number.
pub type Numbered = (u64, Arc<Change>);

/// One tick's delta, encoded once for every client.
#[derive(Debug)]
pub struct Frame {
    /// The number of the newest change it holds: a client that joined at this cut or later
    /// already has it, and skips it.
    pub seq: u64,
    /// The message, built once: its payload is shared, so each client's copy costs a
    /// reference count, not a copy of the text.
    pub message: OutFrame,
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
    /// The cut it starts at: frames up to this number are in `first` already.
    pub seq: u64,
    /// The snapshot's first message, or the resumed delta; a snapshot's is shared by the
    /// clients of the same session joining at the same cut (all anonymous viewers, say), so
    /// it is compressed once for them.
    pub first: OutFrame,
    /// The snapshot's further parts, shared by the clients joining at the same cut.
    pub rest: Arc<[OutFrame]>,
    /// The deltas from this cut's on (skip those numbered `seq` or below).
    pub frames: broadcast::Receiver<Arc<Frame>>,
}

struct Joiner {
    want: Want,
    reply: oneshot::Sender<Joined>,
}

/// Sequence numbers, the pending delta, the ring of recent changes and the clients waiting
/// to join.
pub struct Feed {
    /// Names this server's run: sequence numbers of another run mean nothing here.
    epoch: String,
    /// The sequence number of the newest change (0: none yet).
    seq: u64,
    ring: VecDeque<Numbered>,
    ring_len: usize,
    /// Changes since the last cut.
    pending: PendingDelta,
    /// For subscribing joiners; the [`DeltaEncoder`] sends.
    frames: broadcast::Sender<Arc<Frame>>,
    joiners: Vec<Joiner>,
    /// No more cuts will come: joining fails at once.
    closed: bool,
}

/// How a reconnecting client is brought up to date.
pub enum Resume {
    /// Everything it missed, as one delta's worth of changes.
    Missed(Box<PendingDelta>),
    /// Too much was missed, or it knew another run: it needs a snapshot.
    Snapshot,
}

impl Feed {
    /// A feed whose clients may fall `queue` deltas behind before they are re-synchronised
    /// (tokio rounds it up to a power of two), and that can replay the last `ring_len`
    /// changes to a reconnecting client.
    pub fn new(queue: usize, ring_len: usize) -> Feed {
        let (frames, _) = broadcast::channel(queue.max(1));
        let epoch = format!("{:016x}", rand::random::<u64>());
        Feed {
            epoch,
            seq: 0,
            ring: VecDeque::with_capacity(ring_len.min(65_536)),
            ring_len,
            pending: PendingDelta::default(),
            frames,
            joiners: Vec::new(),
            closed: false,
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

/// The changes of one cut, to be encoded outside the wall's lock.
pub struct Cut {
    pending: PendingDelta,
}

/// Encodes each cut once and sends it to every client. It owns what every client holds of
/// each point as of the last cut, so it alone may encode, one cut after another: the
/// patches of a cut are taken against the cut before.
pub struct DeltaEncoder {
    sent: SentViews,
    frames: broadcast::Sender<Arc<Frame>>,
}

impl DeltaEncoder {
    /// Encode `cut` stamped `now_ms` and send it (none listening is fine). Never waits: a
    /// client that cannot keep up lags in its own place in the queue and is re-synchronised
    /// later.
    pub fn send(&mut self, cut: Cut, now_ms: Millis) {
        let mut pending = cut.pending;
        let Some(seq) = pending.last_seq() else {
            return;
        };
        if let Some(mut msg) = pending.take_shared(&mut self.sent) {
            msg["now_ms"] = now_ms.into();
            let message = OutFrame::text(msg.to_string());
            // Compressed here, on the ticker's thread, not by the first client's task.
            message.precompress();
            let _ = self.frames.send(Arc::new(Frame { seq, message }));
        }
    }
}

/// Points per snapshot message: some 175 KB each.
pub const SNAPSHOT_PART_POINTS: usize = 500;

/// The wall's view and its feed, behind one lock. Private, so that nothing changes the view
/// without publishing the change (clients' patches would then be taken against a state they
/// do not hold).
pub struct Wall {
    state: WallState,
    feed: Feed,
    /// Points per snapshot message ([`SNAPSHOT_PART_POINTS`]).
    pub part_points: usize,
}

impl Wall {
    /// A wall over `state`, whose clients may fall `queue` deltas behind and can resume from
    /// the last `ring_len` changes, and the encoder of its deltas.
    pub fn new(state: WallState, queue: usize, ring_len: usize) -> (Wall, DeltaEncoder) {
        let feed = Feed::new(queue, ring_len);
        let encoder = DeltaEncoder {
            sent: SentViews::seeded(state.points().iter()),
            frames: feed.frames.clone(),
        };
        let wall = Wall {
            state,
            feed,
            part_points: SNAPSHOT_PART_POINTS,
        };
        (wall, encoder)
    }

    /// The folded view.
    pub fn state(&self) -> &WallState {
        &self.state
    }

    /// The change feed.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Apply a fold and publish its changes.
    pub fn apply(&mut self, f: impl FnOnce(&mut WallState) -> Vec<Change>) {
        for c in f(&mut self.state) {
            self.feed.publish(c);
        }
    }

    /// No more cuts will come (the wall is stopping, or its ticker died): let go of every
    /// client waiting to join, and of any that asks later.
    pub fn close(&mut self) {
        self.feed.closed = true;
        self.feed.joiners.clear();
    }

    /// Ask to join at the next cut; the answer fails when the wall is closed.
    pub fn join(&mut self, want: Want) -> oneshot::Receiver<Joined> {
        let (reply, rx) = oneshot::channel();
        if !self.feed.closed {
            self.feed.joiners.push(Joiner { want, reply });
        }
        rx
    }

    /// The tick, under the lock: cut the pending changes (for the [`DeltaEncoder`], outside
    /// the lock), and start every client waiting to join from exactly this cut. Returns the
    /// cut and how many joined with a resume and with a snapshot.
    pub fn tick(&mut self, now_ms: Millis) -> (Cut, usize, usize) {
        let cut = Cut {
            pending: std::mem::take(&mut self.feed.pending),
        };
        let joiners = std::mem::take(&mut self.feed.joiners);
        let (mut resumed, mut snapshots) = (0, 0);
        let seq = self.feed.seq;
        // One body per kind of session: viewers' phones masked, commanders' not.
        // The further parts framed once, too: the clients joining at this cut share them,
        // compressed (for those that agreed to it) by the first that needs them.
        let mut bodies: [Option<(SnapshotParts, Arc<[OutFrame]>)>; 2] = [None, None];
        // And each session's first message, once per cut.
        let mut firsts: HashMap<String, OutFrame> = HashMap::new();
        for j in joiners {
            let session = match j.want {
                Want::Resume {
                    session,
                    epoch,
                    since,
                } => match self.feed.resume(&epoch, since) {
                    Resume::Missed(mut missed) => {
                        let mut msg = missed.take(seq, true);
                        msg["now_ms"] = now_ms.into();
                        resumed += 1;
                        let _ = j.reply.send(Joined {
                            seq,
                            first: OutFrame::text(msg.to_string()),
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
            let (snap, rest) = bodies[usize::from(phones)].get_or_insert_with(|| {
                let snap =
                    self.state
                        .snapshot_parts(seq, &self.feed.epoch, phones, self.part_points);
                let rest = snap
                    .rest
                    .iter()
                    .map(|p| OutFrame::text(p.as_str()))
                    .collect();
                (snap, rest)
            });
            snapshots += 1;
            // The session's own fields, then the shared body without its opening brace.
            let session_json = serde_json::to_string(&session).expect("a session is plain data");
            let first = firsts
                .entry(session_json)
                .or_insert_with_key(|session_json| {
                    OutFrame::text(format!(
                        r#"{{"type":"snapshot","now_ms":{now_ms},"session":{},"can_act":{},{}"#,
                        session_json,
                        session.can_act(),
                        &snap.body[1..],
                    ))
                })
                .clone();
            let _ = j.reply.send(Joined {
                seq,
                first,
                rest: rest.clone(),
                frames: self.feed.frames.subscribe(),
            });
        }
        (cut, resumed, snapshots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Counters;
    use crate::wall_fixtures::{apply, fresh_status, views_of, Views};
    use floodcmd_model::event::PointStatus;

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

    /// A client as the page's store is: its points, and the cut it started from.
    struct Client {
        start: u64,
        points: Views,
        frames: broadcast::Receiver<Arc<Frame>>,
    }

    impl Client {
        fn joined(j: Joined) -> Client {
            let mut c = Client {
                start: j.seq,
                points: Views::new(),
                frames: j.frames,
            };
            let rest = j.rest.iter().map(|p| p.as_text().unwrap());
            for m in std::iter::once(j.first.as_text().unwrap()).chain(rest) {
                c.apply(&serde_json::from_str(m).unwrap());
            }
            c
        }

        fn apply(&mut self, m: &serde_json::Value) {
            apply(&mut self.points, m);
        }

        /// Apply every delta sent since, as the server's client task does (skipping the
        /// one its first message holds).
        fn catch_up(&mut self) {
            while let Ok(f) = self.frames.try_recv() {
                if f.seq <= self.start {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(f.message.as_text().unwrap()).unwrap();
                assert_eq!(v["seq"], f.seq);
                self.apply(&v);
            }
        }
    }

    fn views(state: &WallState) -> Views {
        views_of(&state.points())
    }

    fn status(d: &floodcmd_model::District, i: usize, depth: Option<f64>) -> PointStatus {
        let raised = depth.filter(|d| *d > 5.0);
        PointStatus {
            level: raised.map_or(floodcmd_model::Level::Normal, |_| {
                floodcmd_model::Level::Blue
            }),
            depth_cm: depth,
            rise_cm_per_min: depth.map(|d| d / 10.0),
            next_level: raised.map(|_| floodcmd_model::Level::Red),
            minutes_to_next: raised.map(|d| 50.0 - d),
            ..fresh_status(&d.points[i])
        }
    }

    /// Clients that join at different cuts — from the start, by snapshot between two cuts
    /// (as a viewer and as a commander), and by resume — all hold exactly the wall's view
    /// after applying the same shared deltas, through depths that go up and come back and
    /// fields that appear and vanish. Snapshots are built once per kind of session and come
    /// in parts; a resume from a number the ring no longer holds gets a snapshot.
    #[tokio::test]
    async fn clients_joining_at_any_cut_hold_the_walls_view_after_the_shared_deltas() {
        let d = std::sync::Arc::new(
            floodcmd_model::District::from_toml_str(include_str!("../../config/xincheng.toml"))
                .unwrap(),
        );
        let (mut wall, mut encoder) = Wall::new(WallState::new(d.clone()), 64, 16);
        // 74 points: a snapshot of three messages.
        wall.part_points = 30;
        let mut clients = vec![Client {
            start: 0,
            points: views(&wall.state),
            frames: wall.feed.frames.subscribe(),
        }];
        let commander = Session {
            name: Some("值班长".into()),
            role: floodcmd_model::settings::UserRole::Commander,
        };
        let depths = [Some(5.0), Some(6.0), None, Some(5.0), Some(7.5), Some(5.0)];
        let mut now = 0;
        let mut last_seq = 0;
        for round in 0..24 {
            // A few points change between cuts, some back to what the last cut said.
            for k in 0..3 {
                let depth = depths[(round + k) % depths.len()];
                wall.apply(|s| s.on_status(status(&d, (round * 7 + k) % 10, depth)));
            }
            // And readings: live depths, sent as rows beside the patches.
            for k in 0..4 {
                let point = &d.points[(round * 5 + k) % 20];
                let Some(sensor) = point
                    .sensors
                    .iter()
                    .find(|s| s.kind == floodcmd_model::SensorKind::Depth)
                else {
                    continue;
                };
                let reading = floodcmd_model::Reading {
                    sensor: sensor.id.as_str().into(),
                    point: point.id.as_str().into(),
                    kind: floodcmd_model::SensorKind::Depth,
                    ts_ms: (round * 10 + k + 2) as i64,
                    value: ((round + k) % 4) as f64,
                    seq: None,
                    received_ms: 0,
                };
                wall.apply(|s| s.on_reading(reading));
            }
            let mut asked = Vec::new();
            match round {
                3 => {
                    asked.push(wall.join(Want::Snapshot(Session::anonymous())));
                    asked.push(wall.join(Want::Snapshot(Session::anonymous())));
                    asked.push(wall.join(Want::Snapshot(commander.clone())));
                }
                9 => asked.push(wall.join(Want::Resume {
                    session: Session::anonymous(),
                    epoch: wall.feed.epoch().to_string(),
                    since: last_seq,
                })),
                _ => {}
            }
            if let Some(rx) = asked.first_mut() {
                assert!(rx.try_recv().is_err(), "nobody starts between cuts");
            }
            now += 100;
            let (cut, resumed, snapshots) = wall.tick(now);
            encoder.send(cut, now);
            let mut joined: Vec<Joined> = asked
                .into_iter()
                .map(|mut rx| rx.try_recv().unwrap())
                .collect();
            match round {
                3 => {
                    assert_eq!((resumed, snapshots), (0, 3));
                    assert!(
                        Arc::ptr_eq(&joined[0].rest, &joined[1].rest),
                        "parts shared"
                    );
                    assert_eq!(
                        joined[0].first.as_text(),
                        joined[1].first.as_text(),
                        "one body for viewers"
                    );
                    // One frame, shared: compressed once for both.
                    assert_eq!(
                        joined[0].first.wire(true).as_ptr(),
                        joined[1].first.wire(true).as_ptr()
                    );
                    let text = |j: &Joined| j.first.as_text().unwrap().to_string();
                    let viewer: serde_json::Value =
                        serde_json::from_str(&text(&joined[0])).unwrap();
                    let cmd: serde_json::Value = serde_json::from_str(&text(&joined[2])).unwrap();
                    assert_eq!(
                        (viewer["can_act"].clone(), cmd["can_act"].clone()),
                        (false.into(), true.into())
                    );
                    assert_eq!(viewer["parts"], 3);
                    assert_eq!(viewer["seq"], wall.feed.seq());
                    assert_eq!(cmd["session"]["name"], "值班长");
                    assert_ne!(
                        viewer["people"], cmd["people"],
                        "phones masked for viewers only"
                    );
                    for (i, part) in joined[0].rest.iter().enumerate() {
                        let part: serde_json::Value =
                            serde_json::from_str(part.as_text().unwrap()).unwrap();
                        assert_eq!(part["type"], "snapshot_part");
                        assert_eq!(
                            (&part["seq"], &part["part"]),
                            (&viewer["seq"], &(i + 1).into())
                        );
                    }
                }
                9 => {
                    assert_eq!((resumed, snapshots), (1, 0));
                    let r: serde_json::Value =
                        serde_json::from_str(joined[0].first.as_text().unwrap()).unwrap();
                    assert_eq!(r["resumed"], true);
                    assert_eq!(r["seq"], wall.feed.seq());
                }
                _ => assert_eq!((resumed, snapshots), (0, 0)),
            }
            // The resumed client held what the clients held at `last_seq`.
            if round == 9 {
                let j = joined.remove(0);
                let mut c = Client {
                    start: j.seq,
                    points: clients[0].points.clone(),
                    frames: j.frames,
                };
                c.apply(&serde_json::from_str(j.first.as_text().unwrap()).unwrap());
                clients.push(c);
            } else {
                clients.extend(joined.into_iter().map(Client::joined));
            }
            for (n, c) in clients.iter_mut().enumerate() {
                c.catch_up();
                assert_eq!(
                    c.points,
                    views(&wall.state),
                    "client {n} after round {round}"
                );
            }
            last_seq = wall.feed.seq();
        }
        assert_eq!(clients.len(), 5);

        // A resume from a number the ring (16 changes) no longer holds: a snapshot.
        let mut rx = wall.join(Want::Resume {
            session: Session::anonymous(),
            epoch: wall.feed.epoch().to_string(),
            since: 1,
        });
        let (_, resumed, snapshots) = wall.tick(now + 100);
        assert_eq!((resumed, snapshots), (0, 1));
        let j = rx.try_recv().unwrap();
        assert!(j
            .first
            .as_text()
            .unwrap()
            .starts_with(r#"{"type":"snapshot""#));

        // A closed wall lets a joiner go at once.
        wall.close();
        let mut rx = wall.join(Want::Snapshot(Session::anonymous()));
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
