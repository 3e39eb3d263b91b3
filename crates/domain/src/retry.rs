//! When the next try of a failed task instance may start.
//!
//! This is Airflow's `TaskInstance.next_retry_datetime`: a fixed `retry_delay`, or with
//! `retry_exponential_backoff` a delay between `retry_delay * 2^(n-1)` and twice that, where
//! the point in that range is a deterministic hash of job, task, logical date and try number
//! (so two task instances that failed together do not retry together, yet a restarted
//! scheduler computes the same time), capped by `max_retry_delay`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};

/// A task's retry settings, after `defaults` are merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra tries after the first one.
    pub retries: u32,
    pub retry_delay: Duration,
    pub exponential_backoff: bool,
    pub max_retry_delay: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Airflow's defaults: no retries, five minutes between them.
        RetryPolicy {
            retries: 0,
            retry_delay: Duration::from_secs(300),
            exponential_backoff: false,
            max_retry_delay: None,
        }
    }
}

/// Which task instance and try the delay is for: the inputs of the jitter hash.
pub struct RetryKey<'a> {
    pub job_id: &'a str,
    pub task_id: &'a str,
    pub logical_date: DateTime<Utc>,
    /// The try that just failed, counting from 1.
    pub try_number: u32,
}

impl RetryPolicy {
    /// The delay between the end of the failed try `key.try_number` and the next try.
    pub fn delay_after(&self, key: &RetryKey<'_>) -> Duration {
        let delay = if self.exponential_backoff {
            exponential_delay(self.retry_delay, key)
        } else {
            self.retry_delay
        };
        match self.max_retry_delay {
            Some(max) => delay.min(max),
            None => delay,
        }
    }

    /// The time the next try may start, given when the failed try ended.
    pub fn next_try_at(&self, failed_at: DateTime<Utc>, key: &RetryKey<'_>) -> DateTime<Utc> {
        let delay =
            chrono::TimeDelta::from_std(self.delay_after(key)).unwrap_or(chrono::TimeDelta::MAX);
        failed_at
            .checked_add_signed(delay)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

fn exponential_delay(base: Duration, key: &RetryKey<'_>) -> Duration {
    let exponent = key.try_number.saturating_sub(1).min(62);
    let scaled = base.as_secs_f64() * 2f64.powi(exponent as i32);
    // Airflow rounds up and never lets the range collapse below one second.
    let min_backoff = (scaled.ceil() as u64).max(1);
    let jitter = hash_mod(&jitter_input(key), min_backoff);
    Duration::from_secs(min_backoff.saturating_add(jitter))
}

/// `"{dag_id}#{task_id}#{logical_date}#{try_number}"` with the logical date as Python
/// prints an aware datetime, so the jitter matches Airflow's for the same inputs.
fn jitter_input(key: &RetryKey<'_>) -> String {
    let date = key
        .logical_date
        .format("%Y-%m-%d %H:%M:%S%.f+00:00")
        .to_string();
    format!("{}#{}#{}#{}", key.job_id, key.task_id, date, key.try_number)
}

/// The SHA-1 digest of `text` read as one big-endian integer, modulo `modulus`.
fn hash_mod(text: &str, modulus: u64) -> u64 {
    let digest = Sha1::digest(text.as_bytes());
    let modulus = u128::from(modulus);
    let remainder = digest
        .iter()
        .fold(0u128, |acc, byte| (acc * 256 + u128::from(*byte)) % modulus);
    remainder as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn key(try_number: u32) -> RetryKey<'static> {
        RetryKey {
            job_id: "stripe_to_warehouse",
            task_id: "extract",
            logical_date: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            try_number,
        }
    }

    fn backoff(delay: u64, max: Option<u64>) -> RetryPolicy {
        RetryPolicy {
            retries: 10,
            retry_delay: Duration::from_secs(delay),
            exponential_backoff: true,
            max_retry_delay: max.map(Duration::from_secs),
        }
    }

    #[test]
    fn fixed_delay_ignores_the_try_number() {
        let policy = RetryPolicy {
            retry_delay: Duration::from_secs(30),
            ..Default::default()
        };
        assert_eq!(policy.delay_after(&key(1)), Duration::from_secs(30));
        assert_eq!(policy.delay_after(&key(5)), Duration::from_secs(30));
    }

    #[test]
    fn jitter_input_matches_airflow_formatting() {
        assert_eq!(
            jitter_input(&key(2)),
            "stripe_to_warehouse#extract#2024-01-01 00:00:00+00:00#2"
        );
    }

    #[test]
    fn hash_mod_reads_the_digest_as_a_big_integer() {
        // sha1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d; Python:
        // int("a9993e36...", 16) % 1000 == 517 and % 7 == 4.
        assert_eq!(hash_mod("abc", 1000), 517);
        assert_eq!(hash_mod("abc", 7), 4);
    }

    #[test]
    fn exponential_backoff_is_capped() {
        let policy = backoff(30, Some(600));
        assert_eq!(policy.delay_after(&key(10)), Duration::from_secs(600));
    }

    #[test]
    fn zero_delay_still_backs_off_at_least_a_second() {
        let delay = backoff(0, None).delay_after(&key(1));
        assert_eq!(delay, Duration::from_secs(1));
    }

    #[test]
    fn next_try_time_is_the_failure_time_plus_the_delay() {
        let policy = RetryPolicy {
            retry_delay: Duration::from_secs(90),
            ..Default::default()
        };
        let failed = Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0).unwrap();
        assert_eq!(
            policy.next_try_at(failed, &key(1)),
            Utc.with_ymd_and_hms(2024, 1, 1, 12, 1, 30).unwrap()
        );
    }

    proptest! {
        #[test]
        fn exponential_delay_stays_in_airflows_range(base in 1u64..3600, try_number in 1u32..12) {
            let delay = backoff(base, None).delay_after(&key(try_number)).as_secs();
            let low = base * 2u64.pow(try_number - 1);
            prop_assert!(delay >= low && delay < 2 * low, "{delay} not in [{low}, {})", 2 * low);
        }

        #[test]
        fn exponential_delay_is_deterministic(base in 1u64..3600, try_number in 1u32..12) {
            let policy = backoff(base, Some(86_400));
            prop_assert_eq!(policy.delay_after(&key(try_number)), policy.delay_after(&key(try_number)));
        }
    }
}
