//! An MQTT publish as the adapter gets it: the first line of the input is the topic, the rest
//! the payload. The device id comes from the topic (`floodcmd_ingest::mqtt::device_id`), the
//! framing from the payload (`framing_of`), then the records are split and judged as over
//! HTTP.
#![no_main]

use floodcmd_fuzz::judge;
use floodcmd_ingest::decode::{split, Framing};
use floodcmd_ingest::mqtt::{device_id, framing_of};
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "floodcmd/readings";

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    // rumqttc hands the adapter topics as UTF-8 text.
    let topic = String::from_utf8_lossy(topic);
    let id = device_id(PREFIX, &topic);
    assert!(topic.ends_with(id));
    assert!(!id.starts_with('/'));
    if !topic.starts_with(PREFIX) {
        assert!(id.is_empty());
    }
    let framing = framing_of(payload);
    if framing == Framing::NdJson {
        assert!(payload.trim_ascii().contains(&b'\n'));
    }
    let records = split(payload, framing);
    judge(&records, payload);
});
