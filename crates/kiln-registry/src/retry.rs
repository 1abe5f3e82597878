//! When and how long to wait before trying a registry request again.

use std::time::{Duration, SystemTime};

/// Retries for transient failures: connection errors, 5xx answers and 429 rate limiting.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait before the second try; it doubles for each try after that.
    pub base_delay: Duration,
    /// No wait is longer than this, whatever the registry's `Retry-After` asks.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Whether an answer with this status is worth trying again. 501 (not implemented) and
    /// 505 (version not supported) will not change on a second try.
    pub fn retryable_status(status: u16) -> bool {
        status == 429
            || status == 408
            || ((500..600).contains(&status) && !matches!(status, 501 | 505))
    }

    /// The wait before try number `attempt + 1` (the first retry has `attempt == 1`):
    /// the registry's `Retry-After` (seconds or an HTTP date) when it sent one, else
    /// exponential backoff.
    pub fn delay(&self, attempt: u32, retry_after: Option<&str>) -> Duration {
        let asked = retry_after.and_then(parse_retry_after);
        let backoff = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        asked.unwrap_or(backoff).min(self.max_delay)
    }
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses_are_retried_and_others_are_not() {
        for s in [429, 408, 500, 502, 503, 504] {
            assert!(RetryPolicy::retryable_status(s), "{s}");
        }
        for s in [200, 201, 202, 400, 401, 403, 404, 501, 505] {
            assert!(!RetryPolicy::retryable_status(s), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(p.delay(1, None), Duration::from_millis(100));
        assert_eq!(p.delay(2, None), Duration::from_millis(200));
        assert_eq!(p.delay(3, None), Duration::from_millis(400));
        assert_eq!(p.delay(9, None), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_wins_over_backoff_within_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, Some("2")), Duration::from_secs(2));
        assert_eq!(p.delay(1, Some("3600")), p.max_delay);
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
        let d = p.delay(1, Some(&soon));
        assert!(
            d > Duration::from_secs(3) && d <= Duration::from_secs(5),
            "{d:?}"
        );
        // An unreadable value falls back to backoff.
        assert_eq!(p.delay(1, Some("soon")), p.base_delay);
    }
}
