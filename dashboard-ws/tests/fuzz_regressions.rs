//! Inputs the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) found, kept as tests. Each file
//! under `tests/fuzz/` is the input as the fuzzer saved it.

use floodcmd_dashboard::actions::parse_request;

/// fuzz/wall_requests: an action whose incident segment has `%` right before a multi-byte
/// character (`.../incidents/UP-01:=e%%%%%%%%%t厰场/actions`; the `http` crate lets raw UTF-8
/// through in a path). Percent-decoding sliced the text inside the character and panicked
/// the request's task. The input is the target's: a selector byte (1: an action), the
/// segment, a newline, the body.
#[test]
fn a_percent_before_a_multibyte_character_is_kept_as_it_is() {
    let input = include_bytes!("fuzz/action-percent-before-multibyte.bin");
    assert_eq!(input[0] % 3, 1);
    let rest = &input[1..];
    let nl = rest.iter().position(|&b| b == b'\n').unwrap();
    let segment = std::str::from_utf8(&rest[..nl]).unwrap();
    let why = parse_request(segment, &rest[nl + 1..]).unwrap_err();
    assert!(why.starts_with("body: "), "{why}");
    // With a good body the id comes through, the stray `%`s kept.
    let (incident, _) = parse_request(segment, br#"{"kind":"acknowledge"}"#).unwrap();
    assert_eq!(incident, "UP-01:=e%%%%%%%%%t厰场");
}
