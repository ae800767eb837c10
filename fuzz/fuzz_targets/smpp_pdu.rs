//! A PDU from the SMSC as the SMPP client reads it off the socket (`Pdu::decode` on a frame of
//! `command_length` bytes), and for a `deliver_sm` what the client makes of it: a delivery
//! receipt (`parse_receipt`) or the text of a reply from a phone (`mo_text`). The first four
//! bytes are set to the input's length, as the client's framing guarantees, so the fuzzer
//! spends its time in the bodies; the unpatched input is decoded too.
#![no_main]

use floodcmd_sms::smpp::pdu::{Body, Pdu, MAX_PDU_LEN};
use floodcmd_sms::smpp::{mo_text, parse_receipt};
// The allocation limits (`LimitedAlloc`) are in the shared crate.
use floodcmd_fuzz as _;
use libfuzzer_sys::fuzz_target;

fn check(frame: &[u8]) {
    match Pdu::decode(frame) {
        Ok(pdu) => {
            assert!((16..=MAX_PDU_LEN as usize).contains(&frame.len()));
            if let Body::DeliverSm(sm) = &pdu.body {
                if parse_receipt("smsc", sm).is_none() {
                    let _ = mo_text(sm);
                }
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 16 {
        let mut frame = data.to_vec();
        frame[..4].copy_from_slice(&(data.len() as u32).to_be_bytes());
        check(&frame);
    }
});
