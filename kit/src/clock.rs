//! The wall clock, in the unit every record and watermark uses: nanoseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch. Saturates at `i64::MAX` (after the year 2262) and at
/// `i64::MIN`; a clock set before 1970 gives a negative value rather than a wrong positive one.
pub fn now_ns() -> i64 {
    ns_since_epoch(SystemTime::now())
}

/// [`now_ns`] for a given instant.
pub fn ns_since_epoch(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map(|ns| -ns).unwrap_or(i64::MIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn saturates_at_both_ends_of_the_range() {
        let check = |at: SystemTime, expected: i64| assert_eq!(ns_since_epoch(at), expected, "{at:?}");
        check(UNIX_EPOCH, 0);
        check(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_007), 1_700_000_000_000_000_007);
        check(UNIX_EPOCH - Duration::from_nanos(5), -5);
        check(UNIX_EPOCH + Duration::from_nanos(i64::MAX as u64), i64::MAX);
        check(UNIX_EPOCH + Duration::from_nanos(i64::MAX as u64) + Duration::from_nanos(1), i64::MAX);
        check(UNIX_EPOCH - Duration::from_secs(400 * 365 * 86_400), i64::MIN);
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        assert!(now_ns() > 1_780_000_000_000_000_000);
    }
}
