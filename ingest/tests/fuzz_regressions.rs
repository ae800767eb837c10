//! Inputs the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) found, kept as tests. Each file
//! under `tests/fuzz/` is the input as the fuzzer saved it.

use floodcmd_ingest::auth::DeviceRegistry;
use floodcmd_model::District;

/// fuzz/devices: `devces =` (a key without a value). The problem read "line 1, column 9: "
/// with no reason: the toml crate gives this error no message.
#[test]
fn a_devices_file_syntax_error_says_what_is_wrong() {
    let district = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
    let source =
        std::str::from_utf8(include_bytes!("fuzz/devices-key-without-value.toml")).unwrap();
    let errors = DeviceRegistry::from_toml_str(source, &district).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].path, "line 1, column 9");
    assert_eq!(errors.0[0].message, "TOML syntax error in `devces =`");
}
