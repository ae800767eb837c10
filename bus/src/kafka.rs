//! The Kafka bus: the same trait over Apache Kafka with librdkafka.
//!
//! - Producing: idempotent, `acks=all`; the partition is chosen here with
//!   [`floodcmd_model::bus::partition_for`] (Kafka's murmur2; from `Outgoing::key_hash` when
//!   the caller hashed the key already), so the embedded bus, this bus and a Java producer all
//!   agree. A full local queue makes `send` wait up to
//!   `queue_timeout`, then fail with [`BusError::Timeout`]: callers (the gateway) turn that
//!   into 429, never into a drop. Batches for a topic in `packed_topics` go out packed, many
//!   records of a partition to a Kafka record ([`crate::pack`]).
//! - Topics: created at `replication` with `min.insync.replicas` set on the topic (2 at
//!   replication 3), so an `acks=all` write is on at least two brokers before it counts and
//!   one broker may be lost without refusing writes or losing an acknowledged record.
//! - Consuming: static assignment (no group rebalancing), starting at the group's committed
//!   offset or the earliest retained record; auto-commit is off, the caller commits after the
//!   effects of a record are produced. A pack read is handed on as the records it carries,
//!   all at its offset, in one poll.

use async_trait::async_trait;
use bytes::Bytes;
use floodcmd_model::bus::{
    Acknowledgements, Assignment, Bus, BusError, Consumer, Delivery, Outgoing, Producer, Record,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pack;

/// How to reach Kafka and how to create topics. Debug hides extra settings that hold secrets
/// (SASL passwords, key material).
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port,...`.
    pub bootstrap: String,
    /// Replication factor of topics this bus creates.
    pub replication: i32,
    /// `min.insync.replicas` of the topics this bus creates (capped at `replication`): how
    /// many replicas must have a record before an `acks=all` write is acknowledged.
    pub min_insync_replicas: i32,
    /// How long a producer waits for room in its local queue before giving up.
    pub queue_timeout: Duration,
    /// Extra librdkafka settings (TLS, SASL, tuning), applied over the bus's tunable
    /// defaults; not over what its guarantees rest on (idempotent `acks=all` producing,
    /// offsets committed by the bus alone), which is set after them.
    pub extra: Vec<(String, String)>,
    /// Topics whose batches go out packed, many records of a partition to a Kafka record
    /// ([`crate::pack`]); every consumer of this bus unpacks what it reads, whatever this says.
    pub packed_topics: Vec<String>,
}

/// Whether the librdkafka setting `key` holds a secret (a password, a secret, key material),
/// whose value is never shown.
pub fn is_secret_setting(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".pem")
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let extra: Vec<(&str, &str)> = self
            .extra
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_setting(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap", &self.bootstrap)
            .field("replication", &self.replication)
            .field("min_insync_replicas", &self.min_insync_replicas)
            .field("queue_timeout", &self.queue_timeout)
            .field("extra", &extra)
            .field("packed_topics", &self.packed_topics)
            .finish()
    }
}

impl KafkaConfig {
    /// One broker at `bootstrap`, replication 1.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap: bootstrap.into(),
            replication: 1,
            min_insync_replicas: 2,
            queue_timeout: Duration::from_secs(10),
            extra: Vec::new(),
            packed_topics: Vec::new(),
        }
    }

    fn client(&self) -> ClientConfig {
        self.client_with(&[])
    }

    /// A client with a role's `defaults` (a producer's, a consumer's), which the extra
    /// settings can still override.
    fn client_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        // librdkafka may resolve `localhost` to ::1 while brokers listen on 127.0.0.1.
        c.set("broker.address.family", "v4");
        for (k, v) in CLIENT_DEFAULTS.iter().chain(defaults) {
            c.set(*k, *v);
        }
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

/// Destroy a lookup's client off the caller's path. librdkafka sleeps 100 ms in every
/// client's destruction (librdkafka#1895), and a stage starting up made two such lookups
/// before reading its first record; nothing waits on what a lookup client does after its
/// answer.
fn let_go<C: Send + 'static>(client: C) {
    // If no thread can be had, the client is dropped here as before (the closure goes with
    // the error).
    let _ = std::thread::Builder::new()
        .name("kafka-let-go".into())
        .spawn(move || drop(client));
}

/// What a pack may hold under the producer's `message.max.bytes` (librdkafka refuses a record
/// over it before it is sent; 1,000,000 unless set): room is left for the record's own key
/// and librdkafka's overhead. A topic's `max.message.bytes` (1 MB on the topics the bus
/// creates) must not be lower, or its packs are refused and retried for ever, as any record
/// over it would be.
fn pack_bytes(config: &KafkaConfig) -> usize {
    let limit = config
        .extra
        .iter()
        .rev()
        .find(|(k, _)| k == "message.max.bytes")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(1_000_000);
    pack::MAX_BYTES.min(limit.saturating_sub(4096))
}

fn client_err(e: KafkaError) -> BusError {
    BusError::Client(e.to_string())
}

/// Every client's settings, where the settings may tune them.
const CLIENT_DEFAULTS: &[(&str, &str)] = &[
    // A new client decommissions its bootstrap connection as soon as the metadata names the
    // brokers, failing a request in flight on it (a group's coordinator lookup, above all),
    // and it connects again only after half of this (at least 11 ms). At librdkafka's default
    // (100 ms) the stage's lookup of its group's commits took 57–60 ms of the 81 ms it took
    // to read its first record; with this, its start to the first record took 24–56 ms in
    // ten runs (19–90 before). A broker that stays down is still tried ever less often: the
    // backoff doubles from this, up to `reconnect.backoff.max.ms` (10 s).
    ("reconnect.backoff.ms", "10"),
];

/// How the bus produces, where the settings may tune it: in small batches, compressed. (What
/// its guarantees rest on, idempotence and acks from every in-sync replica, is set after the
/// extra settings, which cannot loosen it.)
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "5"),
    ("compression.type", "lz4"),
    ("message.timeout.ms", "120000"),
];

/// How the bus consumes (the group, offsets and commits are set apart from these).
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("fetch.wait.max.ms", "10"),
    // librdkafka stops fetching a partition whose local queue is full (100,000 records) and
    // looks again only after this. At its default (1 s) a stage catching up on a backlog
    // emptied the queue before the second was out and waited for the rest of it: one worker
    // read a backlog at 122k–143k readings/s, and at 151k–224k with this.
    ("fetch.queue.backoff.ms", "10"),
];

/// The producer's settings: the tunable defaults, the extra settings over them, then what the
/// bus's guarantees rest on. Public so that a benchmark's raw producer is set up as the bus's.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = config.client_with(PRODUCER_DEFAULTS);
    c.set("enable.idempotence", "true").set("acks", "all");
    c
}

/// A consumer's settings in `group`: the tunable defaults, the extra settings over them, then
/// what the bus's offsets rest on (it commits alone, after the outputs; a deleted offset
/// goes on at the first record left).
fn consumer_config(config: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = config.client_with(CONSUMER_DEFAULTS);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    c
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `start_offsets` waits for each partition's answer.
const START_OFFSETS_TIMEOUT: Duration = Duration::from_secs(2);

/// The Kafka bus.
#[derive(Clone)]
pub struct KafkaBus {
    config: KafkaConfig,
    producer: Arc<KafkaProducer>,
    admin: Arc<AdminClient<DefaultClientContext>>,
}

impl KafkaBus {
    /// Connect (lazily: librdkafka connects on first use).
    pub fn new(config: KafkaConfig) -> Result<Self, BusError> {
        let producer: ThreadedProducer<BatchContext> = producer_config(&config)
            .create_with_context(BatchContext)
            .map_err(client_err)?;
        let admin: AdminClient<DefaultClientContext> =
            config.client().create().map_err(client_err)?;
        Ok(KafkaBus {
            producer: Arc::new(KafkaProducer {
                topics: Mutex::new(HashMap::new()),
                inner: producer,
                queue_timeout: config.queue_timeout,
                packed_topics: config.packed_topics.clone(),
                pack_bytes: pack_bytes(&config),
            }),
            admin: Arc::new(admin),
            config,
        })
    }

    fn partition_count(&self, topic: &str) -> Result<u32, BusError> {
        let md = self
            .producer
            .inner
            .client()
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(client_err)?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| BusError::UnknownTopic(topic.to_string()))?;
        if t.error().is_some() || t.partitions().is_empty() {
            return Err(BusError::UnknownTopic(topic.to_string()));
        }
        Ok(t.partitions().len() as u32)
    }

    /// The next offset to be written in `partition` (blocking).
    fn high_watermark(&self, topic: &str, partition: u32) -> Result<u64, BusError> {
        let (_, high) = self
            .producer
            .inner
            .client()
            .fetch_watermarks(topic, partition as i32, METADATA_TIMEOUT)
            .map_err(client_err)?;
        Ok(high.max(0) as u64)
    }

    /// The first retained offset of each of `partitions` (blocking), waiting out a cluster that
    /// is still electing leaders. A consumer is assigned these explicitly instead of the logical
    /// "beginning": librdkafka resolves that with its own offset query, which against brokers
    /// that have just started can fail and back off for a long time, reading nothing.
    fn low_watermarks(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> Result<HashMap<u32, u64>, BusError> {
        let client = self.producer.inner.client();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut out = HashMap::new();
        for &p in partitions {
            let mut wait = Duration::from_millis(100);
            let low = loop {
                match client.fetch_watermarks(topic, p as i32, METADATA_TIMEOUT) {
                    Ok((low, _)) => break low.max(0) as u64,
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::warn!(topic, partition = p, error = %e, retry_in = ?wait, "first offset not available yet");
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => return Err(client_err(e)),
                }
            };
            out.insert(p, low);
        }
        Ok(out)
    }

    /// What `group` has committed in partitions `0..n` of `topic`, asked by `consumer` (a
    /// client of the group's, blocking; `None`: nothing committed). A partition with an error
    /// of its own, or left out of the answer, fails the lookup (the caller asks again): read as
    /// never committed, it would send a stage back to the start of what the topic holds.
    ///
    /// The lookup needs a consumer client of the group, made for it. The bus's admin client,
    /// connected already, answered a stage's lookup about 20 ms sooner through librdkafka's
    /// `ListConsumerGroupOffsets`, but librdkafka 2.12 handles a broker's NOT_COORDINATOR
    /// answer to it through the client's consumer group, which a producer-type client (as
    /// rust-rdkafka makes its admin client) does not have: the process would crash just when
    /// a coordinator moves (librdkafka#5040).
    fn group_offsets(
        consumer: &rdkafka::consumer::BaseConsumer,
        group: &str,
        topic: &str,
        n: u32,
    ) -> Result<Vec<Option<u64>>, BusError> {
        let failed =
            |what: String| BusError::Client(format!("committed offsets of group {group}: {what}"));
        let mut tpl = TopicPartitionList::new();
        for p in 0..n {
            tpl.add_partition(topic, p as i32);
        }
        let got = consumer
            .committed_offsets(tpl, METADATA_TIMEOUT)
            .map_err(client_err)?;
        (0..n)
            .map(|p| {
                let e = got
                    .find_partition(topic, p as i32)
                    .ok_or_else(|| failed(format!("no answer for partition {p}")))?;
                e.error()
                    .map_err(|err| failed(format!("partition {p}: {err}")))?;
                Ok(match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o as u64),
                    _ => None,
                })
            })
            .collect()
    }

    /// Metadata and watermark calls block in librdkafka: keep them off the async workers.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, BusError> + Send + 'static,
    ) -> Result<T, BusError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| BusError::Client(e.to_string()))?
    }

    /// How `topic` sits in the cluster: each partition's leader, replicas and in-sync
    /// replicas (broker ids), and the topic's `min.insync.replicas`. For fault tests and
    /// operators' checks; no stage needs it.
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicLayout, BusError> {
        let me = self.clone();
        let t = topic.to_string();
        let partitions = Self::blocking(move || {
            let md = me
                .producer
                .inner
                .client()
                .fetch_metadata(Some(&t), METADATA_TIMEOUT)
                .map_err(client_err)?;
            let mt = md
                .topics()
                .iter()
                .find(|x| x.name() == t)
                .ok_or_else(|| BusError::UnknownTopic(t.clone()))?;
            let mut v: Vec<PartitionLayout> = mt
                .partitions()
                .iter()
                .map(|p| PartitionLayout {
                    partition: p.id(),
                    leader: p.leader(),
                    replicas: p.replicas().to_vec(),
                    isr: p.isr().to_vec(),
                })
                .collect();
            v.sort_by_key(|p| p.partition);
            Ok(v)
        })
        .await?;
        let resource = rdkafka::admin::ResourceSpecifier::Topic(topic);
        let opts = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
        let described = self
            .admin
            .describe_configs([&resource], &opts)
            .await
            .map_err(client_err)?;
        let min_insync_replicas = described
            .into_iter()
            .flatten()
            .flat_map(|r| r.entries)
            .find(|e| e.name == "min.insync.replicas")
            .and_then(|e| e.value)
            .and_then(|v| v.parse().ok());
        Ok(TopicLayout {
            partitions,
            min_insync_replicas,
        })
    }

    /// Delete every record of `partition` below `before`, read or not (Kafka's `DeleteRecords`,
    /// what retention does by time): readers behind it go on at the first record left. For
    /// tests and drills of a stage that fell behind the retention.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        before: u64,
    ) -> Result<(), BusError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition as i32, Offset::Offset(before as i64))
            .map_err(client_err)?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let result = self
            .admin
            .delete_records(&tpl, &opts)
            .await
            .map_err(client_err)?;
        for e in result.elements() {
            if let Err(code) = e.error() {
                return Err(BusError::Client(format!(
                    "deleting records of {topic} [{partition}] below {before}: {code}"
                )));
            }
        }
        Ok(())
    }
}

/// One partition of a topic in the cluster (broker ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLayout {
    /// Partition number.
    pub partition: i32,
    /// Broker leading it (-1: none).
    pub leader: i32,
    /// Brokers holding a replica.
    pub replicas: Vec<i32>,
    /// Replicas in sync with the leader.
    pub isr: Vec<i32>,
}

/// A topic as the cluster holds it ([`KafkaBus::describe_topic`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicLayout {
    /// Every partition, by number.
    pub partitions: Vec<PartitionLayout>,
    /// The topic's `min.insync.replicas`, if the cluster said.
    pub min_insync_replicas: Option<i32>,
}

#[async_trait]
impl Bus for KafkaBus {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        // Set on the topic, not left to the brokers' default: a cluster started without the
        // setting would otherwise acknowledge a write held by the leader alone, and lose it
        // with that broker.
        let min_insync = self
            .config
            .min_insync_replicas
            .clamp(1, self.config.replication.max(1))
            .to_string();
        let new = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(self.config.replication),
        )
        .set("min.insync.replicas", &min_insync);
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(client_err)?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BusError::Client(format!("creating topic {name}: {code}")))
                }
            }
        }
        // Creation is asynchronous in the cluster: wait until metadata shows the partitions.
        for _ in 0..100 {
            let me = self.clone();
            let t = topic.to_string();
            if Self::blocking(move || me.partition_count(&t)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(BusError::Client(format!(
            "topic {topic} did not appear in metadata"
        )))
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        let me = self.clone();
        let t = topic.to_string();
        Self::blocking(move || me.partition_count(&t)).await
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError> {
        let me = self.clone();
        let t = topic.to_string();
        Self::blocking(move || {
            let n = me.partition_count(&t)?;
            (0..n).map(|p| me.high_watermark(&t, p)).collect()
        })
        .await
    }

    async fn start_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError> {
        let me = self.clone();
        let t = topic.to_string();
        // One attempt, briefly: callers use it as a check and go on without it (unlike the
        // start of a consumer, which waits out a cluster that is still starting).
        Self::blocking(move || {
            let n = me.partition_count(&t)?;
            let client = me.producer.inner.client();
            (0..n)
                .map(|p| {
                    client
                        .fetch_watermarks(&t, p as i32, START_OFFSETS_TIMEOUT)
                        .map(|(low, _)| low.max(0) as u64)
                        .map_err(client_err)
                })
                .collect()
        })
        .await
    }

    async fn offsets_for_time(&self, topic: &str, timestamp_ms: i64) -> Result<Vec<u64>, BusError> {
        let me = self.clone();
        let t = topic.to_string();
        Self::blocking(move || {
            let n = me.partition_count(&t)?;
            let consumer: rdkafka::consumer::BaseConsumer = me
                .config
                .client()
                .set("group.id", "floodcmd-offsets-lookup")
                .create()
                .map_err(client_err)?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..n {
                tpl.add_partition_offset(&t, p as i32, Offset::Offset(timestamp_ms))
                    .map_err(client_err)?;
            }
            let found = consumer
                .offsets_for_times(tpl, METADATA_TIMEOUT)
                .map_err(client_err)?;
            let_go(consumer);
            (0..n)
                .map(|p| {
                    let elem = found.find_partition(&t, p as i32);
                    match elem.map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => Ok(o.max(0) as u64),
                        // No record at or after the time: start at the end.
                        _ => me.high_watermark(&t, p),
                    }
                })
                .collect()
        })
        .await
    }

    async fn committed(&self, group: &str, topic: &str) -> Result<Vec<Option<u64>>, BusError> {
        let me = self.clone();
        let (g, t) = (group.to_string(), topic.to_string());
        Self::blocking(move || {
            if g.contains('\0') {
                return Err(BusError::Client(format!(
                    "committed offsets of group {g:?}: the name holds a NUL byte"
                )));
            }
            let n = me.partition_count(&t)?;
            let consumer: rdkafka::consumer::BaseConsumer = me
                .config
                .client()
                .set("group.id", &g)
                .create()
                .map_err(client_err)?;
            // Right after a broker starts, the group coordinator is still loading
            // (NotCoordinator, CoordinatorLoadInProgress): wait for it rather than fail a stage
            // that is starting up with the cluster.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut wait = Duration::from_millis(100);
            let got = loop {
                match Self::group_offsets(&consumer, &g, &t, n) {
                    Ok(got) => break Ok(got),
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::warn!(group = %g, error = %e, retry_in = ?wait, "committed offsets not available yet");
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => break Err(e),
                }
            };
            let_go(consumer);
            got
        })
        .await
    }

    fn producer(&self) -> Arc<dyn Producer> {
        self.producer.clone()
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        assignment: Assignment,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let n = self.partitions(topic).await?;
        let wanted = assignment.resolve(topic, n)?;
        let assigned: Vec<u32> = wanted.iter().map(|(p, _)| *p).collect();
        let consumer: StreamConsumer = consumer_config(&self.config, group)
            .create()
            .map_err(client_err)?;
        let mut tpl = TopicPartitionList::new();
        // Resolve "the group's commit" here, where the lookup waits for the coordinator,
        // rather than leave it to librdkafka at assign time: against a broker that has just
        // started, that fetch can fail and back off for a long time, reading nothing.
        let committed = if wanted.iter().any(|(_, from)| from.is_none()) {
            self.committed(group, topic).await?
        } else {
            Vec::new()
        };
        let resolved: Vec<(u32, Option<u64>)> = wanted
            .iter()
            .map(|(p, from)| {
                (
                    *p,
                    from.or_else(|| committed.get(*p as usize).copied().flatten()),
                )
            })
            .collect();
        let fresh: Vec<u32> = resolved
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(p, _)| *p)
            .collect();
        let lows = if fresh.is_empty() {
            HashMap::new()
        } else {
            let (me, t) = (self.clone(), topic.to_string());
            Self::blocking(move || me.low_watermarks(&t, &fresh)).await?
        };
        for (p, from) in &resolved {
            let offset = match from.or_else(|| lows.get(p).copied()) {
                Some(o) => Offset::Offset(o as i64),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, *p as i32, offset)
                .map_err(client_err)?;
        }
        consumer.assign(&tpl).map_err(client_err)?;
        // SAFETY: a new reference to a live consumer's queue, kept in `KafkaConsumer` ahead of
        // the consumer (dropped first).
        let queue = unsafe {
            Native::new(
                rdkafka::bindings::rd_kafka_queue_get_consumer(consumer.client().native_ptr()),
                rdkafka::bindings::rd_kafka_queue_destroy,
            )
        }
        .ok_or_else(|| BusError::Client("librdkafka gave no consumer queue".into()))?;
        Ok(Box::new(KafkaConsumer {
            queue,
            inner: consumer,
            topic: Arc::from(topic),
            assigned,
            skip_below: HashMap::new(),
            held: Default::default(),
            packed: self.config.packed_topics.iter().any(|t| t == topic),
        }))
    }
}

/// Waits for the delivery reports of one batch: each report fills its record's slot, the
/// last one wakes the sender once. (librdkafka's own per-message futures cost an allocation, a
/// channel and a wakeup per record; at gateway rates that was a tenth of the CPU. A boxed
/// slot and a lock per record, freed and taken on librdkafka's delivery thread, were what the
/// stream stage's producing cost beyond the raw pipe's, so a slot is a place in the batch and
/// a report fills it with two stores.)
///
/// librdkafka carries each record's slot as its opaque pointer. The reports, together, own
/// one reference to the batch, taken when it is enqueued and given back by whoever fills its
/// last slot, so a slot stays valid for its report even after the sender stopped waiting.
struct BatchAck {
    slots: Box<[Slot]>,
    /// The records each pack carries, by their places in the batch.
    packs: Box<[Box<[usize]>]>,
    /// Records failed (rare): their errors, by index.
    errors: Mutex<Vec<(usize, BusError)>>,
    remaining: AtomicUsize,
    done: tokio::sync::Notify,
}

/// One record's place in its batch.
struct Slot {
    /// The batch this slot lies in.
    ack: *const BatchAck,
    /// For the first record of a pack, 1 + the pack's place in `BatchAck::packs`: its report
    /// fills every slot of the pack. 0 for a record sent as it is.
    pack: u32,
    partition: AtomicU32,
    offset: AtomicU64,
}

/// What `complete` fills a slot with.
enum Outcome {
    Delivered(Delivery),
    Failed(BusError),
}

impl BatchAck {
    /// A batch of `n` records, going out as `units` (each record once), with the reports'
    /// reference already taken when `n` is above 0.
    fn new(n: usize, units: &[pack::Unit]) -> Arc<Self> {
        let packs: Box<[Box<[usize]>]> = units
            .iter()
            .filter(|u| !u.rest.is_empty())
            .map(|u| u.members().collect())
            .collect();
        let mut pack_of = vec![0u32; n];
        for (k, members) in packs.iter().enumerate() {
            pack_of[members[0]] = k as u32 + 1;
        }
        let ack = Arc::new_cyclic(|me: &std::sync::Weak<BatchAck>| BatchAck {
            slots: pack_of
                .iter()
                .map(|&pack| Slot {
                    ack: me.as_ptr(),
                    pack,
                    partition: AtomicU32::new(0),
                    offset: AtomicU64::new(0),
                })
                .collect(),
            packs,
            errors: Mutex::new(Vec::new()),
            remaining: AtomicUsize::new(n),
            done: tokio::sync::Notify::new(),
        });
        if n > 0 {
            // The reports' reference, given back in `complete_at` by the last one, through
            // the slots' pointer (the same one).
            let reports = Arc::into_raw(ack.clone());
            debug_assert!(std::ptr::eq(reports, ack.slots[0].ack));
        }
        ack
    }

    /// What librdkafka carries for the `index`-th record: the address of its slot.
    fn opaque(&self, index: usize) -> usize {
        &self.slots[index] as *const Slot as usize
    }

    /// Fill the slot at `opaque` (from [`BatchAck::opaque`]), and if it leads a pack every
    /// slot of the pack. Each slot is filled once.
    ///
    /// # Safety
    /// `opaque` came from `opaque` on a batch whose slot has not been filled yet, and is not
    /// a pack's slot other than its first.
    unsafe fn complete_at(opaque: usize, outcome: Outcome) {
        // SAFETY: an unfilled slot's batch is kept alive by the reports' reference, which is
        // given back only once every slot is filled.
        let slot = unsafe { &*(opaque as *const Slot) };
        let ack_ptr = slot.ack;
        // SAFETY: as above; the slot lies in this batch.
        let ack = unsafe { &*ack_ptr };
        let index = (opaque - ack.slots.as_ptr() as usize) / std::mem::size_of::<Slot>();
        let members = match slot.pack {
            0 => std::slice::from_ref(&index),
            k => &ack.packs[k as usize - 1][..],
        };
        match outcome {
            Outcome::Delivered(d) => {
                for &m in members {
                    ack.slots[m].partition.store(d.partition, Ordering::Relaxed);
                    ack.slots[m].offset.store(d.offset, Ordering::Relaxed);
                }
            }
            Outcome::Failed(e) => {
                let mut errors = ack.errors.lock().expect("batch errors");
                for &m in &members[1..] {
                    // The same kind for each (a full queue is a `Timeout` to every caller).
                    let each = match &e {
                        BusError::Timeout { topic, after } => BusError::Timeout {
                            topic: topic.clone(),
                            after: *after,
                        },
                        other => BusError::Client(format!("in a pack that failed: {other}")),
                    };
                    errors.push((m, each));
                }
                errors.push((members[0], e));
            }
        }
        // Taken before the count falls: once it reaches 0 the batch may be gone.
        let filled = members.len();
        // Release: the stores above are seen by whoever sees the count fall.
        if ack.remaining.fetch_sub(filled, Ordering::AcqRel) == filled {
            // notify_one keeps a permit when nobody waits yet: no lost wakeup.
            ack.done.notify_one();
            // SAFETY: the reports' reference, taken in `new`; this was the last slot, and
            // nothing here touches the batch after it.
            drop(unsafe { Arc::from_raw(ack_ptr) });
        }
    }

    /// Fill the `index`-th slot (and if it leads a pack, the pack's) from the sending side
    /// (a record that never reached librdkafka).
    ///
    /// # Safety
    /// The slot was not handed to librdkafka and is not filled yet, nor is it a pack's slot
    /// other than its first: filling a slot twice gives the reports' reference back twice.
    unsafe fn complete(&self, index: usize, outcome: Outcome) {
        // SAFETY: the caller's contract is `complete_at`'s.
        unsafe { Self::complete_at(self.opaque(index), outcome) }
    }

    async fn wait(&self) -> Vec<Result<Delivery, BusError>> {
        while self.remaining.load(Ordering::Acquire) > 0 {
            self.done.notified().await;
        }
        let mut errors = std::mem::take(&mut *self.errors.lock().expect("batch errors"));
        errors.sort_unstable_by_key(|(index, _)| std::cmp::Reverse(*index));
        let mut out = Vec::with_capacity(self.slots.len());
        for (index, slot) in self.slots.iter().enumerate() {
            if errors.last().is_some_and(|(i, _)| *i == index) {
                let (_, e) = errors.pop().expect("checked");
                out.push(Err(e));
            } else {
                out.push(Ok(Delivery {
                    partition: slot.partition.load(Ordering::Relaxed),
                    offset: slot.offset.load(Ordering::Relaxed),
                }));
            }
        }
        out
    }
}

// SAFETY: a slot's pointer to its batch is only read, and the batch is shared through
// atomics, a lock and `Notify`; the slot's own fields are atomics.
unsafe impl Send for Slot {}
// SAFETY: as above.
unsafe impl Sync for Slot {}

/// The producer's context: routes delivery reports into their batch.
struct BatchContext;

impl ClientContext for BatchContext {}

impl ProducerContext for BatchContext {
    /// The address of the record's slot in its batch ([`BatchAck::opaque`]).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(m) => Outcome::Delivered(Delivery {
                partition: m.partition() as u32,
                offset: m.offset().max(0) as u64,
            }),
            Err((e, _)) => Outcome::Failed(client_err(e.clone())),
        };
        // SAFETY: librdkafka reports each record it took once, with the opaque `enqueue`
        // gave it, and a record it took was not filled by the sender.
        unsafe { BatchAck::complete_at(slot, outcome) }
    }
}

/// A reference to a librdkafka object (a topic handle, a queue), given back when dropped.
struct Native<T> {
    ptr: std::ptr::NonNull<T>,
    give_back: unsafe extern "C" fn(*mut T),
}

impl<T> Native<T> {
    /// `None` when librdkafka gave a null pointer.
    ///
    /// # Safety
    /// `ptr` is a reference the caller owns, which `give_back` releases, and the client it
    /// belongs to outlives the returned value.
    unsafe fn new(ptr: *mut T, give_back: unsafe extern "C" fn(*mut T)) -> Option<Self> {
        std::ptr::NonNull::new(ptr).map(|ptr| Native { ptr, give_back })
    }

    fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

// SAFETY: librdkafka's topic handles and queues are safe to use from any thread.
unsafe impl Send for Native<rdkafka::bindings::rd_kafka_topic_t> {}
// SAFETY: as above.
unsafe impl Sync for Native<rdkafka::bindings::rd_kafka_topic_t> {}
// SAFETY: as above.
unsafe impl Send for Native<rdkafka::bindings::rd_kafka_queue_t> {}
// SAFETY: as above.
unsafe impl Sync for Native<rdkafka::bindings::rd_kafka_queue_t> {}

impl<T> Drop for Native<T> {
    fn drop(&mut self) {
        // SAFETY: owned, given back once (`new`'s contract).
        unsafe { (self.give_back)(self.ptr.as_ptr()) }
    }
}

/// What the producer knows of a topic.
struct KnownTopic {
    partitions: u32,
    /// Producing through it spares each record a lookup of its topic by name (and the C
    /// string made for it).
    handle: Native<rdkafka::bindings::rd_kafka_topic_t>,
}

struct KafkaProducer {
    /// Before `inner`: the handles go back before the client they belong to is destroyed.
    topics: Mutex<HashMap<String, Arc<KnownTopic>>>,
    inner: ThreadedProducer<BatchContext>,
    queue_timeout: Duration,
    packed_topics: Vec<String>,
    /// The bytes a pack may hold ([`pack::MAX_BYTES`], less where librdkafka's
    /// `message.max.bytes` is set lower).
    pack_bytes: usize,
}

impl KafkaProducer {
    fn topic(&self, topic: &str) -> Result<Arc<KnownTopic>, BusError> {
        if let Some(t) = self.topics.lock().expect("topic cache").get(topic) {
            return Ok(t.clone());
        }
        let md = self
            .inner
            .client()
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(client_err)?;
        let partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len() as u32);
        if partitions == 0 {
            return Err(BusError::UnknownTopic(topic.to_string()));
        }
        let name = std::ffi::CString::new(topic)
            .map_err(|_| BusError::Client(format!("topic name {topic:?} holds a NUL byte")))?;
        // SAFETY: a live client and a NUL-terminated name, no topic configuration; the handle
        // is kept in `topics`, which `KafkaProducer` drops ahead of the client.
        let handle = unsafe {
            Native::new(
                rdkafka::bindings::rd_kafka_topic_new(
                    self.inner.client().native_ptr(),
                    name.as_ptr(),
                    std::ptr::null_mut(),
                ),
                rdkafka::bindings::rd_kafka_topic_destroy,
            )
        }
        .ok_or_else(|| BusError::Client(format!("librdkafka refused a handle on {topic}")))?;
        let known = Arc::new(KnownTopic { partitions, handle });
        self.topics
            .lock()
            .expect("topic cache")
            .insert(topic.to_string(), known.clone());
        Ok(known)
    }

    /// Hand one record to librdkafka; `Err` carries librdkafka's error code and text. Its
    /// key is copied, and its payload as [`Payload`] says.
    fn produce(
        &self,
        topic: &KnownTopic,
        r: (&[u8], Payload<'_>, i64),
        partition: u32,
        opaque: usize,
    ) -> Result<(), (RDKafkaErrorCode, String)> {
        let (key, payload, timestamp_ms) = r;
        let (flags, payload) = match payload {
            Payload::Copied(bytes) => (rdkafka::bindings::RD_KAFKA_MSG_F_COPY, bytes),
            Payload::Given(pack) => (rdkafka::bindings::RD_KAFKA_MSG_F_FREE, pack.as_slice()),
        };
        use rdkafka::bindings::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 as Mem;
        use rdkafka::bindings::{
            rd_kafka_vtype_t as V, rd_kafka_vu_s__bindgen_ty_1 as U, rd_kafka_vu_t,
        };
        let vu = |vtype, u| rd_kafka_vu_t { vtype, u };
        let mem = |b: &[u8]| U {
            mem: Mem {
                ptr: b.as_ptr() as *mut std::ffi::c_void,
                size: b.len(),
            },
        };
        let vus = [
            vu(
                V::RD_KAFKA_VTYPE_RKT,
                U {
                    rkt: topic.handle.as_ptr(),
                },
            ),
            vu(
                V::RD_KAFKA_VTYPE_PARTITION,
                U {
                    i32_: partition as i32,
                },
            ),
            vu(V::RD_KAFKA_VTYPE_MSGFLAGS, U { i: flags }),
            vu(V::RD_KAFKA_VTYPE_VALUE, mem(payload)),
            vu(V::RD_KAFKA_VTYPE_KEY, mem(key)),
            vu(
                V::RD_KAFKA_VTYPE_OPAQUE,
                U {
                    ptr: opaque as *mut std::ffi::c_void,
                },
            ),
            vu(V::RD_KAFKA_VTYPE_TIMESTAMP, U { i64_: timestamp_ms }),
        ];
        // SAFETY: a live client, a handle it made, and buffers that outlive the call (the key
        // is always copied; the payload is copied, F_COPY, or a `NativePack` from
        // librdkafka's own allocator that it frees, F_FREE, from this call's success on: the
        // caller forgets it then). On failure librdkafka keeps nothing and frees nothing.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_produceva(
                self.inner.client().native_ptr(),
                vus.as_ptr(),
                vus.len(),
            )
        };
        if error.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null error from librdkafka, read and then given back once.
        unsafe {
            let code = RDKafkaErrorCode::from(rdkafka::bindings::rd_kafka_error_code(error));
            let text = std::ffi::CStr::from_ptr(rdkafka::bindings::rd_kafka_error_string(error))
                .to_string_lossy()
                .into_owned();
            rdkafka::bindings::rd_kafka_error_destroy(error);
            Err((code, text))
        }
    }

    /// Queue `records` in librdkafka, in order, waiting for room where the queue is full;
    /// the returned batch fills in as the broker acknowledges them. A topic named in
    /// `packed_topics` goes out packed ([`pack`]).
    async fn enqueue(&self, topic: &str, records: Vec<Outgoing>) -> Arc<BatchAck> {
        if records.is_empty() {
            return BatchAck::new(0, &[]);
        }
        let known = match self.topic(topic) {
            Ok(t) => t,
            Err(e) => {
                // No packs: each record fails alone.
                let ack = BatchAck::new(records.len(), &[]);
                let text = e.to_string();
                for index in 0..records.len() {
                    // SAFETY: no record of this batch was handed to librdkafka, and none is
                    // in a pack.
                    unsafe { ack.complete(index, Outcome::Failed(BusError::Client(text.clone()))) };
                }
                return ack;
            }
        };
        let packed = self.packed_topics.iter().any(|t| t == topic);
        let units = pack::plan(
            &records,
            known.partitions,
            packed.then_some(self.pack_bytes),
        );
        let ack = BatchAck::new(records.len(), &units);
        // Units not handed over yet: failed if this future is dropped on the way, so that
        // the batch is not left waiting (and kept) for reports that will never come.
        let mut unsent = Unsent {
            ack: ack.clone(),
            leads: units.iter().map(|u| u.lead).collect(),
            next: 0,
            topic,
        };
        for (u, unit) in units.iter().enumerate() {
            let lead = unit.lead;
            let mut packed = None;
            let record = if unit.rest.is_empty() {
                let r = &records[lead];
                (&r.key[..], Payload::Copied(&r.payload), r.timestamp_ms)
            } else {
                let pack = packed.insert(NativePack::of(unit.members().map(|m| &records[m])));
                // Keyed as its first record (its partition is set, the key only says whose it
                // is to a reader that does not unpack). Stamped as its latest record: a reader
                // starting at a time (`offsets_for_time`) then starts at or before every
                // record of that time, never after one.
                let latest = unit.members().map(|m| records[m].timestamp_ms).max();
                (
                    &records[lead].key[..],
                    Payload::Given(pack),
                    latest.unwrap_or_default(),
                )
            };
            // A full local queue waits for room up to `queue_timeout`, then fails the record
            // with `Timeout` (the gateway's 429); records after it still get their chance.
            // The deadline is taken when the queue is first found full: the thread that
            // enqueues spent a twentieth of its time reading the clock, once a record here
            // and in librdkafka besides.
            let mut deadline = None;
            loop {
                match self.produce(&known, record, unit.partition, ack.opaque(lead)) {
                    Ok(()) => {
                        // librdkafka's now, to free once the record is done with.
                        if let Some(p) = packed.take() {
                            p.given();
                        }
                        break;
                    }
                    Err((RDKafkaErrorCode::QueueFull, _)) => {
                        let now = tokio::time::Instant::now();
                        if now >= *deadline.get_or_insert(now + self.queue_timeout) {
                            unsent.next = u + 1;
                            // SAFETY: librdkafka refused the record; its slots are filled
                            // once, here (taken from the guard above).
                            unsafe {
                                ack.complete(
                                    lead,
                                    Outcome::Failed(BusError::Timeout {
                                        topic: topic.to_string(),
                                        after: self.queue_timeout,
                                    }),
                                )
                            };
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((code, text)) => {
                        unsent.next = u + 1;
                        // SAFETY: as for a full queue.
                        unsafe {
                            ack.complete(
                                lead,
                                Outcome::Failed(BusError::Client(format!("{code}: {text}"))),
                            )
                        };
                        break;
                    }
                }
            }
            unsent.next = u + 1;
        }
        drop(unsent);
        ack
    }
}

/// A record's payload as `KafkaProducer::produce` hands it over.
#[derive(Clone, Copy)]
enum Payload<'a> {
    /// Copied by librdkafka (`F_COPY`): the caller's again once `produce` returns.
    Copied(&'a [u8]),
    /// Taken over by librdkafka if `produce` returns `Ok` (`F_FREE`; the caller then forgets
    /// it, see [`NativePack::given`]), left to the caller otherwise.
    Given(&'a NativePack),
}

/// A pack written straight into memory from librdkafka's allocator, for librdkafka to free
/// once it is done with the record (delivered, failed or purged; `RD_KAFKA_MSG_F_FREE`): a
/// pack handed over as a copy (`F_COPY`) was copied again by librdkafka, 2.0–2.2 % of a stream
/// worker's samples for the copy alone, 4.0–4.5 % under `rd_kafka_produceva` with what went
/// with it (0.7 % after). Freed here unless given.
struct NativePack {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: it owns its memory alone, as a `Vec<u8>` does.
unsafe impl Send for NativePack {}
// SAFETY: as above; shared, it is only read.
unsafe impl Sync for NativePack {}

impl NativePack {
    /// The pack of `members` (more than one record), written once. Out of memory, it ends
    /// the process as any allocation in Rust (or in librdkafka, which asserts) does.
    fn of<'a>(members: impl Iterator<Item = &'a Outgoing> + Clone) -> NativePack {
        let len = pack::size(members.clone());
        // SAFETY: plain allocation (no client needed); released below or by librdkafka.
        let raw = unsafe { rdkafka::bindings::rd_kafka_mem_malloc(std::ptr::null_mut(), len) };
        let Some(ptr) = std::ptr::NonNull::new(raw as *mut u8) else {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<u8>(len).expect("a pack's size fits a layout"),
            );
        };
        let native = NativePack { ptr, len };
        // SAFETY: `len` bytes of fresh memory this value owns alone, not yet written (so as
        // `MaybeUninit`); `write_into` writes every one of them or panics (and the drop frees
        // them unread).
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                native.ptr.as_ptr().cast::<std::mem::MaybeUninit<u8>>(),
                len,
            )
        };
        pack::write_into(members, out);
        native
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes this value owns, all written by `of`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// librdkafka took it (`produce` returned `Ok`): it frees it, not this.
    fn given(self) {
        std::mem::forget(self);
    }
}

impl Drop for NativePack {
    fn drop(&mut self) {
        // SAFETY: memory from `rd_kafka_mem_malloc` that librdkafka did not take, freed once.
        unsafe {
            rdkafka::bindings::rd_kafka_mem_free(std::ptr::null_mut(), self.ptr.as_ptr().cast())
        }
    }
}

/// The units of a batch from `next` on (each a record or a pack, by its first record's
/// place), which `enqueue` has not handed to librdkafka (nor filled): failed when this is
/// dropped.
struct Unsent<'a> {
    ack: Arc<BatchAck>,
    leads: Vec<usize>,
    next: usize,
    topic: &'a str,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        for &lead in &self.leads[self.next.min(self.leads.len())..] {
            // SAFETY: units from `next` on were neither handed over nor filled: `enqueue`
            // moves `next` past a unit before filling it, and right after handing it over,
            // with no await (where this could be dropped) in between. Filling a pack's first
            // slot fills the pack.
            unsafe {
                self.ack.complete(
                    lead,
                    Outcome::Failed(BusError::Client(format!(
                        "sending to {} was abandoned before this record was queued",
                        self.topic
                    ))),
                )
            };
        }
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: Bytes,
        timestamp_ms: i64,
    ) -> Result<Delivery, BusError> {
        let one = Outgoing {
            key: Bytes::copy_from_slice(key),
            payload,
            timestamp_ms,
            key_hash: None,
        };
        self.send_batch(topic, vec![one])
            .await
            .pop()
            .expect("one result per record")
    }

    async fn send_batch(
        &self,
        topic: &str,
        records: Vec<Outgoing>,
    ) -> Vec<Result<Delivery, BusError>> {
        self.enqueue(topic, records).await.wait().await
    }

    async fn hand_over(&self, topic: &str, records: Vec<Outgoing>) -> Acknowledgements {
        let ack = self.enqueue(topic, records).await;
        Box::pin(async move { ack.wait().await })
    }
}

/// How many messages one call into librdkafka takes at most.
const CONSUME_CHUNK: usize = 512;

/// At most how many records a poll reserves room for ahead, beyond what it holds (see
/// `drain`): a stream worker's whole poll; a reader that asks for more grows past it.
const POLL_ROOM: usize = 8192;

struct KafkaConsumer {
    /// Before `inner`: the queue goes back before the client it belongs to is destroyed.
    queue: Native<rdkafka::bindings::rd_kafka_queue_t>,
    inner: StreamConsumer,
    topic: Arc<str>,
    assigned: Vec<u32>,
    /// After a seek, records fetched before it (below the new position) may still be queued.
    skip_below: HashMap<u32, u64>,
    /// Whole messages taken from librdkafka after the poll that took them was full (packs
    /// unpacked, [`pack`]): the next poll starts with them.
    held: std::collections::VecDeque<Vec<Record>>,
    /// The topic is one this bus packs (`KafkaConfig::packed_topics`).
    packed: bool,
}

impl KafkaConsumer {
    /// `(partition, next offset)` pairs of this consumer's topic, as librdkafka takes them.
    fn positions(&self, positions: &[(u32, u64)]) -> Result<TopicPartitionList, BusError> {
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in positions {
            tpl.add_partition_offset(&self.topic, *partition as i32, Offset::Offset(*next as i64))
                .map_err(client_err)?;
        }
        Ok(tpl)
    }

    fn wanted(&self, partition: u32, offset: u64) -> bool {
        self.skip_below
            .get(&partition)
            .is_none_or(|below| offset >= *below)
    }

    fn take(&self, m: &rdkafka::message::BorrowedMessage<'_>, out: &mut Vec<Record>) {
        self.take_message(
            m.partition(),
            m.offset(),
            m.key().unwrap_or_default(),
            m.payload().unwrap_or_default(),
            m.timestamp().to_millis(),
            out,
        )
    }

    /// The records of one message of this consumer's topic, into `out` unless a seek passed
    /// them: the message itself, or what its pack carries ([`pack`]), all at its offset. The
    /// bytes are copied out of librdkafka's message; a message without a timestamp is stamped 0.
    fn take_message(
        &self,
        partition: i32,
        offset: i64,
        key: &[u8],
        payload: &[u8],
        timestamp_ms: Option<i64>,
        out: &mut Vec<Record>,
    ) {
        let (partition, offset) = (partition as u32, offset.max(0) as u64);
        if !self.wanted(partition, offset) {
            return;
        }
        let record = |key: Bytes, payload: Bytes, timestamp_ms: i64| Record {
            topic: self.topic.clone(),
            partition,
            offset,
            key,
            payload,
            timestamp_ms,
        };
        if pack::is_pack(payload) {
            let whole = Bytes::copy_from_slice(payload);
            if let Some(items) = pack::unpack(&whole) {
                out.extend(items.into_iter().map(|(k, p, t)| record(k, p, t)));
                return;
            }
            // Not a pack after all: handed on whole, for its reader to refuse.
            out.push(record(
                Bytes::copy_from_slice(key),
                whole,
                timestamp_ms.unwrap_or(0),
            ));
            return;
        }
        out.push(record(
            Bytes::copy_from_slice(key),
            Bytes::copy_from_slice(payload),
            timestamp_ms.unwrap_or(0),
        ));
    }

    /// Take what librdkafka holds already, up to `max` records in `out`, without waiting:
    /// a few calls a poll instead of one (and a clock read, a waker's registration) a record,
    /// which was a sixth of a stream worker's time. A pack's records all come in the poll that
    /// reads it, so a poll may hold more than `max`.
    ///
    /// The batch call serves the queue in librdkafka's callback mode, where an op it cannot
    /// return as a message aborts the process. rust-rdkafka asks for commit results as events,
    /// so every commit librdkafka makes on its own (auto-commit's timer, or partitions
    /// leaving the assignment with auto-commit on) queues a result here that would abort it:
    /// what keeps this safe is **auto-commit off**, set after the extra settings
    /// (`consumer_config`; the test `extra_settings_cannot_take_the_commits_from_the_bus`).
    /// The bus's own commits are asynchronous without a reply queue, so nothing is queued for
    /// them; a rust-rdkafka upgrade that reports them as events must be checked against this.
    /// No rebalance arrives either (the assignment is static). What does arrive beside records:
    /// consumer errors, returned as messages and logged here; librdkafka's own errors and log
    /// lines, which the call hands to librdkafka's printer (stderr, its own format) instead of
    /// rust-rdkafka's, so they bypass `tracing`.
    ///
    /// A message is never split between polls (a pack's records all come in one, so a commit
    /// after a whole poll never falls inside a pack), and a poll stops short of `max` only when
    /// librdkafka holds nothing more (a reader may take a short poll for caught up): the
    /// message that reaches `max` is taken whole, so a poll holds up to `max` and one pack
    /// more. On a topic this bus packs, a call asks for no more messages than full packs could
    /// fill what is left, so none is taken past that one. A message taken past it (a topic
    /// packed by a process that does not say so here) waits whole for the next poll.
    fn drain(&mut self, out: &mut Vec<Record>, max: usize) {
        use rdkafka::bindings as rd;
        while out.len() < max {
            let Some(message) = self.held.pop_front() else {
                break;
            };
            out.extend(message);
        }
        let per_message = if self.packed { pack::MAX_ITEMS } else { 1 };
        let mut batch = [std::ptr::null_mut::<rd::rd_kafka_message_t>(); CONSUME_CHUNK];
        while out.len() < max && self.held.is_empty() {
            let want = ((max - out.len()) / per_message).clamp(1, CONSUME_CHUNK);
            // SAFETY: a live queue; `batch` has room for `want` pointers.
            let got = unsafe {
                rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, batch.as_mut_ptr(), want)
            };
            if got < 0 {
                tracing::warn!(topic = %self.topic, "kafka consumer: the queue could not be read (retrying)");
                return;
            }
            let got = got as usize;
            if got > 0 {
                // Room for the poll at once when a full call says more is waiting (grown by
                // doubling, a poll of a few thousand records copied every record it held
                // again, a percent of a stream worker's time), else for what came: an idle or
                // trickling reader's polls allocate only for what they hold, and a reader with
                // a large `max` no more than `POLL_ROOM` records ahead.
                let left = max - out.len();
                let need = if got == want { left } else { got * per_message };
                out.reserve(need.min(left).min(POLL_ROOM) + per_message);
            }
            for &m in &batch[..got] {
                // SAFETY: librdkafka filled the first `got` entries with messages that stay
                // valid until destroyed, below, once each.
                let msg = unsafe { &*m };
                if msg.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    // Passing trouble, as in `poll`: librdkafka recovers by itself.
                    let code = RDKafkaErrorCode::from(msg.err);
                    tracing::warn!(topic = %self.topic, error = %code, "kafka consumer error (retrying)");
                } else {
                    let bytes = |p: *mut std::ffi::c_void, len: usize| -> &[u8] {
                        if p.is_null() || len == 0 {
                            &[]
                        } else {
                            // SAFETY: librdkafka's `len` bytes at `p`, alive with the message
                            // (copied out before it is destroyed).
                            unsafe { std::slice::from_raw_parts(p as *const u8, len) }
                        }
                    };
                    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
                    // SAFETY: a live message.
                    let at = unsafe { rd::rd_kafka_message_timestamp(m, &mut kind) };
                    // As rust-rdkafka reads it for `record`: -1 is no timestamp.
                    let timestamp_ms = match kind {
                        rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => None,
                        _ if at == -1 => None,
                        _ => Some(at),
                    };
                    let before = out.len();
                    self.take_message(
                        msg.partition,
                        msg.offset,
                        bytes(msg.key, msg.key_len),
                        bytes(msg.payload, msg.len),
                        timestamp_ms,
                        out,
                    );
                    // Taken after the poll was full (only packs can fill it before `want`
                    // runs out): waits whole.
                    if before >= max && out.len() > before {
                        self.held.push_back(out.split_off(before));
                    }
                }
                // SAFETY: each message is destroyed once, after its last use.
                unsafe { rd::rd_kafka_message_destroy(m) };
            }
            if got < want {
                return;
            }
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, BusError> {
        // At least one, as the embedded bus takes it: held messages go first.
        let max = max.max(1);
        let mut out = Vec::new();
        if self.assigned.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(out);
        }
        self.drain(&mut out, max);
        let deadline = tokio::time::Instant::now() + timeout;
        // Nothing held: wait for the first record, then take what came with it.
        while out.is_empty() {
            match tokio::time::timeout_at(deadline, self.inner.recv()).await {
                Err(_) => return Ok(out),
                Ok(Ok(m)) => self.take(&m, &mut out),
                // librdkafka reports passing trouble (coordinator moving, a broker restarting)
                // through the message stream and recovers by itself: say so and keep going.
                Ok(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "kafka consumer error (retrying)");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        self.drain(&mut out, max);
        Ok(out)
    }

    async fn commit(&mut self, partition: u32, next: u64) -> Result<(), BusError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition as i32, Offset::Offset(next as i64))
            .map_err(client_err)?;
        // Async: a commit lost in a crash means a record is read again, never skipped.
        self.inner
            .commit(&tpl, CommitMode::Async)
            .map_err(client_err)
    }

    async fn commit_all(&mut self, positions: &[(u32, u64)]) -> Result<(), BusError> {
        if positions.is_empty() {
            return Ok(());
        }
        let tpl = self.positions(positions)?;
        self.inner
            .commit(&tpl, CommitMode::Async)
            .map_err(client_err)
    }

    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        self.skip_below.insert(partition, offset);
        // Assigning again sends every partition back to its position (the sought one, the
        // others to their group's commit), and librdkafka drops what it held of them: so do
        // these.
        self.held.clear();
        let mut tpl = TopicPartitionList::new();
        for p in &self.assigned {
            let o = if *p == partition {
                Offset::Offset(offset as i64)
            } else {
                Offset::Stored
            };
            tpl.add_partition_offset(&self.topic, *p as i32, o)
                .map_err(client_err)?;
        }
        self.inner.assign(&tpl).map_err(client_err)
    }

    fn assigned(&self) -> Vec<u32> {
        self.assigned.clone()
    }

    async fn commit_last(&mut self, last: &[(u32, u64)]) -> Result<(), BusError> {
        if last.is_empty() {
            return Ok(());
        }
        let tpl = self.positions(last)?;
        // Sync, all in one request: answered after the asynchronous commits made before it (one
        // coordinator, one connection, requests in order), so the group's position is known
        // once this returns, and the consumer can be let go without waiting for it to close.
        // (An earlier commit that librdkafka retries can still land after it and set the group
        // back: records are read again, never skipped.) It waits as long as the coordinator
        // takes, through an outage too, as a blocking close did.
        self.inner
            .commit(&tpl, CommitMode::Sync)
            .map_err(client_err)
    }

    fn let_go(self: Box<Self>) {
        // Closing a consumer waits for its commits in flight (after `commit_last`, only a
        // retried earlier one) and sleeps 100 ms in librdkafka's destruction: a bounded
        // stage's end waited for it.
        let_go(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(partition: u32, offset: u64) -> Outcome {
        Outcome::Delivered(Delivery { partition, offset })
    }

    /// `n` records, each going out alone.
    fn alone(n: usize) -> Vec<pack::Unit> {
        (0..n).map(|i| pack::Unit::of(0, &[i])).collect()
    }

    /// One report fills every slot of its pack, a failed one fails each of them, and a pack
    /// never handed over is failed whole when the sender gives up.
    #[test]
    fn a_packs_report_fills_all_its_records_and_only_theirs() {
        let units = vec![
            pack::Unit::of(1, &[0, 2, 4]),
            pack::Unit::of(0, &[1]),
            pack::Unit::of(2, &[3, 5]),
            pack::Unit::of(3, &[6, 7]),
        ];
        let ack = BatchAck::new(8, &units);
        // SAFETY: each unit's first slot, reported once.
        unsafe {
            BatchAck::complete_at(ack.opaque(0), delivered(1, 40));
            BatchAck::complete_at(ack.opaque(1), delivered(0, 7));
            BatchAck::complete_at(
                ack.opaque(3),
                Outcome::Failed(BusError::Client("too large".into())),
            );
        }
        // The last pack was never handed over.
        drop(Unsent {
            ack: ack.clone(),
            leads: vec![0, 1, 3, 6],
            next: 3,
            topic: "floodcmd.status",
        });
        let results = futures::executor::block_on(ack.wait());
        let at = |partition, offset| Delivery { partition, offset };
        for i in [0, 2, 4] {
            assert_eq!(*results[i].as_ref().unwrap(), at(1, 40));
        }
        assert_eq!(*results[1].as_ref().unwrap(), at(0, 7));
        for i in [3, 5] {
            let e = results[i].as_ref().unwrap_err().to_string();
            assert!(e.contains("too large"), "{i}: {e}");
        }
        for i in [6, 7] {
            let e = results[i].as_ref().unwrap_err().to_string();
            assert!(e.contains("abandoned"), "{i}: {e}");
        }
    }

    #[test]
    fn reports_from_other_threads_fill_their_own_slots_in_any_order() {
        let n = 1000;
        let ack = BatchAck::new(n, &alone(n));
        let opaques: Vec<usize> = (0..n).map(|i| ack.opaque(i)).collect();
        // As librdkafka's delivery thread would: reports in an order of their own, off the
        // sender's thread, one of them a failure.
        let reporter = std::thread::spawn(move || {
            for (i, opaque) in opaques.into_iter().enumerate().rev() {
                let outcome = if i == 17 {
                    Outcome::Failed(BusError::Client("broker said no".into()))
                } else {
                    delivered((i % 4) as u32, i as u64 * 10)
                };
                // SAFETY: each opaque is of this batch and reported once.
                unsafe { BatchAck::complete_at(opaque, outcome) };
            }
        });
        let results = futures::executor::block_on(ack.wait());
        reporter.join().unwrap();
        assert_eq!(results.len(), n);
        for (i, r) in results.iter().enumerate() {
            match r {
                Err(e) => {
                    assert_eq!(i, 17);
                    assert!(e.to_string().contains("broker said no"), "{e}");
                }
                Ok(d) => assert_eq!(
                    *d,
                    Delivery {
                        partition: (i % 4) as u32,
                        offset: i as u64 * 10
                    }
                ),
            }
        }
        assert!(results[17].is_err());
    }

    #[test]
    fn a_batch_is_freed_by_its_last_report_even_when_nobody_waits() {
        let ack = BatchAck::new(2, &alone(2));
        let first = ack.opaque(0);
        let second = ack.opaque(1);
        let weak = Arc::downgrade(&ack);
        // The sender stops waiting (its future dropped) while both records are in flight.
        drop(ack);
        assert!(
            weak.upgrade().is_some(),
            "the reports keep the batch while any is owed"
        );
        // SAFETY: each opaque is of this batch and reported once.
        unsafe { BatchAck::complete_at(second, delivered(0, 1)) };
        assert!(weak.upgrade().is_some());
        unsafe { BatchAck::complete_at(first, delivered(0, 0)) };
        assert!(
            weak.upgrade().is_none(),
            "the last report gives the batch back"
        );
        // An empty batch owes no reports and holds no reference for them.
        let empty = BatchAck::new(0, &[]);
        let weak = Arc::downgrade(&empty);
        assert!(futures::executor::block_on(empty.wait()).is_empty());
        drop(empty);
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn records_never_queued_are_failed_when_the_sender_gives_up() {
        let ack = BatchAck::new(3, &alone(3));
        // SAFETY: the first record's report, once.
        unsafe { BatchAck::complete_at(ack.opaque(0), delivered(2, 5)) };
        // `enqueue` dropped after handing over the first record only.
        drop(Unsent {
            ack: ack.clone(),
            leads: vec![0, 1, 2],
            next: 1,
            topic: "floodcmd.status",
        });
        let results = futures::executor::block_on(ack.wait());
        assert_eq!(
            *results[0].as_ref().unwrap(),
            Delivery {
                partition: 2,
                offset: 5
            }
        );
        for r in &results[1..] {
            let e = r.as_ref().unwrap_err().to_string();
            assert!(
                e.contains("abandoned") && e.contains("floodcmd.status"),
                "{e}"
            );
        }
    }

    #[test]
    fn extra_settings_override_a_roles_defaults() {
        let mut config = KafkaConfig::new("127.0.0.1:9");
        let consumer = config.client_with(CONSUMER_DEFAULTS);
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(consumer.get("bootstrap.servers"), Some("127.0.0.1:9"));
        config.extra = vec![
            ("fetch.queue.backoff.ms".into(), "500".into()),
            ("linger.ms".into(), "20".into()),
        ];
        assert_eq!(
            config
                .client_with(CONSUMER_DEFAULTS)
                .get("fetch.queue.backoff.ms"),
            Some("500")
        );
        let producer = config.client_with(PRODUCER_DEFAULTS);
        assert_eq!(producer.get("linger.ms"), Some("20"));
    }

    /// A pack written into librdkafka's memory is byte for byte the pack written in Rust's,
    /// whatever the records.
    #[test]
    fn a_pack_in_librdkafkas_memory_is_the_pack_itself() {
        let records: Vec<Outgoing> = (0..300)
            .map(|i| Outgoing {
                key: Bytes::from(format!("UP-{i:03}")),
                payload: Bytes::from("x".repeat(i % 7)),
                timestamp_ms: 1_780_000_000_000 + i as i64,
                key_hash: None,
            })
            .collect();
        for n in [2, 3, 256, 300] {
            let native = NativePack::of(records[..n].iter());
            assert_eq!(native.as_slice(), &pack::write(records[..n].iter())[..]);
            let back = pack::unpack(&Bytes::copy_from_slice(native.as_slice())).unwrap();
            assert_eq!(back.len(), n);
            assert_eq!(back[n - 1].0, records[n - 1].key);
            assert_eq!(back[n - 1].2, records[n - 1].timestamp_ms);
        }
    }

    /// Every client, whatever its role, reconnects soon after its bootstrap connection is let
    /// go, unless the settings say otherwise.
    #[test]
    fn every_client_reconnects_soon_unless_the_settings_say_otherwise() {
        let mut config = KafkaConfig::new("127.0.0.1:9");
        for set in [
            config.client(),
            producer_config(&config),
            consumer_config(&config, "stream"),
        ] {
            assert_eq!(set.get("reconnect.backoff.ms"), Some("10"));
        }
        config.extra = vec![("reconnect.backoff.ms".into(), "250".into())];
        for set in [
            config.client(),
            producer_config(&config),
            consumer_config(&config, "stream"),
        ] {
            assert_eq!(set.get("reconnect.backoff.ms"), Some("250"));
        }
    }

    #[test]
    fn extra_settings_cannot_loosen_what_the_producer_guarantees() {
        let mut config = KafkaConfig::new("127.0.0.1:9");
        config.extra = vec![
            ("acks".into(), "1".into()),
            ("enable.idempotence".into(), "false".into()),
        ];
        let set = producer_config(&config);
        assert_eq!(set.get("acks"), Some("all"));
        assert_eq!(set.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn extra_settings_cannot_take_the_commits_from_the_bus() {
        let mut config = KafkaConfig::new("127.0.0.1:9");
        config.extra = vec![
            ("enable.auto.commit".into(), "true".into()),
            ("enable.auto.offset.store".into(), "true".into()),
            ("auto.offset.reset".into(), "latest".into()),
            ("group.id".into(), "someone-else".into()),
            ("fetch.wait.max.ms".into(), "100".into()),
        ];
        let set = consumer_config(&config, "stream");
        assert_eq!(set.get("enable.auto.commit"), Some("false"));
        assert_eq!(set.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(set.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(set.get("group.id"), Some("stream"));
        assert_eq!(set.get("fetch.wait.max.ms"), Some("100"));
    }
}
