//! Micro-benchmarks of the per-reading hot path: decode a record, update a rain window,
//! evaluate thresholds.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use floodcmd_benches::sample_reading;
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::config::LevelThresholds;
use floodcmd_model::Reading;
use floodcmd_stream::level::LevelTracker;
use floodcmd_stream::rain::RainWindows;

fn codec(c: &mut Criterion) {
    let r = sample_reading(7);
    let bytes = encode(&r);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_reading", |b| b.iter(|| encode(black_box(&r))));
    g.bench_function("decode_reading", |b| {
        b.iter(|| decode::<Reading>(black_box(&bytes)).unwrap())
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

criterion_group!(benches, codec, window, thresholds);
criterion_main!(benches);
