#!/usr/bin/env python3
"""Produces crates/domain/tests/data/airflow_dst.json: the data intervals Airflow 2.10's own
`CronDataIntervalTimetable` gives cron schedules in 8 timezones across their 2024 DST
transitions (spring-forward gaps, fall-back overlaps, 30- and 45-minute offsets, a schedule
whose every hour is ambiguous, `*/15`), for the table-driven test of issue 21. Run once:

    python3 -m venv /tmp/airflow-venv
    /tmp/airflow-venv/bin/pip install 'apache-airflow==2.10.5'
    AIRFLOW_HOME=/tmp/airflow-home /tmp/airflow-venv/bin/python scripts/airflow_dst_table.py

Each case: the zone, the cron, a start date (local midnight) and the first N data intervals
with catchup, in UTC, as `next_dagrun_info` makes them one after the other.
"""

import json
import os
import sys

import pendulum
from airflow.timetables.base import TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable

# (zone, cron, local start date, intervals): each window covers a transition of 2024.
CASES = [
    ("America/New_York", "30 2 * * *", "2024-03-08", 5),   # gap 02:00-03:00 on 03-10
    ("America/New_York", "30 1 * * *", "2024-11-01", 5),   # overlap 01:00-02:00 on 11-03
    ("America/New_York", "0 * * * *", "2024-11-03", 8),    # every hour across the overlap
    ("America/New_York", "0 * * * *", "2024-03-10", 6),    # every hour across the gap
    ("Europe/Berlin", "0 2 * * *", "2024-10-25", 5),       # overlap 02:00-03:00 on 10-27
    ("Europe/Berlin", "30 2 * * *", "2024-03-29", 5),      # gap 02:00-03:00 on 03-31
    ("Europe/Berlin", "*/15 * * * *", "2024-03-31", 14),   # every 15 minutes across the gap
    ("Europe/Berlin", "*/15 1,2 * * *", "2024-10-27", 14),  # every 15 minutes across the overlap
    ("Europe/London", "30 1 * * *", "2024-03-29", 5),      # gap 01:00-02:00 on 03-31
    ("Europe/London", "30 1 * * *", "2024-10-25", 5),      # overlap 01:00-02:00 on 10-27
    ("Australia/Sydney", "30 2 * * *", "2024-10-04", 5),   # gap 02:00-03:00 on 10-06
    ("Australia/Sydney", "30 2 * * *", "2024-04-05", 5),   # overlap 02:00-03:00 on 04-07
    ("Australia/Lord_Howe", "15 2 * * *", "2024-10-04", 5),  # a 30-minute gap 02:00-02:30 on 10-06
    ("Australia/Lord_Howe", "45 1 * * *", "2024-04-05", 5),  # a 30-minute overlap 01:30-02:00 on 04-07
    ("Asia/Kathmandu", "0 * * * *", "2024-03-10", 5),      # +05:45, no DST
    ("America/Santiago", "0 0 * * *", "2024-09-06", 4),    # gap at midnight on 09-08
    ("America/Santiago", "30 23 * * *", "2024-04-05", 4),  # overlap 23:00-24:00 on 04-06
    ("Pacific/Chatham", "0 3 * * *", "2024-09-27", 4),     # +12:45/+13:45, gap 02:45-03:45 on 09-29
]


def main():
    cases = []
    for zone, cron, start, count in CASES:
        timezone = pendulum.timezone(zone)
        start_date = pendulum.parse(start, tz=timezone)
        timetable = CronDataIntervalTimetable(cron, timezone)
        restriction = TimeRestriction(earliest=start_date, latest=None, catchup=True)
        last = None
        intervals = []
        for _ in range(count):
            info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
            interval = info.data_interval
            intervals.append([interval.start.in_timezone("UTC").isoformat(), interval.end.in_timezone("UTC").isoformat()])
            last = interval
        cases.append({"zone": zone, "cron": cron, "start": start, "intervals": intervals})
    import airflow
    out = {"airflow": airflow.__version__, "made_by": "scripts/airflow_dst_table.py", "cases": cases}
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "crates", "domain", "tests", "data", "airflow_dst.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
