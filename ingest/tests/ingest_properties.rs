//! Property tests of the validation path, through `Gateway::ingest` on an embedded bus: for any
//! body, record by record, either a valid reading (known sensor, finite value inside the
//! sensor's physical range, time within the limits) lands on `readings`, or a reject whose
//! detail names the problem lands on `rejects`; nothing is lost (readings + rejects = the
//! records the body splits into).
//!
//! Two generators: arbitrary bytes, and bodies of JSON readings where each field is either
//! good or broken in one of the ways devices break them (NaN-like text, huge numbers, far
//! timestamps, unknown sensors, wrong types, missing and unknown fields). For the second, the
//! gateway's verdict is predicted: a record with only good fields is accepted, any broken
//! field gets it refused, and when exactly one field is broken, for the reason that field
//! calls for.

use floodcmd_bus::EmbeddedBus;
use floodcmd_ingest::decode::{split, Framing};
use floodcmd_ingest::validate::TimeLimits;
use floodcmd_ingest::{Access, Gateway, GatewayConfig, IngestOutcome};
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::decode;
use floodcmd_model::event::{Reject, RejectReason};
use floodcmd_model::time::ManualClock;
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const NOW: i64 = 1_783_000_000_000;
const LIMITS: TimeLimits = TimeLimits {
    max_future_ms: 300_000,
    retention_ms: 72 * 3_600_000,
};

fn district() -> Arc<District> {
    static D: OnceLock<Arc<District>> = OnceLock::new();
    D.get_or_init(|| {
        Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap())
    })
    .clone()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// What one body did: the gateway's answer and what it put on the bus.
struct Landed {
    outcome: IngestOutcome,
    readings: Vec<Reading>,
    rejects: Vec<Reject>,
}

async fn drain<T: serde::de::DeserializeOwned>(bus: &EmbeddedBus, topic: &str) -> Vec<T> {
    let want = bus.retained(topic).unwrap();
    let mut c = bus.consumer("test", topic, Assignment::All).await.unwrap();
    let mut out = Vec::new();
    while out.len() < want {
        let batch = c.poll(10_000, Duration::from_secs(5)).await.unwrap();
        assert!(
            !batch.is_empty(),
            "{topic}: {} of {want} records",
            out.len()
        );
        out.extend(batch.iter().map(|r| decode::<T>(&r.payload).unwrap()));
    }
    out
}

/// Ingest `body` on a fresh gateway and bus (so no sequence number is remembered across
/// cases) and collect what landed.
async fn ingest(body: &[u8], framing: Framing) -> Landed {
    let bus = EmbeddedBus::new(1 << 16);
    let topics = Topics::new("p");
    for t in topics.all() {
        bus.ensure_topic(&t, 1).await.unwrap();
    }
    let gw = Gateway::new(
        district(),
        bus.producer(),
        topics.clone(),
        Arc::new(ManualClock::new(NOW)),
        GatewayConfig {
            max_body_bytes: 1 << 20,
            limits: LIMITS,
            access: Access::Open,
            device_requests_per_min: 0,
        },
    );
    let outcome = gw.ingest(body, framing, "http", None).await.unwrap();
    Landed {
        outcome,
        readings: drain(&bus, &topics.readings()).await,
        rejects: drain(&bus, &topics.rejects()).await,
    }
}

/// The words a reject's detail must contain for its reason: it names the field.
fn named(reason: RejectReason) -> &'static [&'static str] {
    match reason {
        RejectReason::UnknownSensor => &["sensor"],
        RejectReason::NotANumber | RejectReason::OutOfRange => &["value"],
        RejectReason::FutureTimestamp | RejectReason::TooOld => &["ts "],
        RejectReason::DuplicateSequence => &["seq "],
        RejectReason::MissingField => &["missing field"],
        _ => &[],
    }
}

/// The properties every body has, whatever it holds.
fn check_landed(body: &[u8], framing: Framing, l: &Landed) -> Result<(), TestCaseError> {
    let records = split(body, framing);
    let district = district();
    prop_assert_eq!(
        l.readings.len() + l.rejects.len(),
        records.len(),
        "nothing lost"
    );
    prop_assert_eq!(l.outcome.accepted, l.readings.len());
    prop_assert_eq!(l.outcome.rejected, l.rejects.len());
    for r in &l.readings {
        let s = district.sensor(&r.sensor);
        prop_assert!(s.is_some(), "unknown sensor {} accepted", r.sensor);
        let s = s.unwrap();
        prop_assert_eq!(&r.point, &s.point.id);
        prop_assert_eq!(r.kind, s.sensor.kind);
        let (lo, hi) = r.kind.physical_range();
        prop_assert!(
            r.value.is_finite() && (lo..=hi).contains(&r.value),
            "{}",
            r.value
        );
        prop_assert!(r.ts_ms <= NOW + LIMITS.max_future_ms, "{}", r.ts_ms);
        prop_assert!(r.ts_ms >= NOW - LIMITS.retention_ms, "{}", r.ts_ms);
        prop_assert_eq!(r.received_ms, NOW);
    }
    let mut indexes: Vec<usize> = Vec::new();
    for j in &l.rejects {
        prop_assert!(
            !j.detail.trim().is_empty(),
            "a reject without a reason: {:?}",
            j
        );
        for word in named(j.reason) {
            prop_assert!(
                j.detail.contains(word),
                "{:?} does not name {:?}: {}",
                j.reason,
                word,
                j.detail
            );
        }
        let index = j.index.expect("every reject of a body has its index");
        let rec = records.iter().find(|r| r.index == index);
        prop_assert!(rec.is_some(), "reject of record {} the body has not", index);
        let raw = String::from_utf8_lossy(rec.unwrap().bytes);
        prop_assert_eq!(&j.raw, &raw, "the reject keeps the record's bytes");
        indexes.push(index);
    }
    let n = indexes.len();
    indexes.sort_unstable();
    indexes.dedup();
    prop_assert_eq!(indexes.len(), n, "one reject per record");
    Ok(())
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![Just(Framing::Json), Just(Framing::NdJson)]
}

/// One field as JSON text: whether it is good, and the reason it calls for when not.
#[derive(Clone, Debug)]
struct Field {
    text: String,
    bad: Option<RejectReason>,
}

fn good(text: impl Into<String>) -> Field {
    Field {
        text: text.into(),
        bad: None,
    }
}

fn bad(text: impl Into<String>, reason: RejectReason) -> Field {
    Field {
        text: text.into(),
        bad: Some(reason),
    }
}

fn sensor() -> impl Strategy<Value = Field> {
    let known: Vec<String> = district().sensors().map(|s| s.sensor.id.clone()).collect();
    prop_oneof![
        6 => proptest::sample::select(known).prop_map(|s| good(format!("\"{s}\""))),
        1 => "[A-Za-z0-9-]{0,12}"
            .prop_filter("not a sensor", |s| district().sensor(s).is_none())
            .prop_map(|s| bad(format!("\"{s}\""), RejectReason::UnknownSensor)),
        1 => proptest::sample::select(vec!["wl-up-01", "WL-UP-01 ", "", "水位-01"])
            .prop_map(|s| bad(format!("\"{s}\""), RejectReason::UnknownSensor)),
        1 => proptest::sample::select(vec!["1", "null", "true", "[]", "{}", "-0.5"])
            .prop_map(|s| bad(s, RejectReason::Malformed)),
    ]
}

/// Values good for every sensor kind are inside both ranges (0..=500).
fn value() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (0.0f64..=500.0).prop_map(|v| good(format!("{v}"))),
        1 => (0u32..=500).prop_map(|v| good(format!("{v}"))),
        1 => (0.0f64..=500.0).prop_map(|v| good(format!("\" {v} \""))),
        1 => proptest::sample::select(vec!["0", "500", "0.0", "-0.0", "5e2", "1E-300"]).prop_map(good),
        2 => proptest::sample::select(vec![
            "\"NaN\"", "\"nan\"", "\"inf\"", "\"-Infinity\"", "\"infinity\"", "\"+inf\"",
            "null", "\"\"", "\"abc\"", "\"1,5\"", "\"0x10\"", "\"1e999\"",
        ])
        .prop_map(|v| bad(v, RejectReason::NotANumber)),
        2 => prop_oneof![
            (1000.0001f64..1e308).prop_map(|v| format!("{v:e}")),
            (-1e308f64..-50.0001).prop_map(|v| format!("{v}")),
            Just("1.7976931348623157e308".to_string()),
            Just("-1.7976931348623157e308".to_string()),
            Just("99999999999999999999999".to_string()),
            Just("1001".to_string()),
        ]
        .prop_map(|v| bad(v, RejectReason::OutOfRange)),
        // Wrong types and numbers no f64 holds. (A bare NaN is not JSON at all: the
        // arbitrary-text properties cover it; here it would spoil a whole array.)
        1 => proptest::sample::select(vec!["1e400", "-1e400", "true", "[1]", "{\"v\":1}"])
            .prop_map(|v| bad(v, RejectReason::Malformed)),
    ]
}

fn ts() -> impl Strategy<Value = Field> {
    let lo = NOW - LIMITS.retention_ms + 1;
    let hi = NOW + LIMITS.max_future_ms - 1;
    let text = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    prop_oneof![
        4 => (lo..=hi).prop_map(|ms| good(ms.to_string())),
        2 => (lo..=hi).prop_map(move |ms| good(format!("\"{}\"", text(ms)))),
        1 => (lo..=hi).prop_map(|ms| good(format!("{ms}.5"))),
        2 => prop_oneof![
            (hi + 2..NOW + 100 * 365 * 86_400_000).prop_map(|ms| ms.to_string()),
            Just(i64::MAX.to_string()),
            Just("8999999999999999.0".to_string()),
        ]
        .prop_map(|v| bad(v, RejectReason::FutureTimestamp)),
        2 => prop_oneof![
            (0..lo - 1).prop_map(|ms| ms.to_string()),
            (i64::MIN..0).prop_map(|ms| ms.to_string()),
            Just("\"1970-01-01T00:00:00Z\"".to_string()),
            Just("\"0001-01-01T00:00:00+14:00\"".to_string()),
        ]
        .prop_map(|v| bad(v, RejectReason::TooOld)),
        2 => proptest::sample::select(vec![
            "\"yesterday\"", "\"2026-07-02\"", "\"2026-07-02 08:00:00\"", "\"2026-13-02T08:00:00Z\"", "\"\"",
        ])
        .prop_map(|v| bad(v, RejectReason::Malformed)),
        1 => proptest::sample::select(vec![
            "9223372036854775808", "18446744073709551616", "1e300", "-1e300", "null", "true", "[1]",
        ])
        .prop_map(|v| bad(v, RejectReason::Malformed)),
    ]
}

/// `None`: no `seq` field. Numbers are made unique per record by the caller.
fn seq() -> impl Strategy<Value = Option<Field>> {
    prop_oneof![
        3 => Just(None),
        3 => Just(Some(good("UNIQUE"))),
        1 => Just(Some(good("null"))),
        1 => proptest::sample::select(vec!["-1", "\"7\"", "1.5", "18446744073709551616", "[]"])
            .prop_map(|v| Some(bad(v, RejectReason::Malformed))),
    ]
}

/// A whole record: its text and the reasons its broken parts call for (empty: valid).
#[derive(Clone, Debug)]
struct Record {
    text: String,
    bad: Vec<RejectReason>,
}

/// How a record's object is put together, beyond its fields' values.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Plain,
    Reordered,
    Spaced,
    MissingValue,
    MissingTs,
    MissingSensor,
    UnknownField,
    DuplicateField,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        12 => Just(Shape::Plain),
        2 => Just(Shape::Reordered),
        2 => Just(Shape::Spaced),
        1 => Just(Shape::MissingValue),
        1 => Just(Shape::MissingTs),
        1 => Just(Shape::MissingSensor),
        1 => Just(Shape::UnknownField),
        1 => Just(Shape::DuplicateField),
    ]
}

fn record(i: usize) -> impl Strategy<Value = Record> {
    (sensor(), ts(), value(), seq(), shape()).prop_map(move |(s, t, v, q, shape)| {
        let q = q.map(|q| Field {
            text: q.text.replace("UNIQUE", &(i as u64 * 7 + 1).to_string()),
            ..q
        });
        let mut parts = vec![
            ("sensor", s.clone()),
            ("ts", t.clone()),
            ("value", v.clone()),
        ];
        if let Some(q) = &q {
            parts.push(("seq", q.clone()));
        }
        let mut bad: Vec<RejectReason> = parts.iter().filter_map(|(_, f)| f.bad).collect();
        match shape {
            Shape::Plain | Shape::Spaced => {}
            Shape::Reordered => parts.reverse(),
            Shape::MissingValue | Shape::MissingTs | Shape::MissingSensor => {
                let gone = match shape {
                    Shape::MissingValue => "value",
                    Shape::MissingTs => "ts",
                    _ => "sensor",
                };
                parts.retain(|(k, _)| *k != gone);
                // Serde reports a missing field at the end of the object, after any field
                // of the wrong type.
                bad = parts
                    .iter()
                    .filter_map(|(_, f)| f.bad)
                    .filter(|r| *r == RejectReason::Malformed)
                    .collect();
                bad.push(RejectReason::MissingField);
            }
            Shape::UnknownField => {
                parts.push(("unit", good("\"cm\"")));
                bad.push(RejectReason::Malformed);
            }
            Shape::DuplicateField => {
                parts.push(("value", good("1")));
                bad.push(RejectReason::Malformed);
            }
        }
        let sep = if matches!(shape, Shape::Spaced) {
            " , "
        } else {
            ","
        };
        let body = parts
            .iter()
            .map(|(k, f)| {
                if matches!(shape, Shape::Spaced) {
                    format!("\t\"{k}\" :  {}", f.text)
                } else {
                    format!("\"{k}\":{}", f.text)
                }
            })
            .collect::<Vec<_>>()
            .join(sep);
        Record {
            text: format!("{{{body}}}"),
            bad,
        }
    })
}

fn records() -> impl Strategy<Value = Vec<Record>> {
    (1usize..24).prop_flat_map(|n| (0..n).map(record).collect::<Vec<_>>())
}

/// The body and, per record, its index in the body (line number for NDJSON).
fn body(records: &[Record], framing: Framing, single: bool, crlf: bool) -> (String, Vec<usize>) {
    match framing {
        Framing::Json if single => (records[0].text.clone(), vec![0]),
        Framing::Json => (
            format!(
                "[{}]",
                records
                    .iter()
                    .map(|r| r.text.as_str())
                    .collect::<Vec<_>>()
                    .join(",\n ")
            ),
            (0..records.len()).collect(),
        ),
        Framing::NdJson => {
            // Blank lines in between, as some devices write them; they are not records but
            // they count as lines.
            let mut text = String::new();
            let mut at = Vec::new();
            let mut line = 0;
            for (i, r) in records.iter().enumerate() {
                if i % 5 == 4 {
                    text.push_str(if crlf { "\r\n" } else { "\n" });
                    line += 1;
                }
                text.push_str(&r.text);
                text.push_str(if crlf { "\r\n" } else { "\n" });
                at.push(line);
                line += 1;
            }
            (text, at)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any bytes: every record becomes a reading or a reject with a reason, nothing lost.
    #[test]
    fn any_bytes_become_readings_or_rejects_with_reasons(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        framing in framing(),
    ) {
        let landed = runtime().block_on(ingest(&bytes, framing));
        check_landed(&bytes, framing, &landed)?;
    }

    /// Text made of JSON's own pieces, so the parser gets further than with random bytes.
    #[test]
    fn json_like_text_becomes_readings_or_rejects_with_reasons(
        pieces in proptest::collection::vec(proptest::sample::select(vec![
            "{", "}", "[", "]", ",", ":", "\n", "\r\n", " ", "\"sensor\"", "\"ts\"", "\"value\"",
            "\"seq\"", "\"WL-UP-01\"", "\"RN-RG-01\"", "1783000000000", "12.5", "\"NaN\"", "null",
            "-1", "1e999", "\"2026-07-02T08:00:00Z\"", "true", "\"\\u0000\"", "\u{feff}", "\\",
        ]), 0..60),
        framing in framing(),
    ) {
        let body = pieces.concat();
        let landed = runtime().block_on(ingest(body.as_bytes(), framing));
        check_landed(body.as_bytes(), framing, &landed)?;
    }

    /// Readings with good and broken fields: the verdict on each is the one predicted.
    #[test]
    fn each_reading_gets_the_verdict_its_fields_call_for(
        recs in records(),
        framing in framing(),
        single in any::<bool>(),
        crlf in any::<bool>(),
    ) {
        let (text, at) = body(&recs, framing, single, crlf);
        let landed = runtime().block_on(ingest(text.as_bytes(), framing));
        check_landed(text.as_bytes(), framing, &landed)?;
        let used = if framing == Framing::Json && single { &recs[..1] } else { &recs[..] };
        prop_assert_eq!(landed.readings.len() + landed.rejects.len(), used.len());
        for (r, index) in used.iter().zip(at) {
            let reject = landed.rejects.iter().find(|j| j.index == Some(index));
            match (r.bad.as_slice(), reject) {
                ([], None) => {}
                ([], Some(j)) => prop_assert!(false, "{} refused: {:?} {}", r.text, j.reason, j.detail),
                (_, None) => prop_assert!(false, "{} accepted, expected {:?}", r.text, r.bad),
                ([only], Some(j)) => prop_assert_eq!(*only, j.reason, "{}: {}", r.text, j.detail),
                (_, Some(j)) => prop_assert!(
                    r.bad.contains(&j.reason),
                    "{}: {:?} is none of {:?}: {}", r.text, j.reason, r.bad, j.detail
                ),
            }
        }
    }
}

/// The same sequence number twice from one sensor: the second is refused, and says so.
#[test]
fn a_repeated_sequence_number_is_refused_naming_it() {
    let body = format!(
        "{{\"sensor\":\"WL-UP-01\",\"ts\":{NOW},\"value\":1,\"seq\":5}}\n{{\"sensor\":\"WL-UP-01\",\"ts\":{NOW},\"value\":2,\"seq\":5}}\n"
    );
    let landed = runtime().block_on(ingest(body.as_bytes(), Framing::NdJson));
    check_landed(body.as_bytes(), Framing::NdJson, &landed).unwrap();
    assert_eq!(landed.readings.len(), 1);
    assert_eq!(landed.rejects[0].reason, RejectReason::DuplicateSequence);
}
