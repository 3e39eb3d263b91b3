//! Which ready task instances start now: pools (named slot counts shared across jobs) and
//! each job's `max_active_tasks`, filled in priority order, as Airflow's scheduler does.

use std::collections::HashMap;

/// The pool every task uses unless it names another, with Airflow's default size.
pub const DEFAULT_POOL: &str = "default";
pub const DEFAULT_POOL_SLOTS: i64 = 128;

/// A task instance that is `scheduled` and may start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub run_id: String,
    pub task_id: String,
    pub job_id: String,
    pub pool: String,
    pub pool_slots: i64,
    /// Priority weight (own priority plus everything downstream); higher starts first.
    pub weight: i64,
    /// Orders equal weights: the older run (earlier logical date) first.
    pub logical_date: chrono::DateTime<chrono::Utc>,
}

/// What is free right now.
#[derive(Clone, Debug, Default)]
pub struct Capacity {
    /// Free slots per pool; a pool that is missing here does not exist.
    pub pools: HashMap<String, i64>,
    /// Task instances each job may still start (`max_active_tasks` minus its active ones).
    pub jobs: HashMap<String, i64>,
}

/// Why a candidate did not start this time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    PoolMissing(String),
    PoolFull(String),
    JobFull(String),
}

/// Picks the candidates to start, highest weight first: one whose pool lacks slots or whose
/// job is at `max_active_tasks` waits, and the next one still gets its chance. `capacity`
/// is reduced by what was picked.
pub fn select(
    mut candidates: Vec<Candidate>,
    capacity: &mut Capacity,
) -> (Vec<Candidate>, Vec<(Candidate, Held)>) {
    candidates.sort_by(|a, b| {
        b.weight
            .cmp(&a.weight)
            .then(a.logical_date.cmp(&b.logical_date))
            .then(a.run_id.cmp(&b.run_id))
            .then(crate::mapping::key_order(&a.task_id, &b.task_id))
    });
    let mut picked = Vec::new();
    let mut held = Vec::new();
    for candidate in candidates {
        let Some(free) = capacity.pools.get(&candidate.pool).copied() else {
            let pool = candidate.pool.clone();
            held.push((candidate, Held::PoolMissing(pool)));
            continue;
        };
        if free < candidate.pool_slots {
            let pool = candidate.pool.clone();
            held.push((candidate, Held::PoolFull(pool)));
            continue;
        }
        let job_free = capacity.jobs.get(&candidate.job_id).copied().unwrap_or(0);
        if job_free < 1 {
            let job = candidate.job_id.clone();
            held.push((candidate, Held::JobFull(job)));
            continue;
        }
        capacity
            .pools
            .insert(candidate.pool.clone(), free - candidate.pool_slots);
        capacity.jobs.insert(candidate.job_id.clone(), job_free - 1);
        picked.push(candidate);
    }
    (picked, held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn candidate(task: &str, pool: &str, slots: i64, weight: i64) -> Candidate {
        Candidate {
            run_id: "r".into(),
            task_id: task.into(),
            job_id: "j".into(),
            pool: pool.into(),
            pool_slots: slots,
            weight,
            logical_date: chrono::Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
        }
    }

    fn capacity(pools: &[(&str, i64)], job: i64) -> Capacity {
        Capacity {
            pools: pools.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            jobs: [("j".to_string(), job)].into(),
        }
    }

    #[test]
    fn a_pool_of_two_runs_two_by_priority() {
        let mut free = capacity(&[("api", 2)], 16);
        let (picked, held) = select(
            vec![
                candidate("low", "api", 1, 1),
                candidate("high", "api", 1, 9),
                candidate("mid", "api", 1, 5),
            ],
            &mut free,
        );
        let ids: Vec<_> = picked.iter().map(|c| c.task_id.as_str()).collect();
        assert_eq!(ids, ["high", "mid"]);
        assert_eq!(
            held,
            vec![(candidate("low", "api", 1, 1), Held::PoolFull("api".into()))]
        );
        assert_eq!(free.pools["api"], 0);
    }

    #[test]
    fn a_big_task_waits_while_smaller_ones_fit() {
        let mut free = capacity(&[("api", 2)], 16);
        let (picked, _) = select(
            vec![
                candidate("big", "api", 3, 9),
                candidate("small", "api", 1, 1),
            ],
            &mut free,
        );
        assert_eq!(
            picked
                .iter()
                .map(|c| c.task_id.as_str())
                .collect::<Vec<_>>(),
            ["small"]
        );
    }

    #[test]
    fn max_active_tasks_and_missing_pools_hold_candidates() {
        let mut free = capacity(&[("default", 128)], 1);
        let (picked, held) = select(
            vec![
                candidate("a", "default", 1, 2),
                candidate("b", "default", 1, 1),
                candidate("c", "nope", 1, 3),
            ],
            &mut free,
        );
        assert_eq!(
            picked
                .iter()
                .map(|c| c.task_id.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(held[0].1, Held::PoolMissing("nope".into()));
        assert_eq!(held[1].1, Held::JobFull("j".into()));
    }
}

/// A pool as a pools file declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub slots: i64,
    pub description: String,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum RawPool {
    Slots(i64),
    Full(RawPoolFull),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoolFull {
    slots: i64,
    #[serde(default)]
    description: String,
}

/// Parses a pools file:
///
/// ```yaml
/// stripe_api: {slots: 4, description: Stripe's rate budget}
/// warehouse: 8
/// ```
pub fn parse_pools(file: &str, text: &str) -> Result<Vec<PoolSpec>, Vec<crate::job::JobError>> {
    use serde_saphyr::Spanned;
    let error = |line: Option<u64>, message: String| crate::job::JobError {
        file: file.to_owned(),
        line,
        message,
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let raw: std::collections::BTreeMap<String, Spanned<RawPool>> = serde_saphyr::from_str(text).map_err(|e| {
        vec![error(
            e.location().map(|l| l.line()),
            "a pools file maps each pool name to its slots, like `stripe_api: 4` or `stripe_api: {slots: 4, description: ...}`".to_owned(),
        )]
    })?;
    let mut pools = Vec::new();
    let mut errors = Vec::new();
    for (name, spanned) in raw {
        let line = Some(spanned.referenced.line());
        let (slots, description) = match spanned.value {
            RawPool::Slots(slots) => (slots, String::new()),
            RawPool::Full(full) => (full.slots, full.description),
        };
        if !crate::names::is_identifier(&name) {
            errors.push(error(
                line,
                format!("pool name `{name}` may only hold lowercase letters, digits and _"),
            ));
        } else if slots < 0 {
            errors.push(error(
                line,
                format!("pool `{name}` has {slots} slots; a pool has 0 or more"),
            ));
        } else {
            pools.push(PoolSpec {
                name,
                slots,
                description,
            });
        }
    }
    if errors.is_empty() {
        Ok(pools)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod pool_file_tests {
    use super::*;

    #[test]
    fn parses_short_and_long_forms() {
        let pools = parse_pools(
            "pools.yaml",
            "stripe_api: {slots: 4, description: rate budget}\nwarehouse: 8\n",
        )
        .unwrap();
        assert_eq!(
            pools,
            vec![
                PoolSpec {
                    name: "stripe_api".into(),
                    slots: 4,
                    description: "rate budget".into()
                },
                PoolSpec {
                    name: "warehouse".into(),
                    slots: 8,
                    description: String::new()
                },
            ]
        );
        assert!(parse_pools("pools.yaml", "").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_pools_with_the_line() {
        let errors = parse_pools("pools.yaml", "ok: 1\nBad-Name: 2\nneg: -1\n").unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.starts_with("pools.yaml:2: pool name `Bad-Name`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("pools.yaml:3: pool `neg` has -1 slots")),
            "{text:?}"
        );
        assert!(parse_pools("pools.yaml", "x: {slots: 1, size: 2}\n").is_err());
    }
}
