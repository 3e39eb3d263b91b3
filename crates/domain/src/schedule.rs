//! Schedules and data intervals, as Airflow's `CronDataIntervalTimetable` defines them.
//!
//! A cron schedule's fire times `t0 < t1 < t2 ...`, evaluated in the job's timezone, cut
//! time into data intervals `[t_i, t_i+1)`. A run covers one interval; its logical date is
//! the interval's start and it is created once the interval has ended. Cron is evaluated
//! on the local wall clock: a fire time that does not exist on a DST change day runs at the
//! first valid instant after it, and one that happens twice runs once (croner's behaviour,
//! which matches Vixie cron).

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// What the job's `schedule` field says.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// `null`: runs only when triggered.
    Manual,
    /// `@once`: a single run for the start date.
    Once,
    /// A 5-field cron expression (presets such as `@daily` are translated to one).
    Cron { expression: String, cron: Box<Cron> },
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression() == other.expression()
    }
}

impl Schedule {
    /// Parses a `schedule` value: `null` is [`Schedule::Manual`].
    pub fn parse(text: Option<&str>) -> Result<Schedule, String> {
        let Some(text) = text.map(str::trim) else {
            return Ok(Schedule::Manual);
        };
        let expression = match text {
            "@once" => return Ok(Schedule::Once),
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other if other.starts_with('@') => {
                return Err(format!(
                    "`{other}` is not a schedule preset; use @once, @hourly, @daily, @weekly, \
                     @monthly, @yearly or a 5-field cron expression"
                ))
            }
            other => other,
        };
        let fields = expression.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "`{text}` has {fields} fields; a cron schedule has 5: minute hour day-of-month \
                 month day-of-week"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|error| format!("`{text}` is not a valid cron expression: {error}"))?;
        Ok(Schedule::Cron {
            expression: text.to_owned(),
            cron: Box::new(cron),
        })
    }

    /// The text the schedule was written as, `None` for a manual-only job.
    pub fn expression(&self) -> Option<&str> {
        match self {
            Schedule::Manual => None,
            Schedule::Once => Some("@once"),
            Schedule::Cron { expression, .. } => Some(expression),
        }
    }
}

/// `[start, end)` of the data a run processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A job's schedule bound to its timezone and date range: computes the intervals of runs.
#[derive(Clone, Debug)]
pub struct Timetable {
    pub schedule: Schedule,
    pub timezone: Tz,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub catchup: bool,
}

impl Timetable {
    /// The first fire time strictly after (or, with `inclusive`, at or after) `time`.
    fn next_fire(&self, time: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        let Schedule::Cron { cron, .. } = &self.schedule else {
            return None;
        };
        let local = time.with_timezone(&self.timezone);
        cron.find_next_occurrence(&local, inclusive)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last fire time strictly before (or, with `inclusive`, at or before) `time`.
    fn previous_fire(&self, time: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        let Schedule::Cron { cron, .. } = &self.schedule else {
            return None;
        };
        let local = time.with_timezone(&self.timezone);
        cron.find_previous_occurrence(&local, inclusive)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The interval that starts at the first fire time at or after `time`.
    pub fn interval_at_or_after(&self, time: DateTime<Utc>) -> Option<DataInterval> {
        self.interval_starting(self.next_fire(time, true)?)
    }

    /// The interval that starts at `start`, itself a fire time (or a previous interval's
    /// end). Never searched again from `start`: a fire time moved by a DST gap (02:30 run at
    /// 03:00) would not match the expression a second time.
    fn interval_starting(&self, start: DateTime<Utc>) -> Option<DataInterval> {
        let end = self.next_fire(start, false)?;
        Some(DataInterval { start, end })
    }

    /// The next interval the scheduler should create a run for, after the last scheduled
    /// one (`None` when there was none). The interval may not have ended yet; the run is due
    /// when `interval.end <= now`. Returns `None` when the schedule has no more runs.
    pub fn next_interval(
        &self,
        last: Option<DataInterval>,
        now: DateTime<Utc>,
    ) -> Option<DataInterval> {
        let interval = match &self.schedule {
            Schedule::Manual => return None,
            Schedule::Once => {
                if last.is_some() {
                    return None;
                }
                let start = self.start_date?;
                DataInterval { start, end: start }
            }
            Schedule::Cron { .. } => {
                let following = match (last, self.start_date) {
                    (Some(last), _) => self.interval_starting(last.end)?,
                    (None, Some(start)) => self.interval_at_or_after(start)?,
                    (None, None) => self.latest_complete(now)?,
                };
                if self.catchup {
                    following
                } else {
                    // Without catchup, skip to the latest complete interval; never go back.
                    match self.latest_complete(now) {
                        Some(latest) if latest.start > following.start => latest,
                        _ => following,
                    }
                }
            }
        };
        match self.end_date {
            Some(end_date) if interval.start > end_date => None,
            _ => Some(interval),
        }
    }

    /// When the schedule next makes a run after `now` (the end of the interval in
    /// progress); `None` for manual and `@once` jobs and after the end date.
    pub fn next_run_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let at = self.next_fire(now, false)?;
        match self.end_date {
            Some(end) if self.previous_fire(at, false)? > end => None,
            _ => Some(at),
        }
    }

    /// The most recent interval that has ended at `now`.
    pub fn latest_complete(&self, now: DateTime<Utc>) -> Option<DataInterval> {
        let end = self.previous_fire(now, true)?;
        let start = self.previous_fire(end, false)?;
        Some(DataInterval { start, end })
    }

    /// The interval of a manual trigger at `now`: the latest complete interval, as Airflow
    /// infers it; `[now, now]` for a job without a cron schedule.
    pub fn manual_interval(&self, now: DateTime<Utc>) -> DataInterval {
        self.latest_complete(now).unwrap_or(DataInterval {
            start: now,
            end: now,
        })
    }

    /// Up to `count` consecutive intervals, the first one starting at or after `from`.
    pub fn intervals_from(&self, from: DateTime<Utc>, count: usize) -> Vec<DataInterval> {
        if let Schedule::Once = self.schedule {
            return match self.start_date {
                Some(start) if start >= from && count > 0 => {
                    vec![DataInterval { start, end: start }]
                }
                _ => Vec::new(),
            };
        }
        let mut intervals: Vec<DataInterval> = Vec::with_capacity(count);
        while intervals.len() < count {
            let next = match intervals.last() {
                None => self.interval_at_or_after(from),
                Some(previous) => self.interval_starting(previous.end),
            };
            let Some(interval) = next else { break };
            if self.end_date.is_some_and(|end| interval.start > end) {
                break;
            }
            intervals.push(interval);
        }
        intervals
    }
}

/// Interprets a naive local date-time (as written in a job file) in `timezone`. A time in a
/// DST gap moves forward past the gap; an ambiguous one takes the earlier instant.
pub fn local_to_utc(naive: chrono::NaiveDateTime, timezone: Tz) -> DateTime<Utc> {
    match timezone.from_local_datetime(&naive) {
        chrono::LocalResult::Single(time) => time.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(early, _) => early.with_timezone(&Utc),
        chrono::LocalResult::None => {
            let mut probe = naive;
            loop {
                probe += chrono::TimeDelta::minutes(1);
                if let Some(time) = timezone.from_local_datetime(&probe).earliest() {
                    return time.with_timezone(&Utc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn timetable(expr: &str, tz: Tz, start: DateTime<Utc>, catchup: bool) -> Timetable {
        Timetable {
            schedule: Schedule::parse(Some(expr)).unwrap(),
            timezone: tz,
            start_date: Some(start),
            end_date: None,
            catchup,
        }
    }

    #[test]
    fn rejects_six_fields_and_unknown_presets() {
        assert!(Schedule::parse(Some("0 0 * * * *"))
            .unwrap_err()
            .contains("6 fields"));
        assert!(Schedule::parse(Some("@fortnightly"))
            .unwrap_err()
            .contains("preset"));
        assert!(Schedule::parse(Some("61 * * * *"))
            .unwrap_err()
            .contains("not a valid cron"));
        assert_eq!(Schedule::parse(None).unwrap(), Schedule::Manual);
    }

    #[test]
    fn hourly_intervals_start_at_the_start_date_with_catchup() {
        let table = timetable("@hourly", Tz::UTC, utc(2024, 1, 1, 0, 0), true);
        let first = table.next_interval(None, utc(2024, 1, 1, 5, 30)).unwrap();
        assert_eq!(
            first,
            DataInterval {
                start: utc(2024, 1, 1, 0, 0),
                end: utc(2024, 1, 1, 1, 0)
            }
        );
        let second = table
            .next_interval(Some(first), utc(2024, 1, 1, 5, 30))
            .unwrap();
        assert_eq!(second.start, utc(2024, 1, 1, 1, 0));
    }

    #[test]
    fn without_catchup_the_first_run_is_the_latest_complete_interval() {
        let table = timetable("0 * * * *", Tz::UTC, utc(2024, 1, 1, 0, 0), false);
        let first = table.next_interval(None, utc(2024, 1, 1, 5, 30)).unwrap();
        assert_eq!(
            first,
            DataInterval {
                start: utc(2024, 1, 1, 4, 0),
                end: utc(2024, 1, 1, 5, 0)
            }
        );
        // The following one is not due yet: it ends in the future.
        let next = table
            .next_interval(Some(first), utc(2024, 1, 1, 5, 30))
            .unwrap();
        assert_eq!(next.end, utc(2024, 1, 1, 6, 0));
    }

    #[test]
    fn start_date_off_schedule_aligns_to_the_next_fire_time() {
        let table = timetable("@daily", Tz::UTC, utc(2024, 1, 1, 10, 0), true);
        let first = table.next_interval(None, utc(2024, 1, 10, 0, 0)).unwrap();
        assert_eq!(first.start, utc(2024, 1, 2, 0, 0));
    }

    #[test]
    fn end_date_stops_the_schedule() {
        let mut table = timetable("@daily", Tz::UTC, utc(2024, 1, 1, 0, 0), true);
        table.end_date = Some(utc(2024, 1, 2, 0, 0));
        let first = table.next_interval(None, utc(2024, 2, 1, 0, 0)).unwrap();
        let second = table
            .next_interval(Some(first), utc(2024, 2, 1, 0, 0))
            .unwrap();
        assert_eq!(second.start, utc(2024, 1, 2, 0, 0));
        assert_eq!(
            table.next_interval(Some(second), utc(2024, 2, 1, 0, 0)),
            None
        );
    }

    #[test]
    fn once_runs_for_the_start_date_only() {
        let table = timetable("@once", Tz::UTC, utc(2024, 1, 1, 0, 0), false);
        let only = table.next_interval(None, utc(2024, 3, 1, 0, 0)).unwrap();
        assert_eq!(only.start, utc(2024, 1, 1, 0, 0));
        assert_eq!(table.next_interval(Some(only), utc(2024, 3, 1, 0, 0)), None);
    }

    #[test]
    fn daily_in_berlin_follows_the_local_midnight_across_dst() {
        // Europe/Berlin leaves CET (+1) for CEST (+2) on 2024-03-31.
        let start = local_to_utc(
            NaiveDate::from_ymd_opt(2024, 3, 29)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap(),
            Tz::Europe__Berlin,
        );
        let table = timetable("@daily", Tz::Europe__Berlin, start, true);
        let intervals = table.intervals_from(start, 4);
        let starts: Vec<_> = intervals.iter().map(|i| i.start).collect();
        assert_eq!(
            starts,
            vec![
                utc(2024, 3, 28, 23, 0),
                utc(2024, 3, 29, 23, 0),
                utc(2024, 3, 30, 23, 0),
                utc(2024, 3, 31, 22, 0)
            ]
        );
        // The interval that spans the change is 23 hours long.
        assert_eq!((intervals[2].end - intervals[2].start).num_hours(), 23);
    }

    #[test]
    fn a_local_time_skipped_by_dst_runs_at_the_first_valid_time_after() {
        // 02:30 does not exist in Berlin on 2024-03-31 (clocks jump from 02:00 to 03:00).
        let table = timetable(
            "30 2 * * *",
            Tz::Europe__Berlin,
            utc(2024, 3, 29, 0, 0),
            true,
        );
        let starts: Vec<_> = table
            .intervals_from(utc(2024, 3, 30, 12, 0), 2)
            .iter()
            .map(|i| i.start)
            .collect();
        assert_eq!(starts[0], utc(2024, 3, 31, 1, 0)); // 03:00 CEST
        assert_eq!(starts[1], utc(2024, 4, 1, 0, 30)); // 02:30 CEST
    }

    #[test]
    fn a_local_time_repeated_by_dst_runs_once() {
        // 02:30 happens twice in Berlin on 2024-10-27 (clocks go back from 03:00 to 02:00).
        let table = timetable(
            "30 2 * * *",
            Tz::Europe__Berlin,
            utc(2024, 10, 25, 0, 0),
            true,
        );
        let starts: Vec<_> = table
            .intervals_from(utc(2024, 10, 26, 12, 0), 2)
            .iter()
            .map(|i| i.start)
            .collect();
        assert_eq!(
            starts,
            vec![utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]
        );
    }

    #[test]
    fn manual_trigger_covers_the_latest_complete_interval() {
        let table = timetable("@daily", Tz::UTC, utc(2024, 1, 1, 0, 0), false);
        let interval = table.manual_interval(utc(2024, 1, 5, 13, 0));
        assert_eq!(
            interval,
            DataInterval {
                start: utc(2024, 1, 4, 0, 0),
                end: utc(2024, 1, 5, 0, 0)
            }
        );
        let manual_only = Timetable {
            schedule: Schedule::Manual,
            ..table
        };
        let now = utc(2024, 1, 5, 13, 0);
        assert_eq!(
            manual_only.manual_interval(now),
            DataInterval {
                start: now,
                end: now
            }
        );
    }

    proptest! {
        /// A daily schedule has exactly one interval starting on every local day, DST
        /// changes included (gap days run at the first valid time, repeated hours once).
        #[test]
        fn daily_schedules_start_once_per_local_day(minute in 0u32..60, hour in 0u32..24, berlin in proptest::bool::ANY) {
            let tz = if berlin { Tz::Europe__Berlin } else { Tz::America__New_York };
            let table = timetable(&format!("{minute} {hour} * * *"), tz, utc(2024, 3, 1, 12, 0), true);
            let intervals = table.intervals_from(utc(2024, 3, 1, 12, 0), 270);
            let days: Vec<chrono::NaiveDate> = intervals.iter().map(|i| i.start.with_timezone(&tz).date_naive()).collect();
            for pair in days.windows(2) {
                prop_assert_eq!(pair[1], pair[0].succ_opt().unwrap(), "{:?}", pair);
            }
            for pair in intervals.windows(2) {
                prop_assert_eq!(pair[0].end, pair[1].start);
            }
        }

        #[test]
        fn catchup_intervals_are_contiguous_and_ordered(minute in 0u32..60, hour in 0u32..24, steps in 1usize..40) {
            let table = timetable(&format!("{minute} {hour} * * *"), Tz::America__New_York, utc(2024, 1, 1, 0, 0), true);
            let mut last = None;
            for _ in 0..steps {
                let interval = table.next_interval(last, utc(2030, 1, 1, 0, 0)).unwrap();
                prop_assert!(interval.start < interval.end);
                if let Some(previous) = last {
                    prop_assert_eq!(previous.end, interval.start);
                }
                last = Some(interval);
            }
        }
    }
}
