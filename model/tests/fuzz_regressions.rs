//! Inputs the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) found, kept as tests. Each file
//! under `tests/fuzz/` is the input as the fuzzer saved it.

use floodcmd_model::config::ConfigErrors;
use floodcmd_model::settings::Settings;
use floodcmd_model::District;

fn every_problem_says_what(errors: &ConfigErrors) {
    assert!(!errors.0.is_empty());
    for p in &errors.0 {
        assert!(
            !p.path.trim().is_empty() && !p.message.trim().is_empty(),
            "a problem without a reason: {p:?}"
        );
    }
}

/// fuzz/settings: a form feed inside a comment. The toml crate's error has no message for
/// it, and the problem read "line 2, column 17: " and nothing more.
#[test]
fn a_toml_error_without_a_message_still_says_what_is_wrong() {
    // As the target reads its input: the file, then after a NUL the environment.
    let input =
        std::str::from_utf8(include_bytes!("fuzz/settings-form-feed-in-comment.toml")).unwrap();
    let (source, env) = input.split_once('\0').unwrap_or((input, ""));
    let env = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let errors = Settings::load(source, env).unwrap_err();
    every_problem_says_what(&errors);
    let text = errors.to_string();
    assert!(
        text.starts_with("line 2, column 17: TOML syntax error in `# FLOODCMD_<SECT\\u{c}ION>"),
        "{text}"
    );
}

/// fuzz/district: a key without a value at the end of the file; same empty message.
#[test]
fn a_key_without_a_value_is_named() {
    let source =
        std::str::from_utf8(include_bytes!("fuzz/district-key-without-value.toml")).unwrap();
    let errors = District::from_toml_str(source).unwrap_err();
    every_problem_says_what(&errors);
    assert_eq!(
        errors.to_string(),
        "line 4, column 5: TOML syntax error in `nam=`"
    );
    // At the very end of a file that ends with a newline there is no line to quote.
    let errors = District::from_toml_str("a =\n").unwrap_err();
    every_problem_says_what(&errors);
}

/// fuzz/bus_codec: `"ts_ms":-0`. The stream stage's fast reading decoder took it as 0 while
/// the general decoder (serde_json: `-0` is the float -0.0, not an integer) refused it, so
/// which records were accepted depended on which decoder read them.
#[test]
fn the_fast_reading_decoder_refuses_negative_zero_as_serde_does() {
    use floodcmd_model::codec::{decode, decode_reading};
    use floodcmd_model::Reading;
    let payload = include_bytes!("fuzz/bus-codec-negative-zero-integer.json");
    let fast = decode_reading(payload).map_err(|e| e.to_string());
    let slow = decode::<Reading>(payload).map_err(|e| e.to_string());
    assert!(slow.is_err());
    assert_eq!(fast, slow);
}
