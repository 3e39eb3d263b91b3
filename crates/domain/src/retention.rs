//! How long ended runs are kept (`retention` in the configuration and in a job file): for a
//! duration after they ended (`90d`), as a number of the newest ones per job (`500 runs`),
//! or for ever (`never`, the default). Airflow keeps everything until `airflow db clean`
//! is run by hand; Stevedore's scheduler applies the retention once a day, and
//! `stevedore db clean` does the same on demand.

use std::fmt;
use std::time::Duration;

use crate::duration::parse_duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Retention {
    /// Runs are never removed.
    #[default]
    Forever,
    /// Runs that ended longer ago than this are removed.
    Age(Duration),
    /// Only this many of a job's newest ended runs are kept.
    Runs(u32),
}

impl Retention {
    /// `never`, a duration (`90d`, `12h`) or a count (`500 runs`).
    pub fn parse(text: &str) -> Result<Retention, String> {
        let text = text.trim();
        if matches!(text, "never" | "forever") {
            return Ok(Retention::Forever);
        }
        if let Some(count) = text
            .strip_suffix("runs")
            .or_else(|| text.strip_suffix("run"))
        {
            return match count.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Retention::Runs(n)),
                _ => Err(format!(
                    "`{text}` is not a retention: a count of runs is a whole number of at least 1 (`500 runs`)"
                )),
            };
        }
        match parse_duration(text) {
            Ok(duration) if duration.is_zero() => {
                Err(format!("`{text}` is not a retention: a duration must be above 0"))
            }
            Ok(duration) => Ok(Retention::Age(duration)),
            Err(_) => Err(format!(
                "`{text}` is not a retention; write a duration (`90d`), a count (`500 runs`) or `never`"
            )),
        }
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retention::Forever => f.write_str("never"),
            Retention::Age(duration) => {
                write!(f, "{}", crate::duration::format_duration(*duration))
            }
            Retention::Runs(n) => write!(f, "{n} runs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_counts_and_never_are_read_and_the_rest_refused() {
        assert_eq!(Retention::parse("never"), Ok(Retention::Forever));
        assert_eq!(
            Retention::parse("90d"),
            Ok(Retention::Age(Duration::from_secs(90 * 86_400)))
        );
        assert_eq!(Retention::parse(" 500 runs "), Ok(Retention::Runs(500)));
        assert_eq!(Retention::parse("1 run"), Ok(Retention::Runs(1)));
        for bad in ["0 runs", "-3 runs", "0s", "soon", "many runs"] {
            let error = Retention::parse(bad).unwrap_err();
            assert!(error.contains(bad.trim()), "{error}");
        }
    }
}
