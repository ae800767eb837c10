//! The embedded bus from a stage's side: ordering, offsets, backpressure, independent groups.

use bytes::Bytes;
use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{partition_for, Assignment, Bus};
use std::time::Duration;

const T: Duration = Duration::from_millis(200);

#[tokio::test]
async fn records_of_one_key_keep_their_order_and_offsets_count_up() {
    let bus = EmbeddedBus::new(1024);
    bus.ensure_topic("t", 4).await.unwrap();
    let producer = bus.producer();
    for i in 0..100u32 {
        let key = format!("sensor-{}", i % 7);
        let d = producer
            .send("t", key.as_bytes(), Bytes::from(i.to_string()), i as i64)
            .await
            .unwrap();
        assert_eq!(
            d.partition,
            partition_for(key.as_bytes(), 4),
            "key decides the partition"
        );
    }
    let mut c = bus.consumer("g", "t", Assignment::All).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 100 {
        let batch = c.poll(33, T).await.unwrap();
        assert!(!batch.is_empty(), "all 100 records are there");
        got.extend(batch);
    }
    for p in 0..4 {
        let offsets: Vec<u64> = got
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        let expect: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(
            offsets, expect,
            "offsets in partition {p} are dense and ascending"
        );
    }
    for k in 0..7u32 {
        let key = format!("sensor-{k}");
        let values: Vec<u32> = got
            .iter()
            .filter(|r| r.key == key.as_bytes())
            .map(|r| std::str::from_utf8(&r.payload).unwrap().parse().unwrap())
            .collect();
        let mut sorted = values.clone();
        sorted.sort();
        assert_eq!(values, sorted, "{key} arrives in the order it was sent");
        assert_eq!(values.len(), (0..100).filter(|i| i % 7 == k).count());
    }
}

#[tokio::test]
async fn a_batch_larger_than_a_partition_waits_for_room_and_keeps_every_key_in_order() {
    use floodcmd_model::bus::Outgoing;
    let bus = EmbeddedBus::new(16);
    bus.ensure_topic("t", 2).await.unwrap();
    let mut c = bus.consumer("slow", "t", Assignment::All).await.unwrap();
    let producer = bus.producer();
    let records: Vec<Outgoing> = (0..100u32)
        .map(|i| Outgoing {
            key: Bytes::from(format!("k{}", i % 5)),
            payload: Bytes::from(i.to_string()),
            timestamp_ms: i as i64,
            key_hash: None,
        })
        .collect();
    let sender = tokio::spawn(async move { producer.send_batch("t", records).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !sender.is_finished(),
        "the batch waits while a partition is full"
    );
    assert!(
        bus.retained("t").unwrap() <= 32,
        "never more than capacity in memory"
    );
    let mut seen: Vec<(Vec<u8>, u32, u64)> = Vec::new();
    while seen.len() < 100 {
        let batch = c.poll(8, Duration::from_secs(2)).await.unwrap();
        assert!(
            !batch.is_empty(),
            "records keep coming once the consumer commits"
        );
        for r in &batch {
            let v = std::str::from_utf8(&r.payload).unwrap().parse().unwrap();
            seen.push((r.key.to_vec(), v, r.offset));
            c.commit(r.partition, r.offset + 1).await.unwrap();
        }
    }
    let results = sender.await.unwrap();
    assert_eq!(results.len(), 100, "one result per record");
    for (i, d) in results.iter().enumerate() {
        let d = d.as_ref().expect("every record is delivered");
        let key = format!("k{}", i % 5);
        assert_eq!(d.partition, partition_for(key.as_bytes(), 2));
        let (_, _, offset) = seen.iter().find(|(_, v, _)| *v == i as u32).unwrap();
        assert_eq!(d.offset, *offset, "record {i}'s delivery names where it is");
    }
    for k in 0..5u32 {
        let key = format!("k{k}");
        let values: Vec<u32> = seen
            .iter()
            .filter(|(kk, _, _)| kk == key.as_bytes())
            .map(|(_, v, _)| *v)
            .collect();
        let expect: Vec<u32> = (0..100).filter(|i| i % 5 == k).collect();
        assert_eq!(
            values, expect,
            "{key}: every record once, in the order sent"
        );
    }
}

#[tokio::test]
async fn a_full_partition_makes_the_producer_wait_and_nothing_is_dropped() {
    let bus = EmbeddedBus::new(16);
    bus.ensure_topic("t", 1).await.unwrap();
    let mut c = bus.consumer("slow", "t", Assignment::All).await.unwrap();
    let producer = bus.producer();
    let sender = tokio::spawn(async move {
        for i in 0..64u32 {
            producer
                .send("t", b"k", Bytes::from(i.to_string()), 0)
                .await
                .unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !sender.is_finished(),
        "producer must block while the partition is full"
    );
    assert_eq!(
        bus.retained("t").unwrap(),
        16,
        "never more than capacity in memory"
    );

    let mut seen = Vec::new();
    while seen.len() < 64 {
        let batch = c.poll(8, Duration::from_secs(2)).await.unwrap();
        assert!(
            !batch.is_empty(),
            "records keep coming once the consumer commits"
        );
        let last = batch.last().unwrap().offset;
        seen.extend(batch.iter().map(|r| {
            std::str::from_utf8(&r.payload)
                .unwrap()
                .parse::<u32>()
                .unwrap()
        }));
        c.commit(0, last + 1).await.unwrap();
        assert!(bus.retained("t").unwrap() <= 16);
    }
    sender.await.unwrap();
    assert_eq!(
        seen,
        (0..64).collect::<Vec<_>>(),
        "every record, once, in order"
    );
}

#[tokio::test]
async fn groups_read_independently_and_resume_from_their_commit() {
    let bus = EmbeddedBus::new(1024);
    bus.ensure_topic("t", 2).await.unwrap();
    let producer = bus.producer();
    for i in 0..20u32 {
        producer
            .send("t", b"same-key", Bytes::from(i.to_string()), 0)
            .await
            .unwrap();
    }
    let mut fast = bus.consumer("fast", "t", Assignment::All).await.unwrap();
    let mut slow = bus.consumer("slow", "t", Assignment::All).await.unwrap();
    let all = fast.poll(100, T).await.unwrap();
    assert_eq!(all.len(), 20);
    let p = all[0].partition;
    fast.commit(p, 20).await.unwrap();

    let first = slow.poll(5, T).await.unwrap();
    assert_eq!(first.len(), 5);
    slow.commit(p, 5).await.unwrap();
    drop(slow);
    // Nothing needed the room: all 20 are still there (history a restarted stage can re-read).
    assert_eq!(bus.retained("t").unwrap(), 20);

    let mut again = bus.consumer("slow", "t", Assignment::All).await.unwrap();
    let rest = again.poll(100, T).await.unwrap();
    assert_eq!(
        rest.first().unwrap().offset,
        5,
        "a restarted consumer resumes at its group's commit"
    );
    assert_eq!(rest.len(), 15);

    let mut late = bus
        .consumer("newcomer", "t", Assignment::All)
        .await
        .unwrap();
    let from_start = late.poll(100, T).await.unwrap();
    assert_eq!(
        from_start.first().unwrap().offset,
        0,
        "a new group starts at the earliest retained record"
    );
    assert_eq!(
        bus.committed("slow", "t").await.unwrap()[p as usize],
        Some(5)
    );
    assert_eq!(bus.committed("never", "t").await.unwrap(), vec![None, None]);
}

#[tokio::test]
async fn static_assignment_reads_only_its_partitions() {
    let bus = EmbeddedBus::new(1024);
    bus.ensure_topic("t", 4).await.unwrap();
    let producer = bus.producer();
    for i in 0..200u32 {
        producer
            .send("t", format!("k{i}").as_bytes(), Bytes::new(), 0)
            .await
            .unwrap();
    }
    let mut c = bus
        .consumer("w", "t", Assignment::Partitions(vec![1, 3]))
        .await
        .unwrap();
    let got = c.poll(1000, T).await.unwrap();
    assert!(!got.is_empty());
    assert!(got.iter().all(|r| r.partition == 1 || r.partition == 3));
    assert!(
        bus.consumer("w", "t", Assignment::Partitions(vec![9]))
            .await
            .is_err(),
        "partition 9 does not exist"
    );
    assert!(
        bus.consumer("w", "nope", Assignment::All).await.is_err(),
        "unknown topic is an error"
    );
}

/// A reader handed its group's positions (`GroupPositions`, resolved by a caller that looked
/// its commits up) holds history back from there as a group, like one that asks for its
/// group's commit; a reader at an explicit position (`Positions`) does not, and a full
/// partition lets go of what only it would read.
#[tokio::test]
async fn group_positions_hold_history_back_for_a_new_group_and_explicit_ones_do_not() {
    for (as_group, name) in [(true, "group"), (false, "explicit")] {
        let bus = EmbeddedBus::new(4);
        bus.ensure_topic("t", 1).await.unwrap();
        let producer = bus.producer();
        // Another group has read and committed everything.
        let mut ahead = bus.consumer("ahead", "t", Assignment::All).await.unwrap();
        for i in 0..4u32 {
            producer
                .send("t", b"k", Bytes::from(i.to_string()), 0)
                .await
                .unwrap();
        }
        assert_eq!(ahead.poll(10, T).await.unwrap().len(), 4);
        ahead.commit(0, 4).await.unwrap();
        let assignment = if as_group {
            Assignment::GroupPositions(vec![(0, 0)])
        } else {
            Assignment::Positions(vec![(0, Some(0))])
        };
        let mut reader = bus.consumer("new", "t", assignment).await.unwrap();
        let fifth = tokio::spawn({
            let producer = bus.producer();
            async move {
                producer
                    .send("t", b"k", Bytes::from_static(b"4"), 0)
                    .await
                    .unwrap()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let first_held = bus.start_offsets("t").await.unwrap()[0];
        if as_group {
            assert!(
                !fifth.is_finished(),
                "{name}: the partition is full of what the new group has yet to read"
            );
            assert_eq!(first_held, 0, "{name}: nothing let go");
            let read = reader.poll(10, T).await.unwrap();
            assert_eq!(read.first().map(|r| r.offset), Some(0), "{name}");
            reader.commit(0, 4).await.unwrap();
            fifth.await.unwrap();
        } else {
            fifth.await.unwrap();
            assert_eq!(
                first_held, 4,
                "{name}: what the other group read let go to make room"
            );
            let read = reader.poll(10, T).await.unwrap();
            assert_eq!(read.first().map(|r| r.offset), Some(4), "{name}");
        }
    }
}
