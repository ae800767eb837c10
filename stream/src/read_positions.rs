//! Where each partition's reading stands, and the records the bus no longer had when the
//! stage came to read them.
//!
//! Kafka deletes old segments by time (retention) whether anyone has read them or not. A stage
//! that falls behind by more than the retention, or a topic of readings stamped far in the past
//! (a replayed storm, a bench), finds its next offset gone: librdkafka starts again at the
//! earliest record the broker still holds, and the stage's next record comes from further on.
//! What was in between cannot be had back, but it must not pass in silence, and a bounded run
//! must not wait for ever for records that no longer exist. (The embedded bus lets go of an
//! unread record only when told to, by `delete_records`, as tests and drills do.)

use std::collections::BTreeMap;

/// Offsets `from..to` of `partition` were gone before they were read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub partition: u32,
    pub from: u64,
    pub to: u64,
}

impl Gap {
    /// How many records were lost.
    pub fn records(&self) -> u64 {
        self.to - self.from
    }
}

/// Where a record stands against the position of its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The next one expected (or the first of a partition without a start).
    Next,
    /// Further on: the records before it were deleted unread.
    After(Gap),
    /// Behind the position: a record already read, or one counted lost whose fetch was
    /// already under way when the partition was given up. Not to be processed again.
    Behind,
}

/// The next offset expected in each partition.
#[derive(Debug, Default)]
pub struct ReadPositions {
    next: BTreeMap<u32, u64>,
}

impl ReadPositions {
    /// Positions at `starts` (where the consumer was told to begin, or where the bus began).
    pub fn new(starts: impl IntoIterator<Item = (u32, u64)>) -> Self {
        ReadPositions {
            next: starts.into_iter().collect(),
        }
    }

    /// Note a record read at `offset`: where it stands. A record behind the position does
    /// not move it back.
    pub fn read(&mut self, partition: u32, offset: u64) -> Place {
        let next = self.next.entry(partition).or_insert(offset);
        let place = if offset < *next {
            Place::Behind
        } else if offset > *next {
            Place::After(Gap {
                partition,
                from: *next,
                to: offset,
            })
        } else {
            Place::Next
        };
        *next = (*next).max(offset + 1);
        place
    }

    /// The bus now starts `partition` at `start`: the gap up to there, if the position was
    /// behind it, and the position moves to `start`.
    pub fn starts_at(&mut self, partition: u32, start: u64) -> Option<Gap> {
        let next = self.next.entry(partition).or_insert(start);
        let gap = (start > *next).then_some(Gap {
            partition,
            from: *next,
            to: start,
        });
        *next = (*next).max(start);
        gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_records_leave_no_gap_and_a_jump_is_one() {
        let mut p = ReadPositions::new([(0, 10)]);
        assert_eq!(p.read(0, 10), Place::Next);
        assert_eq!(p.read(0, 11), Place::Next);
        assert_eq!(
            p.read(0, 50),
            Place::After(Gap {
                partition: 0,
                from: 12,
                to: 50
            })
        );
        assert_eq!(p.read(0, 51), Place::Next);
    }

    #[test]
    fn the_first_record_after_the_start_is_checked_against_the_start() {
        let mut p = ReadPositions::new([(3, 100)]);
        let Place::After(gap) = p.read(3, 140) else {
            panic!("records 100..140 were never read");
        };
        assert_eq!((gap.from, gap.to, gap.records()), (100, 140, 40));
    }

    #[test]
    fn a_partition_without_a_start_begins_where_its_first_record_is() {
        let mut p = ReadPositions::default();
        assert_eq!(p.read(1, 7), Place::Next);
        assert_eq!(p.read(1, 8), Place::Next);
    }

    #[test]
    fn a_record_behind_the_position_is_behind_and_does_not_move_it_back() {
        let mut p = ReadPositions::new([(0, 0)]);
        for o in 0..5 {
            p.read(0, o);
        }
        assert_eq!(p.read(0, 2), Place::Behind);
        assert_eq!(p.read(0, 5), Place::Next);
    }

    #[test]
    fn a_start_past_the_position_is_a_gap_once() {
        let mut p = ReadPositions::new([(2, 20)]);
        assert_eq!(
            p.starts_at(2, 90),
            Some(Gap {
                partition: 2,
                from: 20,
                to: 90
            })
        );
        assert_eq!(p.starts_at(2, 90), None);
        assert_eq!(p.read(2, 90), Place::Next);
        assert_eq!(p.starts_at(2, 10), None, "an older start is not news");
        assert_eq!(
            p.read(2, 50),
            Place::Behind,
            "a record counted lost that comes after all is not processed"
        );
    }
}
