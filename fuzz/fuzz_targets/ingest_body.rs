//! An HTTP body to `POST /v1/readings`, under both framings: split into records
//! (`floodcmd_ingest::decode::split`) and each judged by the validator. Every record becomes a
//! reading or a reject with a reason; NDJSON gives one record per non-blank line.
#![no_main]

use floodcmd_fuzz::judge;
use floodcmd_ingest::decode::{split, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    for framing in [Framing::Json, Framing::NdJson] {
        let records = split(body, framing);
        judge(&records, body);
        match framing {
            Framing::NdJson => {
                let lines = body
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                    .count();
                assert_eq!(records.len(), lines);
            }
            Framing::Json => {
                // One record, unless the body is an array of them.
                if body.trim_ascii_start().first() != Some(&b'[') {
                    assert_eq!(records.len(), 1);
                }
            }
        }
    }
});
