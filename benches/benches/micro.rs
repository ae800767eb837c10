//! Micro-benchmarks of the per-reading hot path: decode a record, update a rain window,
//! evaluate thresholds; and the rules engine alone over a district larger than the cache, the
//! part of the stream stage that the `stream-core` scenario cannot time apart from decoding,
//! timely and the bus (and that a shared machine's noise hides in a whole run).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use floodcmd_benches::sample_reading;
use floodcmd_benches::stream_core::{synthetic_reading, synthetic_sensors, T0};
use floodcmd_model::codec::{decode, decode_reading, encode};
use floodcmd_model::config::LevelThresholds;
use floodcmd_model::time::{Clock, ManualClock};
use floodcmd_model::{District, Reading};
use floodcmd_stream::level::LevelTracker;
use floodcmd_stream::rain::RainWindows;
use floodcmd_stream::{Engine, TimedReading};
use std::sync::Arc;

// The allocator the `floodcmd` binary runs on (for every bench here: figures taken before it
// was set are on glibc's malloc). The engine builds and drops a status per point per epoch,
// and on glibc's malloc it measured about half as fast.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn codec(c: &mut Criterion) {
    let r = sample_reading(7);
    let bytes = encode(&r);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_reading", |b| b.iter(|| encode(black_box(&r))));
    // The general path, which takes any layout (and the fast path's refusals).
    g.bench_function("decode_reading", |b| {
        b.iter(|| decode::<Reading>(black_box(&bytes)).unwrap())
    });
    // The stream stage's path: the layout `encode` writes, read without serde's machinery.
    g.bench_function("decode_reading_fast", |b| {
        b.iter(|| decode_reading(black_box(&bytes)).unwrap())
    });
    g.finish();
}

fn window(c: &mut Criterion) {
    let mut w = RainWindows::new([]);
    let mut t = 1_783_000_000_000i64;
    c.bench_function("rain_window_add_30s", |b| {
        b.iter(|| {
            t += 30_000;
            w.add(black_box(t), black_box(0.2)).unwrap();
        })
    });
}

fn thresholds(c: &mut Criterion) {
    let th = LevelThresholds::underpass_default();
    let mut tr = LevelTracker::default();
    let mut t = 0i64;
    c.bench_function("level_evaluate", |b| {
        b.iter(|| {
            t += 30_000;
            let v = ((t / 30_000) % 40) as f64;
            tr.evaluate(black_box([v; 4]), t, &th)
        })
    });
}

/// The engine of one worker owning every point of the synthetic district of `stream-core`
/// (`--sensors 10000`: 10,000 depth points and 1,000 rain gauges, a sensor each): readings
/// one per sensor a minute, as `stream-core` makes them, applied epoch by epoch, the outputs
/// built and let go. The first 10 minutes are applied untimed: a fresh engine's first readings
/// also grow every point's state, which a running stage has done long before. The next 20
/// minutes (220,000 readings) are timed.
///
/// Timed twice: with each minute's readings spread over its first seconds (about a thousand
/// an epoch, as `stream-core` has them), and with every reading stamped on the minute, as
/// devices that all report on the minute send them (and as `stream-kafka` stamps them): one
/// epoch of 11,000 readings a minute, every one the same time, so the epoch's sort is all
/// ties.
fn engine(c: &mut Criterion) {
    const WARM_MIN: u64 = 10;
    const TIMED_MIN: u64 = 20;
    let district = District::from_file(floodcmd_sim::synthetic_district(10_000)).unwrap();
    let sensors = synthetic_sensors(&district);
    let n = sensors.len() as u64;
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(TIMED_MIN * n));
    g.sample_size(10);
    for (name, on_the_minute) in [
        ("apply_epochs_11k_points", false),
        ("apply_epochs_11k_points_on_the_minute", true),
    ] {
        let mut epochs: Vec<(i64, Vec<TimedReading>)> = Vec::new();
        for i in 0..(WARM_MIN + TIMED_MIN) * n {
            let mut reading = synthetic_reading(i, &sensors);
            if on_the_minute {
                // On the minute counted from T0, so the warm and timed minutes stay as they are.
                reading.ts_ms -= (reading.ts_ms - T0).rem_euclid(60_000);
            }
            let epoch_ms = reading.ts_ms - reading.ts_ms.rem_euclid(1000);
            if epochs.last().is_none_or(|(e, _)| *e != epoch_ms) {
                epochs.push((epoch_ms, Vec::new()));
            }
            let (_, batch) = epochs.last_mut().expect("pushed");
            batch.push(TimedReading {
                reading,
                late: false,
                replay: false,
            });
        }
        if on_the_minute {
            assert_eq!(
                epochs.len() as u64,
                WARM_MIN + TIMED_MIN,
                "one epoch a minute"
            );
        }
        let warm_until = T0 + WARM_MIN as i64 * 60_000;
        let split = epochs.partition_point(|(e, _)| *e < warm_until);
        let (warm, timed) = epochs.split_at(split);
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut engine = Engine::new(&district, |_| true, clock.clone(), T0);
                    let mut out = Vec::new();
                    for (epoch_ms, readings) in warm {
                        engine.apply_epoch(*epoch_ms, readings, &mut out);
                        out.clear();
                    }
                    // A reading of a point the engine does not know does nothing but count.
                    assert_eq!(
                        engine.unknown_points, 0,
                        "the readings name the district's points"
                    );
                    engine
                },
                |mut engine| {
                    let mut out = Vec::new();
                    for (epoch_ms, readings) in timed {
                        engine.apply_epoch(*epoch_ms, readings, &mut out);
                        out.clear();
                    }
                    engine
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, codec, window, thresholds, engine);
criterion_main!(benches);
