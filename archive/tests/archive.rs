//! The archive format end to end: round trip, errors that name the line, refused headers, and a
//! million readings through the streaming writer.

use flate2::write::GzEncoder;
use flate2::Compression;
use floodcmd_archive::{ArchiveError, ArchiveHeader, ArchiveReader, ArchiveWriter};
use floodcmd_model::{Reading, SensorKind};
use std::io::Write;
use std::path::Path;

const XINCHENG: &str = include_str!("../../config/xincheng.toml");

fn reading(sensor: &str, ts_ms: i64, value: f64, seq: Option<u64>) -> Reading {
    Reading {
        sensor: sensor.into(),
        point: format!("P-{sensor}").into(),
        kind: SensorKind::Depth,
        ts_ms,
        value,
        seq,
        received_ms: ts_ms + 7,
    }
}

fn header() -> ArchiveHeader {
    ArchiveHeader::new("test storm", "新城区", XINCHENG, 1_700_000_000_000)
}

/// Write a gzip file of raw lines, to build archives the writer would refuse to write.
fn write_raw(path: &Path, lines: &[String]) {
    let mut gz = GzEncoder::new(std::fs::File::create(path).unwrap(), Compression::fast());
    for l in lines {
        gz.write_all(l.as_bytes()).unwrap();
        gz.write_all(b"\n").unwrap();
    }
    gz.finish().unwrap();
}

#[test]
fn round_trip_keeps_every_field_and_fills_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storm.ndjson.gz");
    let readings = vec![
        reading("WL-A", 1_000, 0.0, Some(0)),
        reading("WL-B", 1_000, 12.5, None),
        Reading {
            kind: SensorKind::Rain,
            ..reading("RN-C", 61_000, 100.584, Some(7))
        },
        reading("WL-A", 61_000, 33.333_333_333_333_336, Some(1)),
    ];
    let mut w = ArchiveWriter::create(&path, header()).unwrap();
    for r in &readings {
        w.write(r).unwrap();
    }
    let written = w.finish().unwrap();
    assert_eq!(written.readings, 4);
    assert_eq!(written.from_ms, 1_000);
    assert_eq!(written.to_ms, 61_000);

    let (h, rest) = ArchiveReader::open(&path).unwrap();
    assert_eq!(h, written);
    assert_eq!(h.format, "floodcmd-archive");
    assert_eq!(h.version, 1);
    let district = h.district().unwrap();
    assert_eq!(district.info.id, "xincheng");
    let back: Vec<Reading> = rest.map(Result::unwrap).collect();
    assert_eq!(back, readings);
    // No temp files left beside the archive.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn every_float_comes_back_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floats.gz");
    let mut w = ArchiveWriter::create(&path, header()).unwrap();
    // Inches × 2.54 from FloodNet: values serde_json's fast float parser got 1 ulp wrong.
    let mut values = vec![61.798199999999994, 90.39860000000002, 5.1053999999999995];
    // And a spread of awkward ones from a fixed LCG.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20_000 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        values.push((x >> 11) as f64 / (1u64 << 53) as f64 * 1000.0);
    }
    for (i, v) in values.iter().enumerate() {
        w.write(&reading("WL-A", i as i64, *v, None)).unwrap();
    }
    w.finish().unwrap();
    let back: Vec<f64> = ArchiveReader::open(&path)
        .unwrap()
        .1
        .map(|r| r.unwrap().value)
        .collect();
    assert_eq!(back.len(), values.len());
    for (a, b) in back.iter().zip(&values) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a} != {b}");
    }
}

#[test]
fn the_file_is_plain_gzip_ndjson_with_the_header_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gz");
    let mut w = ArchiveWriter::create(&path, header()).unwrap();
    w.write(&reading("WL-A", 5, 1.0, None)).unwrap();
    w.finish().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap()),
        &mut text,
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let h: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(h["format"], "floodcmd-archive");
    assert_eq!(h["readings"], 1);
    assert!(lines[1].starts_with("{\"sensor\":\"WL-A\""), "{}", lines[1]);
}

#[test]
fn a_malformed_line_names_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gz");
    let mut h = header();
    h.readings = 3;
    let good = serde_json::to_string(&reading("WL-A", 1, 1.0, None)).unwrap();
    write_raw(
        &path,
        &[
            serde_json::to_string(&h).unwrap(),
            good.clone(),
            "{\"sensor\":\"WL-A\",\"point\":\"P\",\"kind\":\"depth\",\"ts_ms\":\"soon\"}".into(),
            good,
        ],
    );
    let (_, rest) = ArchiveReader::open(&path).unwrap();
    let items: Vec<_> = rest.collect();
    assert_eq!(items.len(), 2, "the iterator ends at the first error");
    assert!(items[0].is_ok());
    let err = items[1].as_ref().unwrap_err();
    match err {
        ArchiveError::Malformed { line, column, .. } => {
            assert_eq!(*line, 3);
            assert!(*column > 1);
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("bad.gz") && msg.contains("line 3"), "{msg}");
}

#[test]
fn a_line_too_long_to_be_a_reading_is_refused_without_holding_it() {
    // 64 MiB of one line gzips to about 64 KiB: the reader stops at its 1 MiB cap.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.gz");
    let mut h = header();
    h.readings = 1;
    let good = serde_json::to_string(&reading("WL-A", 1, 1.0, None)).unwrap();
    write_raw(
        &path,
        &[
            serde_json::to_string(&h).unwrap(),
            good,
            "x".repeat(64 << 20),
        ],
    );
    let (_, rest) = ArchiveReader::open(&path).unwrap();
    let items: Vec<_> = rest.collect();
    assert_eq!(items.len(), 2, "the iterator ends at the first error");
    let err = items[1].as_ref().unwrap_err();
    assert!(
        matches!(err, ArchiveError::Malformed { line: 3, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("longer than 1048576 bytes"),
        "{err}"
    );
}

#[test]
fn out_of_order_and_short_archives_are_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = header();
    h.readings = 2;
    let path = dir.path().join("order.gz");
    write_raw(
        &path,
        &[
            serde_json::to_string(&h).unwrap(),
            serde_json::to_string(&reading("WL-B", 10, 1.0, None)).unwrap(),
            serde_json::to_string(&reading("WL-A", 10, 1.0, None)).unwrap(),
        ],
    );
    let err = ArchiveReader::open(&path)
        .unwrap()
        .1
        .find_map(Result::err)
        .unwrap();
    assert!(
        matches!(err, ArchiveError::OutOfOrder { line: 3, .. }),
        "{err}"
    );

    let path = dir.path().join("short.gz");
    write_raw(
        &path,
        &[
            serde_json::to_string(&h).unwrap(),
            serde_json::to_string(&reading("WL-A", 10, 1.0, None)).unwrap(),
        ],
    );
    let err = ArchiveReader::open(&path)
        .unwrap()
        .1
        .find_map(Result::err)
        .unwrap();
    assert!(
        matches!(
            err,
            ArchiveError::CountMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn the_writer_refuses_unsorted_and_non_finite_readings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gz");
    let mut w = ArchiveWriter::create(&path, header()).unwrap();
    w.write(&reading("WL-B", 10, 1.0, None)).unwrap();
    let err = w.write(&reading("WL-A", 10, 1.0, None)).unwrap_err();
    assert!(
        matches!(err, ArchiveError::WriteOrder { index: 1, .. }),
        "{err}"
    );
    let err = w.write(&reading("WL-C", 10, f64::NAN, None)).unwrap_err();
    assert!(matches!(err, ArchiveError::NotFinite { .. }), "{err}");
    // Same time, later sensor, is fine; the refused ones were not written.
    w.write(&reading("WL-C", 10, 2.0, None)).unwrap();
    assert_eq!(w.finish().unwrap().readings, 2);
}

#[test]
fn wrong_format_or_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = serde_json::to_value(header()).unwrap();
    h["format"] = "influx-lines".into();
    let path = dir.path().join("other.gz");
    write_raw(&path, &[h.to_string()]);
    let err = ArchiveReader::open(&path).err().unwrap();
    assert!(
        matches!(&err, ArchiveError::WrongFormat { found, .. } if found == "influx-lines"),
        "{err}"
    );

    let mut h = serde_json::to_value(header()).unwrap();
    h["version"] = 2.into();
    h["new_field_of_v2"] = true.into();
    let path = dir.path().join("v2.gz");
    write_raw(&path, &[h.to_string()]);
    let err = ArchiveReader::open(&path).err().unwrap();
    assert!(
        matches!(err, ArchiveError::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("line 1"), "{err}");

    let path = dir.path().join("notjson.gz");
    write_raw(&path, &["sensor,ts,value".into()]);
    assert!(matches!(
        ArchiveReader::open(&path).err().unwrap(),
        ArchiveError::Header { .. }
    ));

    let path = dir.path().join("plain.txt");
    std::fs::write(&path, "not gzip at all\n").unwrap();
    assert!(matches!(
        ArchiveReader::open(&path).err().unwrap(),
        ArchiveError::Io { .. }
    ));
}

#[test]
fn an_invalid_embedded_district_is_reported() {
    let h = ArchiveHeader::new("x", "x", "[district]\nid = \"x\"\n", 0);
    let err = h.district().unwrap_err();
    assert!(matches!(err, ArchiveError::District(_)), "{err}");
}

#[test]
fn a_million_readings_stream_through_in_order() {
    const N: u64 = 1_000_000;
    const SENSORS: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.ndjson.gz");
    let names: Vec<String> = (0..SENSORS).map(|s| format!("WL-{s:03}")).collect();
    let mut w = ArchiveWriter::create(&path, header()).unwrap();
    let mut r = reading("WL-000", 0, 0.0, Some(0));
    for i in 0..N {
        let s = i % SENSORS;
        r.sensor.clear();
        r.sensor.push_str(&names[s as usize]);
        r.ts_ms = 1_630_540_800_000 + (i / SENSORS) as i64 * 60_000;
        r.received_ms = r.ts_ms;
        r.value = (i % 1000) as f64 / 10.0;
        r.seq = Some(i / SENSORS);
        w.write(&r).unwrap();
    }
    let h = w.finish().unwrap();
    assert_eq!(h.readings, N);
    assert_eq!(h.from_ms, 1_630_540_800_000);
    assert_eq!(
        h.to_ms,
        1_630_540_800_000 + (N / SENSORS - 1) as i64 * 60_000
    );

    let (h2, rest) = ArchiveReader::open(&path).unwrap();
    assert_eq!(h2, h);
    let mut count = 0u64;
    let mut prev: Option<(i64, floodcmd_model::Id)> = None;
    for item in rest {
        let r = item.unwrap();
        assert_eq!(r.value, (count % 1000) as f64 / 10.0);
        let key = (r.ts_ms, r.sensor);
        if let Some(p) = &prev {
            assert!(*p <= key);
        }
        prev = Some(key);
        count += 1;
    }
    assert_eq!(count, N);
}
