//! The Kafka bus against a real broker (`scripts/kafka.sh start`; `FLOODCMD_KAFKA` names it):
//! the same semantics the stages rely on from the embedded bus.

use bytes::Bytes;
use floodcmd_bus::{KafkaBus, KafkaConfig};
use floodcmd_model::bus::{partition_for, Assignment, Bus, BusError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn bootstrap() -> String {
    std::env::var("FLOODCMD_KAFKA").expect(
        "FLOODCMD_KAFKA is not set: these tests need a real broker. Run the test command from the README \
         (scripts/test.sh), or start one with scripts/kafka.sh start and export FLOODCMD_KAFKA=127.0.0.1:19092",
    )
}

fn unique(name: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test.{name}.{n}")
}

/// A record timestamp `offset_ms` after now. Stamps near 1970 are past the broker's retention,
/// and its retention check may delete them mid-test.
fn stamp(offset_ms: i64) -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + offset_ms
}

async fn bus() -> KafkaBus {
    KafkaBus::new(KafkaConfig::new(bootstrap())).unwrap()
}

async fn read_n(
    c: &mut Box<dyn floodcmd_model::bus::Consumer>,
    n: usize,
) -> Vec<floodcmd_model::bus::Record> {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} records arrived",
            out.len()
        );
        out.extend(c.poll(1000, Duration::from_millis(500)).await.unwrap());
    }
    out
}

/// `n` records keyed `k0`, `k1`, ... (so spread over the partitions), each its number.
async fn send_keyed(bus: &KafkaBus, topic: &str, n: u32) {
    let p = bus.producer();
    for i in 0..n {
        p.send(
            topic,
            format!("k{i}").as_bytes(),
            Bytes::from(i.to_string()),
            stamp(i as i64),
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_keep_their_order_and_land_where_the_embedded_bus_puts_them() {
    let bus = bus().await;
    let topic = unique("order");
    bus.ensure_topic(&topic, 4).await.unwrap();
    bus.ensure_topic(&topic, 4)
        .await
        .expect("creating an existing topic is fine");
    assert_eq!(bus.partitions(&topic).await.unwrap(), 4);
    let p = bus.producer();
    for i in 0..200u32 {
        let key = format!("WL-{}", i % 9);
        let d = p
            .send(
                &topic,
                key.as_bytes(),
                Bytes::from(i.to_string()),
                stamp(1_000 + i as i64),
            )
            .await
            .unwrap();
        assert_eq!(d.partition, partition_for(key.as_bytes(), 4));
    }
    let mut c = bus
        .consumer("g-order", &topic, Assignment::All)
        .await
        .unwrap();
    let got = read_n(&mut c, 200).await;
    for k in 0..9u32 {
        let key = format!("WL-{k}");
        let values: Vec<u32> = got
            .iter()
            .filter(|r| r.key == key.as_bytes())
            .map(|r| std::str::from_utf8(&r.payload).unwrap().parse().unwrap())
            .collect();
        let expect: Vec<u32> = (0..200).filter(|i| i % 9 == k).collect();
        assert_eq!(values, expect, "{key}: every record once, in order");
    }
    assert_eq!(
        bus.end_offsets(&topic).await.unwrap().iter().sum::<u64>(),
        200
    );
}

/// A reader that ends commits its last positions with `commit_last` and lets the consumer go
/// (its client closed on another thread): the group has every partition's position, and a
/// consumer of the group after it has nothing left to read. (That the commit is the group's
/// when `commit_last` returns, not a moment later, no test here can tell from a commit that
/// lands a few milliseconds after: a lookup takes longer than that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_commits_of_several_partitions_are_the_groups_and_survive_letting_the_consumer_go() {
    let bus = bus().await;
    let topic = unique("last");
    bus.ensure_topic(&topic, 3).await.unwrap();
    send_keyed(&bus, &topic, 60).await;
    let ends = bus.end_offsets(&topic).await.unwrap();
    let mut c = bus
        .consumer("g-last", &topic, Assignment::All)
        .await
        .unwrap();
    read_n(&mut c, 60).await;
    let last: Vec<(u32, u64)> = (0..3).map(|p| (p, ends[p as usize])).collect();
    c.commit_last(&last).await.unwrap();
    let committed = bus.committed("g-last", &topic).await.unwrap();
    c.let_go();
    assert_eq!(
        committed,
        ends.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
        "every partition's last position is the group's as soon as commit_last returns"
    );
    let mut again = bus
        .consumer("g-last", &topic, Assignment::All)
        .await
        .unwrap();
    assert!(
        again
            .poll(100, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "a consumer of the group after it has nothing left to read"
    );
}

/// A fresh 3-partition topic holding 90 keyed records, each partition at least `at_least`,
/// all read by a consumer of `group`: the topic, its end offsets and the consumer.
async fn three_partitions_read(
    bus: &KafkaBus,
    name: &str,
    group: &str,
    at_least: u64,
) -> (String, Vec<u64>, Box<dyn floodcmd_model::bus::Consumer>) {
    let topic = unique(name);
    bus.ensure_topic(&topic, 3).await.unwrap();
    send_keyed(bus, &topic, 90).await;
    let ends = bus.end_offsets(&topic).await.unwrap();
    assert!(
        ends.iter().all(|e| *e >= at_least),
        "every partition holds a few: {ends:?}"
    );
    let mut c = bus.consumer(group, &topic, Assignment::All).await.unwrap();
    read_n(&mut c, 90).await;
    (topic, ends, c)
}

/// Wait (up to 15 s) until `group`'s commits in `topic` are `want`: a commit is sent without
/// waiting for its answer.
async fn wait_for_commits(bus: &KafkaBus, group: &str, topic: &str, want: &[Option<u64>]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let committed = bus.committed(group, topic).await.unwrap();
        if committed == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group has {committed:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lookup of a group's commits gives each partition the group committed in its own
/// position and `None` for the one it never committed in, and all `None` for a group that
/// never committed; a group name that librdkafka cannot carry is refused at once, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_commits_are_looked_up_per_partition_and_a_partition_never_committed_is_none() {
    let bus = bus().await;
    let (topic, ends, mut c) = three_partitions_read(&bus, "lookup", "g-lookup", 2).await;
    c.commit_all(&[(0, ends[0]), (2, ends[2] - 1)])
        .await
        .unwrap();
    wait_for_commits(
        &bus,
        "g-lookup",
        &topic,
        &[Some(ends[0]), None, Some(ends[2] - 1)],
    )
    .await;
    c.let_go();
    assert_eq!(
        bus.committed("g-lookup-never", &topic).await.unwrap(),
        vec![None, None, None]
    );
    let refused = bus.committed("bad\0group", &topic).await.unwrap_err();
    assert!(
        refused.to_string().contains("NUL"),
        "the refusal names what is wrong: {refused}"
    );
}

/// Positions of several partitions committed together (one request, not waited for) become
/// the group's, each partition its own, and a consumer of the group resumes at each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_of_several_partitions_committed_together_are_each_the_groups() {
    let bus = bus().await;
    let (topic, ends, mut c) = three_partitions_read(&bus, "together", "g-together", 3).await;
    // A different position in each partition: a commit that mixed them up would show.
    let positions: Vec<(u32, u64)> = (0..3).map(|p| (p, ends[p as usize] - p as u64)).collect();
    c.commit_all(&positions).await.unwrap();
    let want: Vec<Option<u64>> = positions.iter().map(|(_, n)| Some(*n)).collect();
    wait_for_commits(&bus, "g-together", &topic, &want).await;
    c.let_go();
    let mut again = bus
        .consumer("g-together", &topic, Assignment::All)
        .await
        .unwrap();
    let rest = read_n(&mut again, 3).await;
    let mut at: Vec<(u32, u64)> = rest.iter().map(|r| (r.partition, r.offset)).collect();
    at.sort();
    assert_eq!(
        at,
        vec![(1, ends[1] - 1), (2, ends[2] - 2), (2, ends[2] - 1)],
        "the group resumes at each partition's own position"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_at_its_groups_commit() {
    let bus = bus().await;
    let topic = unique("resume");
    bus.ensure_topic(&topic, 1).await.unwrap();
    let p = bus.producer();
    for i in 0..50u32 {
        p.send(&topic, b"k", Bytes::from(i.to_string()), stamp(i as i64))
            .await
            .unwrap();
    }
    {
        let mut c = bus
            .consumer("g-resume", &topic, Assignment::All)
            .await
            .unwrap();
        let first = read_n(&mut c, 20).await;
        let cut = first[19].offset + 1;
        c.commit(0, cut).await.unwrap();
        // Commits are asynchronous; give the broker a moment before the consumer goes away.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut again = bus
        .consumer("g-resume", &topic, Assignment::All)
        .await
        .unwrap();
    let rest = read_n(&mut again, 30).await;
    assert_eq!(
        rest[0].offset, 20,
        "resumes right after the committed offset"
    );
    assert_eq!(rest.len(), 30);
    let mut other = bus
        .consumer("g-other", &topic, Assignment::Partitions(vec![0]))
        .await
        .unwrap();
    assert_eq!(
        read_n(&mut other, 50).await[0].offset,
        0,
        "a new group starts at the earliest record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_can_be_found_by_time_and_sought() {
    let bus = bus().await;
    let topic = unique("time");
    bus.ensure_topic(&topic, 2).await.unwrap();
    let p = bus.producer();
    // Stamped within the last minute: stamps months old are past the broker's retention, and
    // its check (every 5 minutes) deleted them between the sends and the reads ("only 0 of 10
    // records arrived" in a CI run of 2026-11-30).
    let base = stamp(-60_000);
    for i in 0..40i64 {
        p.send(
            &topic,
            format!("s{}", i % 2).as_bytes(),
            Bytes::from(i.to_string()),
            base + i * 1000,
        )
        .await
        .unwrap();
    }
    let at = bus.offsets_for_time(&topic, base + 30_000).await.unwrap();
    let ends = bus.end_offsets(&topic).await.unwrap();
    assert_eq!(
        ends.iter().zip(&at).map(|(e, a)| e - a).sum::<u64>(),
        10,
        "ten records at or after the time"
    );
    let mut c = bus
        .consumer("g-time", &topic, Assignment::All)
        .await
        .unwrap();
    for (partition, offset) in at.iter().enumerate() {
        c.seek(partition as u32, *offset).await.unwrap();
    }
    let got = read_n(&mut c, 10).await;
    assert!(
        got.iter().all(|r| r.timestamp_ms >= base + 30_000),
        "seeking by time skips older records"
    );
    let after = bus
        .offsets_for_time(&topic, base + 1_000_000)
        .await
        .unwrap();
    assert_eq!(after, ends, "no record after the time: the end offsets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_is_a_timeout_not_a_silent_drop() {
    let mut cfg = KafkaConfig::new(bootstrap());
    cfg.queue_timeout = Duration::from_millis(50);
    cfg.extra = vec![
        ("queue.buffering.max.messages".into(), "5".into()),
        ("linger.ms".into(), "2000".into()),
    ];
    let bus = KafkaBus::new(cfg).unwrap();
    let topic = unique("full");
    bus.ensure_topic(&topic, 1).await.unwrap();
    let p = bus.producer();
    let sends = (0..50).map(|i| p.send(&topic, b"k", Bytes::from(vec![0u8; 100]), i));
    let results = futures::future::join_all(sends).await;
    let timeouts = results
        .iter()
        .filter(|r| matches!(r, Err(BusError::Timeout { .. })))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(timeouts > 0, "a queue of 5 cannot take 50 at once");
    assert_eq!(
        ok + timeouts,
        50,
        "every send either landed or said it did not: {results:?}"
    );
    let mut c = bus
        .consumer("g-full", &topic, Assignment::All)
        .await
        .unwrap();
    assert_eq!(
        read_n(&mut c, ok).await.len(),
        ok,
        "what was acknowledged is on the topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_can_start_at_explicit_offsets_and_see_the_groups_commits() {
    let bus = bus().await;
    let topic = unique("positions");
    bus.ensure_topic(&topic, 1).await.unwrap();
    let p = bus.producer();
    for i in 0..50u32 {
        p.send(&topic, b"k", Bytes::from(i.to_string()), stamp(i as i64))
            .await
            .unwrap();
    }
    {
        let mut c = bus
            .consumer("g-pos", &topic, Assignment::All)
            .await
            .unwrap();
        let got = read_n(&mut c, 30).await;
        c.commit(0, got[29].offset + 1).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        bus.committed("g-pos", &topic).await.unwrap(),
        vec![Some(30)]
    );
    assert_eq!(bus.committed("g-none", &topic).await.unwrap(), vec![None]);
    let mut c = bus
        .consumer("g-pos", &topic, Assignment::Positions(vec![(0, Some(10))]))
        .await
        .unwrap();
    let got = read_n(&mut c, 40).await;
    assert_eq!(
        got[0].offset, 10,
        "starts where it was told, not at the commit"
    );
    assert_eq!(got.len(), 40);
}

/// Every record of a packed topic, polled 10 at a time: a poll never ends inside a pack
/// (what it holds of an offset is the whole pack, `shared` says how many), and it goes over
/// 10 only by its last pack.
async fn read_packed(
    bus: &KafkaBus,
    topic: &str,
    group: &str,
    n: usize,
    shared: &std::collections::HashMap<(u32, u64), usize>,
) -> Vec<floodcmd_model::bus::Record> {
    let mut c = bus.consumer(group, topic, Assignment::All).await.unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{group}: only {} of {n}",
            got.len()
        );
        let batch = c.poll(10, Duration::from_millis(500)).await.unwrap();
        if let Some(last) = batch.last() {
            let before_last = batch
                .iter()
                .filter(|r| (r.partition, r.offset) != (last.partition, last.offset))
                .count();
            assert!(
                before_last < 10,
                "{group}: a poll of {} records",
                batch.len()
            );
        }
        for r in &batch {
            let of_pack = batch
                .iter()
                .filter(|o| o.partition == r.partition && o.offset == r.offset)
                .count();
            assert_eq!(of_pack, shared[&(r.partition, r.offset)], "{group}");
        }
        got.extend(batch);
    }
    got
}

/// A topic named in `packed_topics` goes out many records to a Kafka record, and a consumer
/// of the bus gets every record back as it was sent: key, payload, timestamp and order per
/// key, each with its acknowledgement; a pack's records share its offset and come in one poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_topic_carries_many_records_a_kafka_record_and_reads_back_as_sent() {
    let topic = unique("packed");
    let bus = KafkaBus::new(KafkaConfig {
        packed_topics: vec![topic.clone()],
        ..KafkaConfig::new(bootstrap())
    })
    .unwrap();
    bus.ensure_topic(&topic, 4).await.unwrap();
    let plain_bus = KafkaBus::new(KafkaConfig::new(bootstrap())).unwrap();
    let n = 1_000usize;
    let sent: Vec<floodcmd_model::bus::Outgoing> = (0..n)
        .map(|i| floodcmd_model::bus::Outgoing {
            key: Bytes::from(format!("P{}", i % 37)),
            payload: Bytes::from(format!("{{\"i\":{i}}}")),
            timestamp_ms: stamp(i as i64),
            key_hash: None,
        })
        .collect();
    let acks = bus.producer().hand_over(&topic, sent.clone()).await.await;
    assert_eq!(acks.len(), n);
    for (r, ack) in sent.iter().zip(&acks) {
        let d = ack.as_ref().expect("every record acknowledged");
        assert_eq!(d.partition, partition_for(&r.key, 4));
    }
    let kafka_records: u64 = bus.end_offsets(&topic).await.unwrap().iter().sum();
    assert!(
        kafka_records <= 4 * (n as u64).div_ceil(256),
        "{kafka_records} Kafka records for {n} records"
    );
    // A record shares its acknowledged offset with the rest of its pack.
    let mut shared = std::collections::HashMap::new();
    for d in acks.iter().flatten() {
        *shared.entry((d.partition, d.offset)).or_insert(0) += 1;
    }
    assert_eq!(shared.len() as u64, kafka_records);

    // Read back through this bus (it knows the topic is packed) and through one that does
    // not (a pack there can come after others in a chunk librdkafka hands over at once).
    for (reader, group) in [(&bus, "g-packed"), (&plain_bus, "g-packed-plain")] {
        let got = read_packed(reader, &topic, group, n, &shared).await;
        assert_eq!(got.len(), n, "nothing more than was sent");
        for r in &got {
            let i: usize = std::str::from_utf8(&r.payload).unwrap()[5..]
                .trim_end_matches('}')
                .parse()
                .unwrap();
            assert_eq!(r.key, sent[i].key);
            assert_eq!(r.timestamp_ms, sent[i].timestamp_ms);
            assert_eq!(acks[i].as_ref().unwrap().offset, r.offset);
        }
        // Per key, in the order sent.
        let mut by_key: std::collections::HashMap<Bytes, Vec<Bytes>> = Default::default();
        for r in &got {
            by_key
                .entry(r.key.clone())
                .or_default()
                .push(r.payload.clone());
        }
        for (key, payloads) in by_key {
            let expected: Vec<Bytes> = sent
                .iter()
                .filter(|s| s.key == key)
                .map(|s| s.payload.clone())
                .collect();
            assert_eq!(payloads, expected, "{group}");
        }
    }
    // A record that starts as a pack does but is not one is handed on whole, for its reader
    // to refuse: nothing is lost.
    let plain = bus.producer();
    let broken = Bytes::from_static(b"\0fp\x01\xff\xff");
    let unpacked_topic = unique("notapack");
    bus.ensure_topic(&unpacked_topic, 1).await.unwrap();
    plain
        .send(&unpacked_topic, b"K", broken.clone(), stamp(0))
        .await
        .unwrap();
    let mut c = bus
        .consumer("g-notapack", &unpacked_topic, Assignment::All)
        .await
        .unwrap();
    let back = read_n(&mut c, 1).await;
    assert_eq!(back[0].payload, broken);
    assert_eq!(&back[0].key[..], b"K");
}

/// A pack the broker refuses (here a topic whose records may hold 2,000 bytes) fails every
/// record in it, each with an error of its own; a record sent alone beside it lands. Under a
/// producer's lower `message.max.bytes`, packs are cut to fit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pack_fails_every_record_it_carries_and_packs_fit_the_producers_limit() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let topic = unique("packfail");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let made = admin
        .create_topics(
            [&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
                .set("max.message.bytes", "2000")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    // Bytes LZ4 cannot shrink: the broker's limit is on the compressed batch.
    let record = |i: usize| {
        let mut x = 0x9e37_79b9_u32.wrapping_mul(i as u32 + 1);
        let noise: Vec<u8> = (0..100 + i)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        floodcmd_model::bus::Outgoing {
            key: Bytes::from_static(b"K"),
            payload: Bytes::from(noise),
            timestamp_ms: stamp(0),
            key_hash: None,
        }
    };
    let bus = KafkaBus::new(KafkaConfig {
        packed_topics: vec![topic.clone()],
        ..KafkaConfig::new(bootstrap())
    })
    .unwrap();
    // The topic may take a moment to be known everywhere.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bus.partitions(&topic).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acks = bus
        .producer()
        .send_batch(&topic, (0..40).map(record).collect())
        .await;
    assert_eq!(acks.len(), 40);
    for (i, a) in acks.iter().enumerate() {
        assert!(a.is_err(), "record {i} of a refused pack: {a:?}");
    }
    let alone = bus.producer().send_batch(&topic, vec![record(0)]).await;
    assert!(alone[0].is_ok(), "{alone:?}");
    // Under a producer's own `message.max.bytes` of 4,300 a pack may hold 204 bytes: less
    // than two of these records, so each goes alone (on a topic without the 2,000-byte limit,
    // which librdkafka's own batching of many records would pass).
    let roomy = unique("packlimit");
    let mut config = KafkaConfig::new(bootstrap());
    config.packed_topics = vec![roomy.clone()];
    config.extra = vec![("message.max.bytes".into(), "4300".into())];
    let bus = KafkaBus::new(config).unwrap();
    bus.ensure_topic(&roomy, 1).await.unwrap();
    let acks = bus
        .producer()
        .send_batch(&roomy, (0..40).map(record).collect())
        .await;
    assert!(acks.iter().all(Result::is_ok), "{acks:?}");
    let offsets: std::collections::HashSet<u64> =
        acks.iter().map(|a| a.as_ref().unwrap().offset).collect();
    assert_eq!(
        offsets.len(),
        40,
        "one record a Kafka record under that limit"
    );
}
