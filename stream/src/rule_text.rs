//! The text a transition carries for the rule that moved it ("depth 15.3 cm >= blue 15 cm"),
//! written into one buffer.
//!
//! A storm that churns moves a point's level on one reading in five, and each of those texts
//! was one to three `format!`s (and a `to_string`), each its own allocation and trip through
//! `core::fmt` (5 % of a worker's time in `stream-core`'s synthetic storm). The numbers are
//! written here by hand when they are what rule values and thresholds nearly always are (whole
//! tenths, whole numbers), and by the standard library otherwise, so the text is byte for byte
//! what `format!` wrote (checked by the proptests below).

use std::fmt::Write;

/// Room for the longest usual text without growing ("rain 10min 123.4 mm >= 短时强降水 50 mm
/// (orange)" is 53 bytes).
const USUAL_LEN: usize = 64;

/// An empty text with room for the usual rule.
pub(crate) fn text() -> String {
    String::with_capacity(USUAL_LEN)
}

/// "1h", "3h", "10min": how rules name a rain window (the SMS text reads it back).
pub(crate) fn push_window(s: &mut String, window_min: u32) {
    // Not `is_multiple_of`: the workspace still promises Rust 1.85.
    match (window_min / 60, window_min % 60) {
        (hours, 0) => {
            push_u64(s, u64::from(hours));
            s.push('h');
        }
        _ => {
            push_u64(s, u64::from(window_min));
            s.push_str("min");
        }
    }
}

/// `v` as `format!("{v:.1}")` writes it.
pub(crate) fn push_one_decimal(s: &mut String, v: f64) {
    let tenths = v * 10.0;
    // Whole, and small enough that every integer near it is exact: then `v` is within a
    // rounding error of tenths / 10, nowhere near halfway to another tenth, so rounding it to
    // one decimal gives these digits.
    if tenths.fract() == 0.0 && tenths.abs() < (1u64 << 52) as f64 {
        let whole = tenths.abs() as u64;
        if v.is_sign_negative() {
            s.push('-');
        }
        push_u64(s, whole / 10);
        s.push('.');
        s.push(char::from(b'0' + (whole % 10) as u8));
    } else {
        let _ = write!(s, "{v:.1}");
    }
}

/// `v` as `format!("{v}")` writes it: a whole number without a decimal point.
pub(crate) fn push_number(s: &mut String, v: f64) {
    // Whole and exact as an integer: Display writes its digits alone (and "-0" for -0.0).
    if v.fract() == 0.0 && v.abs() < (1u64 << 52) as f64 {
        if v.is_sign_negative() {
            s.push('-');
        }
        push_u64(s, v.abs() as u64);
    } else {
        let _ = write!(s, "{v}");
    }
}

fn push_u64(s: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn numbers() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (-100_000i64..100_000).prop_map(|t| t as f64 / 10.0),
            (-100_000i64..100_000).prop_map(|t| t as f64 / 20.0),
            (-100_000i64..100_000).prop_map(|t| t as f64 / 100.0),
            (-1_000_000i64..1_000_000).prop_map(|t| t as f64),
            (-1000.0f64..1000.0),
            prop::sample::select(vec![
                -0.0,
                0.0,
                0.05,
                0.15,
                0.25,
                -0.05,
                4503599627370495.5,
                4503599627370496.0,
                4.5e15,
                1e300,
                u64::MAX as f64,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MIN_POSITIVE,
            ]),
        ]
    }

    fn written(push: fn(&mut String, f64), v: f64) -> String {
        // Written after text already there, as rules are.
        let mut s = String::from("x ");
        push(&mut s, v);
        s.split_off(2)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        #[test]
        fn one_decimal_is_what_the_standard_library_writes(v in numbers()) {
            prop_assert_eq!(written(push_one_decimal, v), format!("{v:.1}"));
        }

        #[test]
        fn a_number_is_what_the_standard_library_writes(v in numbers()) {
            prop_assert_eq!(written(push_number, v), format!("{v}"));
        }

        #[test]
        fn a_window_is_named_in_hours_when_it_is_whole_hours(w in any::<u32>()) {
            let mut s = String::new();
            push_window(&mut s, w);
            let expected = if w % 60 == 0 { format!("{}h", w / 60) } else { format!("{w}min") };
            prop_assert_eq!(s, expected);
        }
    }

    #[test]
    fn windows_read_as_rules_name_them() {
        for (w, name) in [
            (10, "10min"),
            (60, "1h"),
            (180, "3h"),
            (90, "90min"),
            (0, "0h"),
        ] {
            let mut s = String::new();
            push_window(&mut s, w);
            assert_eq!(s, name);
        }
    }
}
