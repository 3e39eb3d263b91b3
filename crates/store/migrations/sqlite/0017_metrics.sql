-- Metrics (docs/metrics.md). The `metric` messages of each try, its last value per name;
-- per job, task and name the last value reported and the total of successful tries'
-- values (Prometheus' gauge and counter); per job the histograms of try durations and run
-- lags, one row per bucket (not cumulative: `bucket` is the index of the smallest upper
-- bound the value fits, the last one +Inf) and one row of count and sum.
CREATE TABLE try_metrics (
    try_id  INTEGER NOT NULL,
    run_id  TEXT NOT NULL,
    task_id TEXT NOT NULL,
    name    TEXT NOT NULL,
    value   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (try_id, name)
);
CREATE INDEX try_metrics_run ON try_metrics (run_id);

CREATE TABLE task_metrics (
    job_id     TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    last_value DOUBLE PRECISION NOT NULL,
    total      DOUBLE PRECISION NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (job_id, task_id, name)
);

CREATE TABLE job_histograms (
    job_id TEXT NOT NULL,
    name   TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    count  BIGINT NOT NULL,
    PRIMARY KEY (job_id, name, bucket)
);

CREATE TABLE job_histogram_sums (
    job_id TEXT NOT NULL,
    name   TEXT NOT NULL,
    count  BIGINT NOT NULL,
    sum    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, name)
);

-- When a task instance last became ready (`scheduled`): its next try's start observes the
-- queue wait (ready -> started) in the job's histogram.
ALTER TABLE task_instances ADD COLUMN ready_at TEXT;
