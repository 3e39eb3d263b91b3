//! Assets: named things tasks produce (a table, a file set), and jobs that run when they
//! are updated (Airflow's data-aware scheduling, Dagster's asset sensors).
//!
//! A task with `produces: [NAME...]` makes one update event per asset each time one of its
//! tries succeeds. A job with `schedule: {assets: [NAME...]}` gets a run once each of them
//! (`mode: all`, the default) or any of them (`mode: any`) has been updated since its last
//! asset-triggered run. `schedule: {after: [JOB...]}` is the same over the assets
//! `job:JOB`, which each successful run of JOB updates.

use std::collections::{BTreeMap, BTreeSet};

/// The most characters an asset name may have.
pub const MAX_ASSET_NAME: usize = 200;

/// The prefix of the asset a job's successful run updates (`schedule: {after: [JOB]}`).
pub const JOB_ASSET_PREFIX: &str = "job:";

/// Whether `name` may name an asset: 1 to 200 of `A-Z a-z 0-9 _ . : / -`, not beginning with
/// the reserved `job:`.
pub fn check_asset_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.:/-".contains(c);
    if name.is_empty() || name.len() > MAX_ASSET_NAME || !name.chars().all(allowed) {
        return Err(format!(
            "asset name `{name}` may only hold A-Z, a-z, 0-9 and _ . : / - (1 to {MAX_ASSET_NAME})"
        ));
    }
    if name.starts_with(JOB_ASSET_PREFIX) {
        return Err(format!(
            "asset name `{name}`: `job:` names a job's runs; write `schedule: {{after: [JOB]}}`"
        ));
    }
    Ok(())
}

/// The asset a job's successful run updates.
pub fn job_asset(job_id: &str) -> String {
    format!("{JOB_ASSET_PREFIX}{job_id}")
}

/// Whether a job waits for all of its assets or any one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssetMode {
    All,
    Any,
}

/// A job's `schedule: {assets: ...}` or `schedule: {after: ...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetTrigger {
    /// The assets it waits for (`job:X` for `after: [X]`), in the file's order.
    pub assets: Vec<String>,
    pub mode: AssetMode,
    /// The line of `schedule` in the job file, for errors found across files (cycles).
    pub line: u64,
}

impl AssetTrigger {
    /// Whether the updates each asset has had since the job's last asset-triggered run are
    /// enough for a new one.
    pub fn is_due(&self, updated: impl Fn(&str) -> bool) -> bool {
        match self.mode {
            AssetMode::All => self.assets.iter().all(|asset| updated(asset)),
            AssetMode::Any => self.assets.iter().any(|asset| updated(asset)),
        }
    }
}

/// A cycle among jobs through assets (a job triggered by what a job downstream of it
/// produces): the jobs of each cycle, in the order work flows, or none.
///
/// `produces` gives each job's produced assets (its tasks' `produces`, and `job:ID` for
/// itself); `triggers` each asset-triggered job's assets.
pub fn job_cycles(
    produces: &BTreeMap<String, BTreeSet<String>>,
    triggers: &BTreeMap<String, Vec<String>>,
) -> Vec<Vec<String>> {
    // An edge from each producer job to each job its assets trigger.
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (consumer, assets) in triggers {
        for asset in assets {
            for (producer, made) in produces {
                if made.contains(asset) {
                    edges
                        .entry(producer.as_str())
                        .or_default()
                        .insert(consumer.as_str());
                }
            }
        }
    }
    let mut cycles: Vec<Vec<String>> = Vec::new();
    let mut on_cycle: BTreeSet<String> = BTreeSet::new();
    for start in edges.keys() {
        if on_cycle.contains(*start) {
            continue;
        }
        // Depth-first from `start`, looking for a way back to it.
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(start, vec![start])];
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(at).into_iter().flatten() {
                if next == start {
                    let mut cycle: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                    cycle.push(start.to_string());
                    on_cycle.extend(path.iter().map(|s| s.to_string()));
                    cycles.push(cycle);
                    stack.clear();
                    break;
                }
                if seen.insert(next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_job_is_reserved() {
        assert!(check_asset_name("warehouse.charges").is_ok());
        assert!(check_asset_name("s3://bucket/clicks/").is_ok());
        assert!(check_asset_name("has space").is_err());
        assert!(check_asset_name("").is_err());
        assert!(check_asset_name("job:x").unwrap_err().contains("after"));
        assert_eq!(job_asset("load"), "job:load");
    }

    #[test]
    fn all_waits_for_every_asset_and_any_for_one() {
        let trigger = |mode| AssetTrigger {
            assets: vec!["a".into(), "b".into()],
            mode,
            line: 1,
        };
        let only_a = |asset: &str| asset == "a";
        assert!(!trigger(AssetMode::All).is_due(only_a));
        assert!(trigger(AssetMode::Any).is_due(only_a));
        assert!(trigger(AssetMode::All).is_due(|_| true));
    }

    #[test]
    fn cycles_through_assets_are_found() {
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let produces: BTreeMap<String, BTreeSet<String>> = [
            ("a".to_string(), set(&["t1", "job:a"])),
            ("b".to_string(), set(&["t2", "job:b"])),
            ("c".to_string(), set(&["job:c"])),
        ]
        .into();
        let triggers: BTreeMap<String, Vec<String>> = [
            ("b".to_string(), vec!["t1".to_string()]),
            ("a".to_string(), vec!["t2".to_string()]),
            ("c".to_string(), vec!["job:b".to_string()]),
        ]
        .into();
        let cycles = job_cycles(&produces, &triggers);
        assert_eq!(cycles, vec![vec!["a", "b", "a"]]);
        let acyclic: BTreeMap<String, Vec<String>> =
            [("c".to_string(), vec!["job:b".to_string()])].into();
        assert!(job_cycles(&produces, &acyclic).is_empty());
    }
}
