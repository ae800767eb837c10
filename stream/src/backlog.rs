//! A live worker's backlog: the readings that were waiting on its partitions when the stage
//! started (a restart after an outage, a first start on a topic with history), and those that
//! reach the bus while it reads them.
//!
//! Until a partition is caught up, the worker's watermark follows that partition's event time
//! rather than the clock (see the dataflow's module docs): what reached the bus on time is not
//! late because the stage was down, and a point is not judged silent while its readings wait
//! to be read. A partition read up to the end it was given is caught up if its newest reading
//! is within the lateness budget of the clock; if not, its end is looked up again (readings
//! arrived meanwhile) and reading goes on to that, a few times at most: readings that keep
//! arriving stamped older than that (a device clock behind the stage's, a gateway uploading
//! what it buffered) must not hold the stage back for ever. A partition that gives no record
//! for a while is given up, so a bus that stops giving records cannot hide that sensors have
//! gone quiet: the backlog holds back the whole stage's frontier, and with it the judgement
//! of silence.

use prometheus::IntGauge;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One partition still being caught up.
#[derive(Debug)]
struct Behind {
    /// The end to read up to.
    end: u64,
    /// The next offset after the last record read.
    next: u64,
    /// `next` when last looked at, and when it last moved.
    next_seen: u64,
    moved_at: Instant,
    /// How many times its end was moved on.
    extended: u32,
}

/// How many times a partition's end is moved on to readings that arrived while it was read.
/// Each round reads what arrived during the one before, so a worker reading faster than
/// readings arrive is within a poll or two of the newest after a few.
pub const MAX_EXTENSIONS: u32 = 3;

/// The partitions of one worker with readings still to read before it follows the clock. The
/// gauge (if any) counts them, with every other backlog's that shares it, while this one lives.
#[derive(Debug, Default)]
pub struct Backlog {
    behind: BTreeMap<u32, Behind>,
    gauge: Option<IntGauge>,
}

impl Backlog {
    /// The partitions whose position (where the worker starts reading) is before their end.
    /// A position not known counts from offset 0.
    pub fn new(
        positions: impl IntoIterator<Item = (u32, Option<u64>)>,
        ends: &[u64],
        gauge: Option<IntGauge>,
    ) -> Self {
        let now = Instant::now();
        let behind: BTreeMap<u32, Behind> = positions
            .into_iter()
            .filter_map(|(p, from)| {
                let end = *ends.get(p as usize)?;
                let from = from.unwrap_or(0);
                (end > from).then_some((
                    p,
                    Behind {
                        end,
                        next: from,
                        next_seen: from,
                        moved_at: now,
                        extended: 0,
                    },
                ))
            })
            .collect();
        if let Some(g) = &gauge {
            g.add(behind.len() as i64);
        }
        Backlog { behind, gauge }
    }

    /// Partitions still behind.
    pub fn len(&self) -> usize {
        self.behind.len()
    }

    /// Every partition caught up (or given up).
    pub fn is_empty(&self) -> bool {
        self.behind.is_empty()
    }

    /// `partition` is still behind.
    pub fn contains(&self, partition: u32) -> bool {
        self.behind.contains_key(&partition)
    }

    /// Records still to read up to the ends given.
    pub fn records(&self) -> u64 {
        self.behind
            .values()
            .map(|b| b.end.saturating_sub(b.next))
            .sum()
    }

    /// Count a stall from `now`: the time before it (a consumer that takes its time to start)
    /// is not the bus failing to give records.
    pub fn start_stall_clock(&mut self, now: Instant) {
        for b in self.behind.values_mut() {
            b.moved_at = now;
            b.next_seen = b.next;
        }
    }

    /// The record at `offset` of `partition` was read.
    pub fn read(&mut self, partition: u32, offset: u64) {
        if let Some(b) = self.behind.get_mut(&partition) {
            b.next = b.next.max(offset + 1);
        }
    }

    /// The partitions read up to the end they were given.
    pub fn at_end(&self) -> Vec<u32> {
        self.behind
            .iter()
            .filter(|(_, b)| b.next >= b.end)
            .map(|(p, _)| *p)
            .collect()
    }

    /// `partition` is caught up. True if it was behind.
    pub fn caught_up(&mut self, partition: u32) -> bool {
        let was = self.behind.remove(&partition).is_some();
        if let (true, Some(g)) = (was, &self.gauge) {
            g.dec();
        }
        was
    }

    /// Where `partition` ends now: reading goes on to there, or, with nothing past what was
    /// read or its end moved on [`MAX_EXTENSIONS`] times already, it is caught up (true).
    pub fn extend(&mut self, partition: u32, end: u64) -> bool {
        match self.behind.get_mut(&partition) {
            Some(b) if end > b.next && b.extended < MAX_EXTENSIONS => {
                b.end = end;
                b.extended += 1;
                false
            }
            Some(_) => self.caught_up(partition),
            None => false,
        }
    }

    /// The watermark's limit, in event seconds: the oldest of the newest event times read from
    /// each partition still behind (`newest`; a partition nothing was read from yet is at 0).
    /// `None` once caught up.
    pub fn limit(&self, newest: &BTreeMap<u32, u64>) -> Option<u64> {
        self.behind
            .keys()
            .map(|p| newest.get(p).copied().unwrap_or(0))
            .min()
    }

    /// Give up the partitions that have not moved for `stall`, as of `now`, and say which.
    pub fn give_up_stalled(&mut self, now: Instant, stall: Duration) -> Vec<u32> {
        let mut stalled = Vec::new();
        for (p, b) in self.behind.iter_mut() {
            if b.next != b.next_seen {
                b.next_seen = b.next;
                b.moved_at = now;
            } else if now.duration_since(b.moved_at) >= stall {
                stalled.push(*p);
            }
        }
        for p in &stalled {
            self.caught_up(*p);
        }
        stalled
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        // A worker that stops (or fails) part way through its backlog.
        if let Some(g) = &self.gauge {
            g.sub(self.behind.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backlog;
    use prometheus::IntGauge;
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    #[test]
    fn only_partitions_with_records_before_their_end_are_behind_and_the_gauge_counts_them() {
        let gauge = IntGauge::new("behind", "partitions behind").unwrap();
        // Partition 0 starts at its end, 1 before it, 2 has no known position, 3 has no end.
        let mut b = Backlog::new(
            [(0, Some(10)), (1, Some(4)), (2, None), (3, Some(0))],
            &[10, 8, 3],
            Some(gauge.clone()),
        );
        assert_eq!(b.len(), 2);
        assert_eq!(gauge.get(), 2);
        assert_eq!(b.records(), 4 + 3);
        b.read(1, 5);
        b.read(0, 12);
        assert!(
            b.at_end().is_empty(),
            "offset 6 of 8 is next; 0 was never behind"
        );
        b.read(1, 7);
        // Records deleted under the consumer: the first one read is past the end.
        b.read(2, 40);
        assert_eq!(b.at_end(), vec![1, 2]);
        assert!(b.caught_up(1));
        assert!(!b.caught_up(1), "caught up once");
        assert_eq!(gauge.get(), 1);
        drop(b);
        assert_eq!(
            gauge.get(),
            0,
            "what a backlog dropped part way held is given back"
        );
    }

    #[test]
    fn a_partition_at_its_end_reads_on_to_a_later_end_or_is_caught_up_with_nothing_past_it() {
        let mut b = Backlog::new([(0, Some(0)), (1, Some(0))], &[3, 3], None);
        b.read(0, 2);
        b.read(1, 2);
        assert_eq!(b.at_end(), vec![0, 1]);
        assert!(
            !b.extend(0, 7),
            "four more readings reached partition 0 meanwhile"
        );
        assert!(b.extend(1, 3), "nothing past partition 1's end");
        assert_eq!(b.at_end(), Vec::<u32>::new());
        assert_eq!(b.records(), 4);
        b.read(0, 6);
        assert_eq!(b.at_end(), vec![0]);
        // Readings keep arriving, stamped too old to count as live: a few more rounds, no more.
        for round in 2..=super::MAX_EXTENSIONS {
            assert!(!b.extend(0, 7 + u64::from(round)), "round {round}");
            b.read(0, 6 + u64::from(round));
        }
        assert!(
            b.extend(0, 100),
            "caught up after {} rounds",
            super::MAX_EXTENSIONS
        );
        assert!(b.is_empty());
    }

    #[test]
    fn the_limit_is_the_partition_furthest_behind_and_none_once_caught_up() {
        let mut b = Backlog::new([(0, Some(0)), (1, Some(0))], &[5, 5], None);
        let mut newest = BTreeMap::new();
        assert_eq!(b.limit(&newest), Some(0), "nothing read from either yet");
        newest.insert(0, 1_000);
        assert_eq!(
            b.limit(&newest),
            Some(0),
            "partition 1 is still at the start"
        );
        newest.insert(1, 900);
        assert_eq!(b.limit(&newest), Some(900));
        b.caught_up(1);
        assert_eq!(b.limit(&newest), Some(1_000), "partition 1 caught up");
        b.caught_up(0);
        assert_eq!(b.limit(&newest), None);
    }

    #[test]
    fn a_partition_that_does_not_move_for_the_stall_is_given_up_and_one_that_moves_is_not() {
        let t0 = Instant::now();
        let stall = Duration::from_secs(10);
        let gauge = IntGauge::new("behind", "partitions behind").unwrap();
        let mut b = Backlog::new(
            [(0, Some(0)), (1, Some(0))],
            &[100, 100],
            Some(gauge.clone()),
        );
        // The consumer took its time to start: the stall counts from when it did.
        b.start_stall_clock(t0);
        b.read(0, 0);
        assert!(b
            .give_up_stalled(t0 + Duration::from_secs(6), stall)
            .is_empty());
        // Partition 0 moved since the last look, 1 never did: 1 goes at the stall, 0 stays.
        b.read(0, 1);
        assert_eq!(
            b.give_up_stalled(t0 + Duration::from_secs(10), stall),
            vec![1]
        );
        assert_eq!((b.len(), gauge.get()), (1, 1));
        // Partition 0 last moved at the look at 10 s.
        assert!(b
            .give_up_stalled(t0 + Duration::from_secs(19), stall)
            .is_empty());
        assert_eq!(
            b.give_up_stalled(t0 + Duration::from_secs(20), stall),
            vec![0]
        );
        assert!(b.is_empty());
        assert_eq!(gauge.get(), 0);
    }
}
