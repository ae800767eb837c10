//! US Central local time (Houston: CST, UTC−6, and CDT, UTC−5) to UTC.
//!
//! HCFCD exports stamp in local wall-clock time. The workspace has no time-zone database
//! (no chrono-tz), and one fixed rule is all Houston needs: since 2007 (Energy Policy Act of
//! 2005) daylight time runs from the second Sunday of March at 02:00 CST to the first Sunday of
//! November at 02:00 CDT. Earlier years had other rules and are refused rather than guessed.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Weekday};

/// Why a local time has no single UTC instant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CentralTimeError {
    /// Inside the spring-forward gap (02:00–02:59 on the second Sunday of March).
    #[error("{0} does not exist in US Central time (clocks jump from 02:00 to 03:00)")]
    Skipped(NaiveDateTime),
    /// Before the 2007 rule.
    #[error("{0}: only the 2007+ US daylight-saving rule is implemented")]
    UnsupportedYear(NaiveDateTime),
}

/// Convert a US Central wall-clock time to UTC milliseconds.
///
/// In the autumn repeated hour (01:00–01:59 on the first Sunday of November) the time is read
/// as CDT, the first of the two: a timestamp alone cannot say which was meant, and a series
/// exported in local time shows the repeat as a duplicate, which the caller must judge.
pub fn to_utc_ms(local: NaiveDateTime) -> Result<i64, CentralTimeError> {
    let year = local.year();
    if year < 2007 {
        return Err(CentralTimeError::UnsupportedYear(local));
    }
    let two = NaiveTime::from_hms_opt(2, 0, 0).expect("valid");
    let dst_start = nth_sunday(year, 3, 2).and_time(two);
    let dst_end = nth_sunday(year, 11, 1).and_time(two);
    let hours = if local >= dst_start && local < dst_start + Duration::hours(1) {
        return Err(CentralTimeError::Skipped(local));
    } else if local >= dst_start + Duration::hours(1) && local < dst_end {
        5
    } else {
        6
    };
    Ok((local + Duration::hours(hours))
        .and_utc()
        .timestamp_millis())
}

/// The `n`th Sunday of a month.
fn nth_sunday(year: i32, month: u32, n: u32) -> NaiveDate {
    NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Sun, n as u8)
        .expect("every month has a first and a second Sunday")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }
    fn utc(s: &str) -> i64 {
        at(s).and_utc().timestamp_millis()
    }

    #[test]
    fn harvey_is_cdt() {
        assert_eq!(
            to_utc_ms(at("2017-08-27 07:20")),
            Ok(utc("2017-08-27 12:20"))
        );
        assert_eq!(
            to_utc_ms(at("2017-08-30 00:00")),
            Ok(utc("2017-08-30 05:00"))
        );
    }

    #[test]
    fn winter_is_cst() {
        assert_eq!(
            to_utc_ms(at("2017-01-15 12:00")),
            Ok(utc("2017-01-15 18:00"))
        );
        assert_eq!(
            to_utc_ms(at("2017-12-01 00:00")),
            Ok(utc("2017-12-01 06:00"))
        );
    }

    #[test]
    fn the_2017_switches() {
        // 2017: daylight time from Sunday 12 March to Sunday 5 November.
        assert_eq!(
            to_utc_ms(at("2017-03-12 01:59")),
            Ok(utc("2017-03-12 07:59"))
        );
        assert!(matches!(
            to_utc_ms(at("2017-03-12 02:30")),
            Err(CentralTimeError::Skipped(_))
        ));
        assert_eq!(
            to_utc_ms(at("2017-03-12 03:00")),
            Ok(utc("2017-03-12 08:00"))
        );
        assert_eq!(
            to_utc_ms(at("2017-11-05 00:59")),
            Ok(utc("2017-11-05 05:59"))
        );
        // The repeated hour reads as CDT; from 02:00 it is CST.
        assert_eq!(
            to_utc_ms(at("2017-11-05 01:30")),
            Ok(utc("2017-11-05 06:30"))
        );
        assert_eq!(
            to_utc_ms(at("2017-11-05 02:00")),
            Ok(utc("2017-11-05 08:00"))
        );
    }

    #[test]
    fn other_years_follow_the_same_rule_and_old_ones_are_refused() {
        // 2024: 10 March and 3 November.
        assert_eq!(
            to_utc_ms(at("2024-03-10 03:00")),
            Ok(utc("2024-03-10 08:00"))
        );
        assert_eq!(
            to_utc_ms(at("2024-03-09 12:00")),
            Ok(utc("2024-03-09 18:00"))
        );
        assert_eq!(
            to_utc_ms(at("2024-11-03 02:00")),
            Ok(utc("2024-11-03 08:00"))
        );
        assert!(matches!(
            to_utc_ms(at("2005-08-01 00:00")),
            Err(CentralTimeError::UnsupportedYear(_))
        ));
    }
}
