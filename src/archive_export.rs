//! Exporting a time range of the live readings topic (`floodcmd archive`): the readings whose
//! event time falls in `[from, to)`, read from the bus (Kafka in production) into a storm
//! archive, or kept in memory for `floodcmd replay --kafka-from/--kafka-to`.
//!
//! A storm that happened on the live system is then a file like an imported one: replayable,
//! comparable, and something to hand on, without the topic's retention deciding how long it
//! lives.
//!
//! **Bounded, not live.** Each partition is read from the offset at (`from` − [`LATE_MARGIN_MS`])
//! up to its end offset as it was when the export started, so a topic that keeps receiving
//! readings does not keep the export running. Readings that arrive after the export started
//! are not in it.
//!
//! **Event time decides.** The record timestamp only narrows where to start; every reading is
//! kept or dropped by its own `ts_ms`. The start is looked up an hour early because a record's
//! timestamp need not be its reading's event time (a producer that stamps its own clock, a
//! topic with `LogAppendTime`, a device clock running ahead of the gateway's).
//!
//! **Cleaned the way an archive wants it.** Readings are sorted by `(ts_ms, sensor)` as
//! [`ArchiveWriter`] requires, and exact duplicates (same sensor, event time and value, which
//! at-least-once delivery and device retries produce) are kept once. Undecodable records are
//! counted and skipped: the stream stage already dead-letters them on the rejects topic.
//! Records the broker deleted (retention) after the export took its offsets and before it
//! read them are counted as `deleted` and said so; a partition deleted up to its end is
//! finished, not waited for.
//!
//! **Memory.** Sorting needs the whole range in memory: about 150 bytes a reading, so ten
//! million readings (a day of 10,000 sensors at one a minute is 14 million) take roughly
//! 1.5–2 GB. That is fine up to a few tens of millions; a larger range should be exported in
//! pieces (the pieces of consecutive ranges concatenate in order).
//!
//! Nothing is committed: the export reads with a fresh consumer group at explicit positions,
//! so it moves no stage's offsets and leaves nothing to clean up.

use floodcmd_archive::{ArchiveError, ArchiveHeader, ArchiveWriter};
use floodcmd_model::bus::{Assignment, Bus, BusError};
use floodcmd_model::codec::decode;
use floodcmd_model::reading::SensorKind;
use floodcmd_model::time::{rfc3339, Millis};
use floodcmd_model::topic::Topics;
use floodcmd_model::Reading;
use std::cmp::Ordering;
use std::path::Path;
use std::time::{Duration, Instant};

/// How far before `from` the offsets lookup starts, ms: readings whose record timestamp is
/// earlier than their event time (see the module docs) are still found.
pub const LATE_MARGIN_MS: Millis = 3_600_000;

/// How long the export waits for the next record of a partition it has not finished before it
/// gives up: the end offsets were taken at the start, so the records are there to read.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// What stopped an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// `to` is not after `from`.
    #[error("the range {from}..{to} is empty: --to must be after --from", from = rfc3339(*from_ms), to = rfc3339(*to_ms))]
    EmptyRange {
        /// Start of the range asked for.
        from_ms: Millis,
        /// End of the range asked for.
        to_ms: Millis,
    },
    /// The bus refused a lookup or a read.
    #[error("{what} on topic {topic}: {source}")]
    Bus {
        /// What the export was doing.
        what: &'static str,
        /// The readings topic.
        topic: String,
        /// What the bus said.
        #[source]
        source: BusError,
    },
    /// A partition stopped delivering before its end offset.
    #[error("topic {topic} partition {partition}: no record for {after:?} at offset {at} (expected records up to offset {end}); is the broker reachable?")]
    Stalled {
        /// The readings topic.
        topic: String,
        /// The partition that stopped.
        partition: u32,
        /// The next offset the export was waiting for.
        at: u64,
        /// The end offset taken at the start.
        end: u64,
        /// How long it waited.
        after: Duration,
    },
    /// The archive could not be written.
    #[error("writing the archive: {0}")]
    Archive(#[from] ArchiveError),
}

/// What reading the range found, beside the readings themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Records read from the topic (start offsets to end offsets, every partition).
    pub records: u64,
    /// Records that were not a `Reading` (skipped; the stream stage dead-letters them).
    pub undecodable: u64,
    /// Readings with event time outside `[from, to)` (read because of the margin, or late).
    pub outside: u64,
    /// Exact duplicates dropped (same sensor, event time and value as a kept reading).
    pub duplicates: u64,
    /// Records of the range the bus deleted (retention) before the export read them: lost to
    /// the archive, and said so.
    pub deleted: u64,
}

/// The readings of a range, sorted by `(ts_ms, sensor)` and without exact duplicates.
#[derive(Clone, Debug)]
pub struct BusReadings {
    /// The readings topic read.
    pub topic: String,
    /// Start of the range (inclusive), ms.
    pub from_ms: Millis,
    /// End of the range (exclusive), ms.
    pub to_ms: Millis,
    /// The readings, in archive order.
    pub readings: Vec<Reading>,
    /// Counts of what was read and left out.
    pub stats: ExportStats,
}

/// An archive written by [`export`].
#[derive(Clone, Debug)]
pub struct Exported {
    /// The header as written (span and count filled in).
    pub header: ArchiveHeader,
    /// Counts of what was read and left out.
    pub stats: ExportStats,
}

/// The archive header's `source` for a range of `topic`: `kafka <origin> topic <name>
/// <from>..<to>` (origin: the bootstrap servers, or `bus` when unknown).
pub fn source_label(origin: &str, topic: &str, from_ms: Millis, to_ms: Millis) -> String {
    format!(
        "kafka {origin} topic {topic} {}..{}",
        rfc3339(from_ms),
        rfc3339(to_ms)
    )
}

/// Read the readings with event time in `[from_ms, to_ms)` from `topics.readings()`, sorted and
/// without exact duplicates (see the module docs). `progress` is told (records read, records
/// to read).
pub async fn readings_from_bus(
    bus: &dyn Bus,
    topics: &Topics,
    from_ms: Millis,
    to_ms: Millis,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<BusReadings, ExportError> {
    if to_ms <= from_ms {
        return Err(ExportError::EmptyRange { from_ms, to_ms });
    }
    let topic = topics.readings();
    let bus_err = |what: &'static str| {
        let topic = topic.clone();
        move |source| ExportError::Bus {
            what,
            topic,
            source,
        }
    };
    // The end first: whatever the start lookup then finds, nothing appended after this moment
    // is read, so a live topic cannot keep the export going.
    let ends = bus
        .end_offsets(&topic)
        .await
        .map_err(bus_err("reading the end offsets"))?;
    // Kafka reads a negative timestamp as "latest" (-1) or "earliest" (-2): never pass one.
    let look_from = from_ms.saturating_sub(LATE_MARGIN_MS).max(0);
    let starts = bus
        .offsets_for_time(&topic, look_from)
        .await
        .map_err(bus_err("looking up the offsets at the start time"))?;
    // A partition added between the two lookups, or records appended in between, can leave a
    // start past its end: such a partition has nothing of this export to read.
    let todo: Vec<(u32, u64, u64)> = ends
        .iter()
        .enumerate()
        .map(|(p, &end)| {
            (
                p as u32,
                starts.get(p).copied().unwrap_or(end).min(end),
                end,
            )
        })
        .filter(|(_, start, end)| start < end)
        .collect();
    let total: u64 = todo.iter().map(|(_, s, e)| e - s).sum();
    let mut stats = ExportStats::default();
    let mut readings = Vec::new();
    progress(0, Some(total));
    if !todo.is_empty() {
        // A group nobody else uses, reading at explicit positions and never committing: the
        // export neither moves nor depends on any stage's offsets.
        let group = format!(
            "floodcmd-archive-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let positions = todo.iter().map(|&(p, s, _)| (p, Some(s))).collect();
        let mut consumer = bus
            .consumer(&group, &topic, Assignment::Positions(positions))
            .await
            .map_err(bus_err("opening a consumer"))?;
        // Per partition: the next offset expected and the end offset.
        let mut next: Vec<(u32, u64, u64)> = todo.clone();
        let mut last_progress = Instant::now();
        let mut last_record = Instant::now();
        let mut starts_checked = Instant::now();
        while next.iter().any(|(_, at, end)| at < end) {
            let batch = consumer
                .poll(8192, Duration::from_millis(500))
                .await
                .map_err(bus_err("reading records"))?;
            if batch.is_empty() {
                // A partition the bus deleted up to its end (retention caught up with the
                // export) has nothing more to give: count what is gone and finish it, rather
                // than call it stalled.
                if last_record.elapsed() >= Duration::from_secs(1)
                    && starts_checked.elapsed() >= Duration::from_secs(1)
                {
                    starts_checked = Instant::now();
                    // Only a check: without an answer the export waits as before.
                    match bus.start_offsets(&topic).await {
                        Ok(starts) => {
                            for (p, at, end) in next.iter_mut() {
                                let start = starts.get(*p as usize).copied().unwrap_or(0);
                                if *at < *end && start >= *end {
                                    stats.deleted += *end - *at;
                                    *at = *end;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(topic = %topic, error = %e, "archive export: could not look up where the partitions start")
                        }
                    }
                }
                if last_record.elapsed() >= STALL_LIMIT {
                    let &(partition, at, end) = next
                        .iter()
                        .find(|(_, at, end)| at < end)
                        .expect("the loop runs while a partition is unfinished");
                    return Err(ExportError::Stalled {
                        topic,
                        partition,
                        at,
                        end,
                        after: STALL_LIMIT,
                    });
                }
                continue;
            }
            last_record = Instant::now();
            for rec in batch {
                let Some(slot) = next.iter_mut().find(|(p, _, _)| *p == rec.partition) else {
                    continue;
                };
                // Records past the end offset were appended after the export started.
                if rec.offset >= slot.2 || rec.offset < slot.1 {
                    continue;
                }
                // Offsets passed over were deleted before they were read.
                stats.deleted += rec.offset - slot.1;
                slot.1 = rec.offset + 1;
                stats.records += 1;
                match decode::<Reading>(&rec.payload) {
                    Ok(r) if (from_ms..to_ms).contains(&r.ts_ms) => readings.push(r),
                    Ok(_) => stats.outside += 1,
                    Err(e) => {
                        if stats.undecodable == 0 {
                            tracing::warn!(topic = %rec.topic, partition = rec.partition, offset = rec.offset, error = %e, "archive export: skipping undecodable records (first shown)");
                        }
                        stats.undecodable += 1;
                    }
                }
            }
            if last_progress.elapsed() >= Duration::from_millis(200) {
                last_progress = Instant::now();
                progress(stats.records, Some(total));
            }
        }
    }
    progress(stats.records, Some(total));

    // The full key, not just (ts_ms, sensor): readings that tie on those still come out in one
    // order, so the same topic range always gives the same archive bytes. Among exact
    // duplicates the one received first sorts first and is the one kept.
    readings.sort_unstable_by(archive_order);
    let before = readings.len();
    readings.dedup_by(|later, kept| {
        later.sensor == kept.sensor
            && later.ts_ms == kept.ts_ms
            && later.value.to_bits() == kept.value.to_bits()
    });
    stats.duplicates = (before - readings.len()) as u64;
    Ok(BusReadings {
        topic,
        from_ms,
        to_ms,
        readings,
        stats,
    })
}

/// Write readings already in archive order to `out` under `header` (its span and count are
/// filled in by the writer).
pub fn write_archive(
    readings: &[Reading],
    header: ArchiveHeader,
    out: &Path,
) -> Result<ArchiveHeader, ExportError> {
    let mut w = ArchiveWriter::create(out, header)?;
    for r in readings {
        w.write(r)?;
    }
    Ok(w.finish()?)
}

/// Export the readings with event time in `[from_ms, to_ms)` on `topics.readings()` to the
/// archive `out`, with `district_toml` (named `district_name`) embedded so the file alone
/// replays. `progress` is told (records read, records to read).
#[allow(clippy::too_many_arguments)]
pub async fn export(
    bus: &dyn Bus,
    topics: &Topics,
    district_toml: &str,
    district_name: &str,
    from_ms: Millis,
    to_ms: Millis,
    out: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Exported, ExportError> {
    export_from(
        "bus",
        bus,
        topics,
        district_toml,
        district_name,
        from_ms,
        to_ms,
        out,
        progress,
    )
    .await
}

/// [`export`], naming the bus as `origin` (the Kafka bootstrap servers) in the header's source.
#[allow(clippy::too_many_arguments)]
pub async fn export_from(
    origin: &str,
    bus: &dyn Bus,
    topics: &Topics,
    district_toml: &str,
    district_name: &str,
    from_ms: Millis,
    to_ms: Millis,
    out: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Exported, ExportError> {
    let got = readings_from_bus(bus, topics, from_ms, to_ms, progress).await?;
    let header = ArchiveHeader::new(
        source_label(origin, &got.topic, from_ms, to_ms),
        district_name,
        district_toml,
        chrono::Utc::now().timestamp_millis(),
    );
    let header = write_archive(&got.readings, header, out)?;
    Ok(Exported {
        header,
        stats: got.stats,
    })
}

/// `(ts_ms, sensor)` as archives are sorted, then every other field so the order is total.
fn archive_order(a: &Reading, b: &Reading) -> Ordering {
    let kind = |k: SensorKind| match k {
        SensorKind::Depth => 0u8,
        SensorKind::Rain => 1,
    };
    a.ts_ms
        .cmp(&b.ts_ms)
        .then_with(|| a.sensor.cmp(&b.sensor))
        .then_with(|| a.value.total_cmp(&b.value))
        .then_with(|| a.received_ms.cmp(&b.received_ms))
        .then_with(|| a.seq.cmp(&b.seq))
        .then_with(|| a.point.cmp(&b.point))
        .then_with(|| kind(a.kind).cmp(&kind(b.kind)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_bus::EmbeddedBus;
    use floodcmd_model::bus::Outgoing;
    use floodcmd_model::codec::encode;

    fn reading(sensor: &str, ts_ms: Millis, value: f64, received_ms: Millis) -> Reading {
        Reading {
            sensor: sensor.into(),
            point: "UP-01".into(),
            kind: SensorKind::Depth,
            ts_ms,
            value,
            seq: None,
            received_ms,
        }
    }

    #[tokio::test]
    async fn embedded_bus_range_is_filtered_sorted_and_deduplicated() {
        let bus = EmbeddedBus::new(1024);
        let topics = Topics::new("unit-export");
        bus.ensure_topic(&topics.readings(), 2).await.unwrap();
        let t0 = 1_800_000_000_000;
        let mut records: Vec<Outgoing> = [
            reading("WL-UP-01", t0 + 2_000, 3.0, t0 + 2_100),
            reading("WL-UP-01", t0 - 1, 1.0, t0),
            reading("WL-UP-01-B", t0, 2.0, t0 + 100),
            reading("WL-UP-01", t0, 2.0, t0 + 100),
            reading("WL-UP-01", t0, 2.0, t0 + 900), // a retry: dropped
            reading("WL-UP-01", t0 + 10_000, 9.0, t0 + 10_000), // the end is exclusive
        ]
        .iter()
        .map(|r| Outgoing {
            key: bytes::Bytes::copy_from_slice(r.sensor.as_bytes()),
            payload: encode(r),
            timestamp_ms: r.ts_ms,
            key_hash: None,
        })
        .collect();
        records.push(Outgoing {
            key: bytes::Bytes::from_static(b"WL-UP-01"),
            payload: bytes::Bytes::from_static(b"{not a reading"),
            timestamp_ms: t0,
            key_hash: None,
        });
        for r in bus.producer().send_batch(&topics.readings(), records).await {
            r.unwrap();
        }
        let got = readings_from_bus(&bus, &topics, t0, t0 + 10_000, &mut |_, _| {})
            .await
            .unwrap();
        assert_eq!(
            got.readings,
            vec![
                reading("WL-UP-01", t0, 2.0, t0 + 100),
                reading("WL-UP-01-B", t0, 2.0, t0 + 100),
                reading("WL-UP-01", t0 + 2_000, 3.0, t0 + 2_100),
            ]
        );
        assert_eq!(
            got.stats,
            ExportStats {
                records: 7,
                undecodable: 1,
                outside: 2,
                duplicates: 1,
                deleted: 0,
            }
        );
    }

    /// The embedded bus, but records are deleted (as by retention) the moment a reader asks
    /// for a consumer: after the export took its offsets, before it read anything.
    struct DeletedUnderTheReader {
        inner: EmbeddedBus,
        /// (partition, delete below)
        delete: Vec<(u32, u64)>,
    }

    #[async_trait::async_trait]
    impl Bus for DeletedUnderTheReader {
        async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
            self.inner.ensure_topic(topic, partitions).await
        }
        async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
            self.inner.partitions(topic).await
        }
        async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError> {
            self.inner.end_offsets(topic).await
        }
        async fn start_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError> {
            self.inner.start_offsets(topic).await
        }
        async fn offsets_for_time(&self, topic: &str, t: i64) -> Result<Vec<u64>, BusError> {
            self.inner.offsets_for_time(topic, t).await
        }
        async fn committed(&self, group: &str, topic: &str) -> Result<Vec<Option<u64>>, BusError> {
            self.inner.committed(group, topic).await
        }
        fn producer(&self) -> std::sync::Arc<dyn floodcmd_model::bus::Producer> {
            self.inner.producer()
        }
        async fn consumer(
            &self,
            group: &str,
            topic: &str,
            assignment: Assignment,
        ) -> Result<Box<dyn floodcmd_model::bus::Consumer>, BusError> {
            for &(p, before) in &self.delete {
                self.inner.delete_records(topic, p, before)?;
            }
            self.inner.consumer(group, topic, assignment).await
        }
    }

    #[tokio::test]
    async fn records_deleted_before_the_export_read_them_are_counted_and_it_still_ends() {
        let inner = EmbeddedBus::new(1024);
        let topics = Topics::new("unit-export-deleted");
        inner.ensure_topic(&topics.readings(), 2).await.unwrap();
        let t0 = 1_800_000_000_000;
        // One sensor per partition, ten readings each.
        let part = |s: &str| floodcmd_model::bus::partition_for(s.as_bytes(), 2);
        let a = "WL-UP-01";
        let other: Vec<String> = (0..20).map(|i| format!("WL-T-{i:02}")).collect();
        let b = other
            .iter()
            .find(|s| part(s) != part(a))
            .expect("a sensor id in the other partition")
            .as_str();
        let records: Vec<Outgoing> = (0..10)
            .flat_map(|i| {
                [
                    reading(a, t0 + i * 1000, 1.0, t0),
                    reading(b, t0 + i * 1000, 1.0, t0),
                ]
            })
            .map(|r| Outgoing {
                key: bytes::Bytes::copy_from_slice(r.sensor.as_bytes()),
                payload: encode(&r),
                timestamp_ms: r.ts_ms,
                key_hash: None,
            })
            .collect();
        for r in inner
            .producer()
            .send_batch(&topics.readings(), records)
            .await
        {
            r.unwrap();
        }
        // 3 of a's partition gone in the middle of the export, all 10 of b's.
        let (pa, pb) = (part(a), part(b));
        let bus = DeletedUnderTheReader {
            inner,
            delete: vec![(pa, 3), (pb, 10)],
        };
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            readings_from_bus(&bus, &topics, t0, t0 + 60_000, &mut |_, _| {}),
        )
        .await
        .expect("the export ends although some of its records are gone")
        .unwrap();
        assert_eq!(got.readings.len(), 7);
        assert_eq!(got.stats.deleted, 3 + 10);
        assert_eq!(got.stats.records, 7);
    }

    #[tokio::test]
    async fn an_empty_range_is_refused() {
        let bus = EmbeddedBus::new(16);
        let err = readings_from_bus(&bus, &Topics::new("x"), 5, 5, &mut |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ExportError::EmptyRange { .. }), "{err}");
    }
}
