//! The time of day as the scheduler reads it: what it records (a try's start and end) and
//! what it compares against stored times (is a retry due, has a sensor's timeout passed,
//! which schedule intervals are due). One [`Clock`] is handed to the scheduler, so the
//! rules can be tested on a clock that moves only when the test says ([`ManualClock`]):
//! a retry delay of an hour takes no time to test.
//!
//! How often the scheduler *looks* (its tick, a backend's health check, a heartbeat) is not
//! read from this clock: those are the process's own pacing, on tokio's monotonic time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock: what production runs on.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it, and never goes back.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    pub fn starting_at(at: DateTime<Utc>) -> ManualClock {
        ManualClock {
            micros: AtomicI64::new(at.timestamp_micros()),
        }
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.micros.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::microseconds(self.micros.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let start = "2024-03-01T10:00:00.123456Z"
            .parse::<DateTime<Utc>>()
            .unwrap();
        let clock = ManualClock::starting_at(start);
        assert_eq!(clock.now(), start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), start + TimeDelta::milliseconds(1500));
    }
}
