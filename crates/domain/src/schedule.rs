//! Schedules and data intervals, as Airflow's `CronDataIntervalTimetable` defines them.
//!
//! A cron schedule's fire times `t0 < t1 < t2 ...`, evaluated in the job's timezone, cut
//! time into data intervals `[t_i, t_i+1)`. A run covers one interval; its logical date is
//! the interval's start and it is created once the interval has ended.
//!
//! Fire times follow Airflow 2.10 (`airflow/timetables/_cron.py`, `CronMixin`) to the
//! minute, DST changes included:
//! - A schedule whose hour field names particular hours (`30 2 * * *`) is evaluated on the
//!   local wall clock. A fire time that does not exist (the spring-forward gap) runs shifted
//!   forward by the gap's length (02:30 in a 02:00-03:00 gap runs at 03:30); one that
//!   happens twice (the fall-back overlap) runs once, at the later occurrence.
//! - A schedule whose hour field covers every hour (`0 * * * *`, `*/15 * * * *`) moves by
//!   the cron step in absolute time: hourly runs every hour of UTC, both 01:00s of the
//!   overlap included, and none is lost or doubled in the gap.
//!
//! `crates/domain/tests/data/airflow_dst.json` holds the intervals Airflow itself gives
//! across the transitions of 8 zones, and `tests/airflow_dst.rs` checks ours against them.

use chrono::{DateTime, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
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
    fn cron(&self) -> Option<&Cron> {
        match &self.schedule {
            Schedule::Cron { cron, .. } => Some(cron),
            _ => None,
        }
    }

    /// The first fire time strictly after `time` (Airflow's `_get_next`).
    fn get_next(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cron = self.cron()?;
        let naive = time.with_timezone(&self.timezone).naive_local();
        let scheduled = naive_occurrence(cron, naive, Direction::Next)?;
        if covers_every_hour(cron) {
            Some(time + (scheduled - naive))
        } else {
            Some(local_to_utc(scheduled, self.timezone))
        }
    }

    /// The last fire time strictly before `time` (Airflow's `_get_prev`). Airflow's can
    /// answer `time` itself when `time` is a fire time moved forward by a DST gap (02:30
    /// run at 03:30: the fire time before 03:30 is 02:30, which is 03:30 again); this one
    /// then looks one fire time further back, so a manual run on that day never gets an
    /// empty interval. Every other answer is Airflow's.
    fn get_prev(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cron = self.cron()?;
        let naive = time.with_timezone(&self.timezone).naive_local();
        if covers_every_hour(cron) {
            let scheduled = naive_occurrence(cron, naive, Direction::Previous)?;
            return Some(time - (naive - scheduled));
        }
        let mut scheduled = naive;
        for _ in 0..2 {
            scheduled = naive_occurrence(cron, scheduled, Direction::Previous)?;
            let at = local_to_utc(scheduled, self.timezone);
            if at < time {
                return Some(at);
            }
        }
        None
    }

    /// `time` if it is a fire time, else the next one (Airflow's `_align_to_next`).
    fn align_to_next(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = self.get_next(time)?;
        if self.get_prev(next) == Some(time) {
            Some(time)
        } else {
            Some(next)
        }
    }

    /// `time` if it is a fire time, else the previous one (Airflow's `_align_to_prev`).
    fn align_to_prev(&self, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let previous = self.get_prev(time)?;
        if self.get_next(previous) == Some(time) {
            Some(time)
        } else {
            Some(previous)
        }
    }

    /// The interval that starts at the first fire time at or after `time`.
    pub fn interval_at_or_after(&self, time: DateTime<Utc>) -> Option<DataInterval> {
        self.interval_starting(self.align_to_next(time)?)
    }

    /// The interval that starts at `start`, a fire time.
    fn interval_starting(&self, start: DateTime<Utc>) -> Option<DataInterval> {
        let end = self.get_next(start)?;
        Some(DataInterval { start, end })
    }

    /// The interval after `last`: Airflow starts it at the fire time at or before
    /// `last.end`, which is `last.end` itself unless the schedule changed since. Should that
    /// go back to or before `last.start` (a logical date already used), it starts at the
    /// first fire time at or after `last.end` instead, so no run is made twice.
    fn interval_after(&self, last: DataInterval) -> Option<DataInterval> {
        let aligned = self.align_to_prev(last.end)?;
        let start = if aligned > last.start {
            aligned
        } else {
            self.align_to_next(last.end)?
        };
        self.interval_starting(start)
    }

    /// The next interval the scheduler should create a run for, after the last scheduled
    /// one (`None` when there was none). The interval may not have ended yet; the run is due
    /// when `interval.end <= now`. Returns `None` when the schedule has no more runs.
    /// Airflow's `DataIntervalTimetable.next_dagrun_info`.
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
                let earliest = match self.start_date {
                    Some(start) => Some(self.align_to_next(start)?),
                    None => None,
                };
                let following = match (last, earliest) {
                    (Some(last), Some(earliest)) => {
                        let after = self.interval_after(last)?;
                        if after.start < earliest {
                            self.interval_starting(earliest)?
                        } else {
                            after
                        }
                    }
                    (Some(last), None) => self.interval_after(last)?,
                    (None, Some(earliest)) => self.interval_starting(earliest)?,
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
        let at = self.get_next(now)?;
        match self.end_date {
            Some(end) if self.get_prev(at)? > end => None,
            _ => Some(at),
        }
    }

    /// The most recent interval that has ended at `now` (Airflow's
    /// `infer_manual_data_interval`).
    pub fn latest_complete(&self, now: DateTime<Utc>) -> Option<DataInterval> {
        let end = self.align_to_prev(now)?;
        let start = self.get_prev(end)?;
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
                Some(previous) => self.interval_after(*previous),
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

enum Direction {
    Next,
    Previous,
}

/// The cron's next or previous match strictly after or before a naive wall-clock time,
/// on a clock without DST (croniter on a naive datetime, as Airflow calls it).
fn naive_occurrence(
    cron: &Cron,
    naive: NaiveDateTime,
    direction: Direction,
) -> Option<NaiveDateTime> {
    let clock = Utc.from_utc_datetime(&naive);
    let found = match direction {
        Direction::Next => cron.find_next_occurrence(&clock, false),
        Direction::Previous => cron.find_previous_occurrence(&clock, false),
    };
    found.ok().map(|time| time.naive_utc())
}

/// Whether the hour field matches every hour (`*`, `*/1`, `0-23`): croniter expands such
/// a field to `*`, and Airflow then steps in absolute time (`_covers_every_hour`).
fn covers_every_hour(cron: &Cron) -> bool {
    (0..24).all(|hour| cron.pattern.hour_match(hour).unwrap_or(false))
}

/// Interprets a naive local date-time (a fire time, or a date written in a job file) in
/// `timezone` as Airflow's `make_aware` does with pendulum: a time in a DST gap moves
/// forward by the gap's length (02:30 in a 02:00-03:00 gap is 03:30), an ambiguous one
/// takes the later instant (the second 01:30 of a fall-back night).
pub fn local_to_utc(naive: NaiveDateTime, timezone: Tz) -> DateTime<Utc> {
    match timezone.from_local_datetime(&naive) {
        chrono::LocalResult::Single(time) => time.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(_, late) => late.with_timezone(&Utc),
        chrono::LocalResult::None => {
            // The offset in force before the gap: the last valid wall-clock minute before
            // `naive` has it. `naive - offset_before` is `naive + gap` on the later offset.
            let mut probe = naive;
            for _ in 0..=(48 * 60) {
                probe -= TimeDelta::minutes(1);
                if let Some(before) = timezone.from_local_datetime(&probe).latest() {
                    let offset = before.offset().fix().local_minus_utc();
                    return Utc.from_utc_datetime(&(naive - TimeDelta::seconds(i64::from(offset))));
                }
            }
            Utc.from_utc_datetime(&naive)
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
    fn a_local_time_skipped_by_dst_runs_shifted_by_the_gap_as_in_airflow() {
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
        assert_eq!(starts[0], utc(2024, 3, 31, 1, 30)); // 03:30 CEST
        assert_eq!(starts[1], utc(2024, 4, 1, 0, 30)); // 02:30 CEST
    }

    #[test]
    fn a_local_time_repeated_by_dst_runs_once_at_its_later_occurrence() {
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
            vec![utc(2024, 10, 27, 1, 30), utc(2024, 10, 28, 1, 30)]
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
        /// changes included (gap days run shifted by the gap, repeated hours once).
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
