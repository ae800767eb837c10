//! Inputs the fuzz target (`fuzz/ws_frames`, run by `scripts/fuzz.sh`) found, kept as tests.
//! Each file under `tests/fuzz/` is the input as the fuzzer saved it: a selector byte (even:
//! frames), then what a client sent.

use floodcmd_ws_frames::reader::End;
use floodcmd_ws_frames::{FrameReader, Incoming, WireError};

/// Every message of `input` (after its selector byte), read as the wall reads a client, up to
/// the first error.
async fn read_all(input: &[u8]) -> (Vec<Incoming>, Option<WireError>) {
    assert_eq!(input[0] % 2, 0, "a frames input");
    let mut r = FrameReader::new(&input[1..], End::Server, 64 * 1024, true);
    let mut got = Vec::new();
    loop {
        match r.next().await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => return (got, None),
            Err(e) => return (got, Some(e)),
        }
    }
}

/// A text frame begun without FIN, then a continuation whose 64-bit length is all ones: the
/// limit check added it to the bytes so far and overflowed (a panic with debug assertions,
/// a wrapped length that passed the check without them). It is refused by the limit now, and
/// a top bit set is refused as RFC 6455 §5.2 requires.
#[tokio::test]
async fn a_64_bit_length_near_the_top_is_refused_without_overflow() {
    let input = include_bytes!("fuzz/huge-length-after-a-fragment.bin");
    let (_, err) = read_all(input).await;
    assert!(
        matches!(
            err,
            Some(WireError::TooLarge { .. } | WireError::Protocol(_))
        ),
        "{err:?}"
    );
    let mut frame = vec![0x81, 0xFF];
    frame.extend_from_slice(&u64::MAX.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    let (_, err) = read_all(&[&[0u8][..], &frame].concat()).await;
    match err {
        Some(WireError::Protocol(why)) => assert!(why.contains("top bit"), "{why}"),
        other => panic!("{other:?}"),
    }
}
