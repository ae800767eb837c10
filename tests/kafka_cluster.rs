//! A three-broker Kafka cluster (`scripts/kafka.sh start 3`, run by `scripts/test.sh`):
//! floodcmd's topics at replication 3 take writes with acks=all and give every record back.

use bytes::Bytes;
use floodcmd_bus::{KafkaBus, KafkaConfig};
use floodcmd_model::bus::{Assignment, Bus};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_broker_cluster_replicates_and_serves() {
    let bootstrap = std::env::var("FLOODCMD_KAFKA_CLUSTER")
        .expect("FLOODCMD_KAFKA_CLUSTER is not set: scripts/test.sh starts a three-broker cluster for this test");
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");
    let mut cfg = KafkaConfig::new(bootstrap);
    cfg.replication = 3;
    let bus = KafkaBus::new(cfg).unwrap();
    let topic = format!("cluster.check.{}", std::process::id());
    bus.ensure_topic(&topic, 6).await.unwrap();
    let p = bus.producer();
    // Record timestamps of now: stamps near 1970 (as this test once used) are far past the
    // broker's retention, and its retention check deleted whole partitions mid-test, which
    // showed as "only 53 of 300 records came back".
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 0..300u32 {
        p.send(
            &topic,
            format!("s{}", i % 17).as_bytes(),
            Bytes::from(i.to_string()),
            now_ms + i as i64,
        )
        .await
        .unwrap();
    }
    let mut c = bus
        .consumer("cluster-check", &topic, Assignment::All)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 300 {
        assert!(
            Instant::now() < deadline,
            "only {} of 300 records came back",
            seen.len()
        );
        for r in c.poll(1000, Duration::from_millis(500)).await.unwrap() {
            seen.push(
                std::str::from_utf8(&r.payload)
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..300).collect::<Vec<_>>(), "every record once");
}
