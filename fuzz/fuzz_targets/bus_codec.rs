//! A record payload as a consumer reads it off the bus (Kafka or embedded), decoded as every
//! event type the stages read: `decode_reading` (the stream stage's fast path) must agree with
//! the generic `decode::<Reading>` on what it accepts and what comes out, every decoded
//! event must encode and decode back to itself, and a decoded status or transition written by
//! `BatchEncoder` (the stream stage's hand-written JSON) must be byte for byte what `encode`
//! writes.
#![no_main]

use floodcmd_model::codec::{decode, decode_reading, encode, BatchEncoder};
use floodcmd_model::event::{
    Action, AlertTransition, Delivery, Incident, Notification, PointStatus, Reject,
};
use floodcmd_model::Reading;
// The allocation limits (`LimitedAlloc`) are in the shared crate.
use floodcmd_fuzz as _;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(payload: &[u8]) {
    if let Ok(v) = decode::<T>(payload) {
        let again = decode::<T>(&encode(&v)).expect("what was decoded encodes decodably");
        assert_eq!(again, v);
    }
}

fuzz_target!(|payload: &[u8]| {
    let fast = decode_reading(payload).map_err(|e| e.to_string());
    let slow = decode::<Reading>(payload).map_err(|e| e.to_string());
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(a.value.to_bits(), b.value.to_bits());
        }
        _ => assert_eq!(fast, slow),
    }
    if let Ok(status) = decode::<PointStatus>(payload) {
        let mut batch = BatchEncoder::default();
        let at = batch.status(&status);
        assert_eq!(&batch.finish()[at], &encode(&status)[..]);
    }
    if let Ok(transition) = decode::<AlertTransition>(payload) {
        let mut batch = BatchEncoder::default();
        let at = batch.transition(&transition);
        assert_eq!(&batch.finish()[at], &encode(&transition)[..]);
    }
    round_trip::<Reading>(payload);
    round_trip::<Reject>(payload);
    round_trip::<PointStatus>(payload);
    round_trip::<AlertTransition>(payload);
    round_trip::<Incident>(payload);
    round_trip::<Action>(payload);
    round_trip::<Notification>(payload);
    round_trip::<Delivery>(payload);
});
