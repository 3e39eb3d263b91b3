//! Reads job files from a folder. Each file is parsed on its own: a bad file is reported
//! with its errors and the good ones load anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stevedore_domain::job::{parse_job, Job, JobError};

/// A job file that parsed and validated.
#[derive(Clone, Debug)]
pub struct LoadedJob {
    pub job: Arc<Job>,
    pub path: PathBuf,
    pub source: String,
}

/// What reading the folder found.
#[derive(Debug, Default)]
pub struct JobsDir {
    pub jobs: Vec<LoadedJob>,
    pub errors: Vec<JobError>,
}

impl JobsDir {
    pub fn get(&self, job_id: &str) -> Option<&LoadedJob> {
        self.jobs.iter().find(|loaded| loaded.job.id == job_id)
    }
}

fn is_job_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Loads every `*.yaml`/`*.yml` file directly in `dir`, in name order.
pub fn load_jobs_dir(dir: &Path) -> JobsDir {
    let mut found = JobsDir::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            found.errors.push(JobError {
                file: dir.display().to_string(),
                line: None,
                message: format!("cannot read the jobs folder: {error}"),
            });
            return found;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file() && is_job_file(path))
        .collect();
    paths.sort();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for path in paths {
        match load_job_file(&path) {
            Ok(loaded) => {
                if let Some(first) = seen.get(&loaded.job.id) {
                    found.errors.push(JobError {
                        file: path.display().to_string(),
                        line: Some(1),
                        message: format!(
                            "job id `{}` is already used by {}",
                            loaded.job.id,
                            first.display()
                        ),
                    });
                    continue;
                }
                seen.insert(loaded.job.id.clone(), path.clone());
                found.jobs.push(loaded);
            }
            Err(errors) => found.errors.extend(errors),
        }
    }
    reject_asset_cycles(&mut found);
    found
}

/// Jobs that trigger each other through assets (or `after:`) in a cycle would run forever:
/// each of them is an error at its `schedule` line, and none of them loads.
fn reject_asset_cycles(found: &mut JobsDir) {
    use std::collections::{BTreeMap, BTreeSet};
    use stevedore_domain::assets::{job_asset, job_cycles};
    let produces: BTreeMap<String, BTreeSet<String>> = found
        .jobs
        .iter()
        .map(|loaded| {
            let job = &loaded.job;
            let mut made: BTreeSet<String> = job
                .tasks
                .iter()
                .flat_map(|task| task.produces.iter().cloned())
                .collect();
            made.insert(job_asset(&job.id));
            (job.id.clone(), made)
        })
        .collect();
    let triggers: BTreeMap<String, Vec<String>> = found
        .jobs
        .iter()
        .filter_map(|loaded| {
            let trigger = loaded.job.asset_trigger.as_ref()?;
            Some((loaded.job.id.clone(), trigger.assets.clone()))
        })
        .collect();
    let cycles = job_cycles(&produces, &triggers);
    if cycles.is_empty() {
        return;
    }
    let mut rejected: BTreeSet<String> = BTreeSet::new();
    for cycle in &cycles {
        let path = cycle.join(" → ");
        for job_id in &cycle[..cycle.len() - 1] {
            if !rejected.insert(job_id.clone()) {
                continue;
            }
            if let Some(loaded) = found.get(job_id) {
                found.errors.push(JobError {
                    file: loaded.path.display().to_string(),
                    line: loaded.job.asset_trigger.as_ref().map(|t| t.line),
                    message: format!(
                        "job `{job_id}` is in a cycle of jobs triggering each other through assets or after: {path}"
                    ),
                });
            }
        }
    }
    found
        .jobs
        .retain(|loaded| !rejected.contains(&loaded.job.id));
}

/// The largest job (or pools) file read: a job of hundreds of tasks is a few tens of KiB.
pub const MAX_JOB_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a job or pools file of at most [`MAX_JOB_FILE_BYTES`].
pub fn read_job_file(path: &Path) -> Result<String, Vec<JobError>> {
    use std::io::Read;
    let name = path.display().to_string();
    let problem = |message: String| {
        vec![JobError {
            file: name.clone(),
            line: None,
            message,
        }]
    };
    let file = std::fs::File::open(path)
        .map_err(|error| problem(format!("cannot read the file: {error}")))?;
    let mut source = String::new();
    file.take(MAX_JOB_FILE_BYTES + 1)
        .read_to_string(&mut source)
        .map_err(|error| problem(format!("cannot read the file: {error}")))?;
    if source.len() as u64 > MAX_JOB_FILE_BYTES {
        return Err(problem(format!(
            "the file is over {} KiB; a job file may hold at most that",
            MAX_JOB_FILE_BYTES / 1024
        )));
    }
    Ok(source)
}

/// Loads one job file.
pub fn load_job_file(path: &Path) -> Result<LoadedJob, Vec<JobError>> {
    let name = path.display().to_string();
    let source = read_job_file(path)?;
    let job = parse_job(&name, &source)?;
    Ok(LoadedJob {
        job: Arc::new(job),
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn a_huge_job_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.yaml");
        std::fs::write(&path, format!("id: huge\n# {}\n", "x".repeat(2 << 20))).unwrap();
        let errors = load_job_file(&path).err().unwrap();
        assert!(errors[0].message.contains("over 1024 KiB"), "{errors:?}");
        assert!(errors[0].file.ends_with("huge.yaml"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_file_does_not_stop_the_good_ones() {
        let dir = std::env::temp_dir().join(format!("jobs-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            "id: a\ntasks:\n  - id: t\n    image: i:1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("b.yaml"),
            "id: b\ntasks:\n  - id: t\n    image: i:1\n    bogus: 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("c.yml"),
            "id: a\ntasks:\n  - id: t\n    image: i:1\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not a job").unwrap();
        let found = load_jobs_dir(&dir);
        assert_eq!(found.jobs.len(), 1);
        assert_eq!(found.jobs[0].job.id, "a");
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("b.yaml:5:") && errors[0].contains("bogus"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("c.yml:1: job id `a` is already used by"),
            "{errors:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jobs_triggering_each_other_in_a_cycle_are_rejected_and_the_rest_load() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "charges.yaml",
            "id: charges\nschedule: {after: [models]}\ntasks:\n  - id: load\n    image: i:1\n    produces: [warehouse.charges]\n",
        );
        write(
            "models.yaml",
            "id: models\ndescription: runs when the charges land\nschedule: {assets: [warehouse.charges]}\ntasks:\n  - id: run\n    image: i:1\n",
        );
        write(
            "report.yaml",
            "id: report\nschedule: {after: [models]}\ntasks:\n  - id: t\n    image: i:1\n",
        );
        let found = load_jobs_dir(dir.path());
        let ids: Vec<&str> = found.jobs.iter().map(|l| l.job.id.as_str()).collect();
        assert_eq!(ids, ["report"]);
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().any(
                |e| e.contains("charges.yaml:2: job `charges` is in a cycle")
                    && e.contains("charges → models → charges")
            ),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("models.yaml:3: job `models` is in a cycle")),
            "{errors:?}"
        );
    }
}
