//! Fire times and data intervals across DST transitions, against Airflow itself.
//!
//! `data/airflow_dst.json` holds what Airflow 2.10.5's `CronDataIntervalTimetable` gives 18
//! cron schedules in 8 zones across their 2024 transitions (spring-forward gaps, fall-back
//! overlaps, 30- and 45-minute offsets, a schedule whose every hour is ambiguous, `*/15`),
//! made by `scripts/airflow_dst_table.py` from PyPI. Every way Stevedore reaches a run's
//! interval must give Airflow's: the scheduler with catchup (`next_interval` one after the
//! other), `jobs next` and backfill (`intervals_from`), a manual trigger and a job without
//! catchup (`latest_complete`), and the "next run" of the UI and API (`next_run_at`).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use stevedore_domain::job::parse_date;
use stevedore_domain::schedule::{DataInterval, Schedule, Timetable};

#[derive(Deserialize)]
struct Table {
    airflow: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    zone: String,
    cron: String,
    start: String,
    intervals: Vec<[String; 2]>,
}

impl Case {
    fn name(&self) -> String {
        format!("`{}` in {} from {}", self.cron, self.zone, self.start)
    }

    fn timetable(&self, catchup: bool) -> Timetable {
        let timezone: Tz = self.zone.parse().expect("a zone of the table");
        Timetable {
            schedule: Schedule::parse(Some(&self.cron)).expect("a cron of the table"),
            timezone,
            start_date: Some(parse_date(&self.start, timezone).expect("a start date")),
            end_date: None,
            catchup,
        }
    }

    fn expected(&self) -> Vec<DataInterval> {
        self.intervals
            .iter()
            .map(|[start, end]| DataInterval {
                start: time(start),
                end: time(end),
            })
            .collect()
    }
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

fn table() -> Table {
    let text = include_str!("data/airflow_dst.json");
    let table: Table = serde_json::from_str(text).expect("the Airflow table parses");
    assert!(table.airflow.starts_with("2.10"), "made by Airflow 2.10");
    table
}

fn show(intervals: &[DataInterval]) -> Vec<String> {
    intervals
        .iter()
        .map(|i| format!("{} .. {}", i.start.to_rfc3339(), i.end.to_rfc3339()))
        .collect()
}

#[test]
fn the_table_covers_eight_zones_with_gaps_overlaps_and_odd_offsets() {
    let table = table();
    let zones: std::collections::BTreeSet<&str> =
        table.cases.iter().map(|c| c.zone.as_str()).collect();
    assert!(zones.len() >= 8, "{zones:?}");
    for zone in [
        "America/New_York",
        "Europe/Berlin",
        "Australia/Lord_Howe",
        "Asia/Kathmandu",
    ] {
        assert!(zones.contains(zone), "{zone} is in the table");
    }
}

#[test]
fn catchup_runs_get_airflow_s_intervals_across_dst() {
    let far_future = time("2030-01-01T00:00:00Z");
    let mut wrong = Vec::new();
    for case in table().cases {
        let timetable = case.timetable(true);
        let expected = case.expected();
        let mut last = None;
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            let Some(interval) = timetable.next_interval(last, far_future) else {
                break;
            };
            got.push(interval);
            last = Some(interval);
        }
        if got != expected {
            wrong.push(format!(
                "{}\n  Airflow: {:?}\n  ours:    {:?}",
                case.name(),
                show(&expected),
                show(&got)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn jobs_next_and_backfill_list_airflow_s_intervals_across_dst() {
    let mut wrong = Vec::new();
    for case in table().cases {
        let timetable = case.timetable(true);
        let expected = case.expected();
        let from = timetable.start_date.expect("a start date");
        let got = timetable.intervals_from(from, expected.len());
        if got != expected {
            wrong.push(format!(
                "{}\n  Airflow: {:?}\n  ours:    {:?}",
                case.name(),
                show(&expected),
                show(&got)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A manual trigger (and a job without catchup) takes the latest interval that has ended;
/// the UI's "next run" is the end of the interval in progress.
#[test]
fn manual_runs_skipping_to_the_latest_and_the_next_run_agree_with_airflow() {
    let mut wrong = Vec::new();
    for case in table().cases {
        let timetable = case.timetable(true);
        let without_catchup = case.timetable(false);
        for (index, interval) in case.expected().into_iter().enumerate() {
            let just_after = interval.end + chrono::TimeDelta::seconds(1);
            let manual = timetable.manual_interval(interval.end);
            if manual != interval || timetable.manual_interval(just_after) != interval {
                wrong.push(format!(
                    "{} #{index}: manual at {} gives {:?}, Airflow's interval is {:?}",
                    case.name(),
                    interval.end,
                    show(&[manual]),
                    show(&[interval])
                ));
            }
            let skipped = without_catchup.next_interval(None, just_after);
            if skipped != Some(interval) {
                wrong.push(format!(
                    "{} #{index}: without catchup at {just_after} gives {:?}",
                    case.name(),
                    skipped.map(|i| show(&[i]))
                ));
            }
            let next = timetable.next_run_at(interval.start);
            if next != Some(interval.end) {
                wrong.push(format!(
                    "{} #{index}: next run at {} is {next:?}, not {}",
                    case.name(),
                    interval.start,
                    interval.end
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
