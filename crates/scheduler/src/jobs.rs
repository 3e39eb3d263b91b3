//! The job cache: parsed job versions and their priority weights, kept for the life of the
//! scheduler (a version is a hash of its file, so it never changes), and the job-file errors
//! already reported. Syncing the jobs folder into the store lives here too.

#[allow(unused_imports)]
use super::*;

/// Parsed job versions by `(job_id, version)`, each version's priority weights, and the
/// file errors already reported, each behind its own lock.
#[derive(Default)]
pub(crate) struct JobCache {
    versions: Mutex<HashMap<(String, String), Arc<Job>>>,
    weights: Mutex<HashMap<String, Arc<HashMap<String, i64>>>>,
    /// File errors already reported, so an unchanged bad file is logged once.
    reported_errors: Mutex<Vec<JobError>>,
}

impl JobCache {
    fn get(&self, job_id: &str, version: &str) -> Option<Arc<Job>> {
        self.versions
            .lock()
            .expect("poisoned")
            .get(&(job_id.to_owned(), version.to_owned()))
            .cloned()
    }

    fn insert(&self, job: Arc<Job>) {
        self.versions
            .lock()
            .expect("poisoned")
            .insert((job.id.clone(), job.version.clone()), job);
    }

    /// Logs each error not reported at the last sync.
    fn report(&self, errors: &[JobError]) {
        let mut reported = self.reported_errors.lock().expect("poisoned");
        for problem in errors {
            if !reported.contains(problem) {
                error!(file = %problem.file, line = ?problem.line, "invalid job file: {problem}");
            }
        }
        *reported = errors.to_vec();
    }

    /// The priority weights of a job version's tasks, computed once per version.
    pub(crate) fn weights(&self, job: &Job) -> Arc<HashMap<String, i64>> {
        self.weights
            .lock()
            .expect("poisoned")
            .entry(job.version.clone())
            .or_insert_with(|| Arc::new(priority_weights(job)))
            .clone()
    }
}

impl Scheduler {
    /// Reads the jobs folder (and the pools file) and records each valid job's current
    /// version.
    pub async fn sync_jobs(&self) -> Vec<Arc<Job>> {
        let dir = self.config.jobs_dir.clone();
        let mut found = tokio::task::spawn_blocking(move || load_jobs_dir(&dir))
            .await
            .unwrap_or_default();
        if let Some(path) = self.config.pools_file.as_ref().filter(|p| p.is_file()) {
            let name = path.display().to_string();
            match jobs_dir::read_job_file(path).and_then(|text| limits::parse_pools(&name, &text)) {
                Ok(pools) => {
                    for pool in pools {
                        let record = stevedore_store::PoolRecord {
                            name: pool.name,
                            slots: pool.slots,
                            description: pool.description,
                        };
                        if let Err(error) = self.store.set_pool(&record).await {
                            error!(pool = %record.name, error = %error, "cannot record pool");
                        }
                    }
                }
                Err(errors) => found.errors.extend(errors),
            }
        }
        // Alert rules must name connections that exist and choose a channel: a job whose
        // rules do not is a bad file (it keeps its last good version, if any).
        if found.jobs.iter().any(|loaded| {
            stevedore_domain::notify::rules(&loaded.job)
                .next()
                .is_some()
        }) {
            match self.store.list_connections().await {
                Ok(connections) => {
                    let mut errors = Vec::new();
                    found.jobs.retain(|loaded| {
                        let file = loaded.path.display().to_string();
                        let problems = stevedore_ops::notifications::check_rules(
                            &loaded.job,
                            &file,
                            &connections,
                        );
                        let good = problems.is_empty();
                        errors.extend(problems);
                        good
                    });
                    found.errors.extend(errors);
                }
                Err(error) => {
                    error!(error = %error, "cannot read the connections to check the jobs' notify rules")
                }
            }
        }
        self.jobs.report(&found.errors);
        let mut jobs = Vec::new();
        for loaded in found.jobs {
            let path = loaded.path.display().to_string();
            if let Err(error) = self
                .store
                .upsert_job(&loaded.job.id, &loaded.job.version, &path, &loaded.source)
                .await
            {
                error!(job_id = %loaded.job.id, error = %error, "cannot record job");
                continue;
            }
            self.jobs.insert(loaded.job.clone());
            jobs.push(loaded.job);
        }
        jobs
    }

    /// The job version a run was created with.
    pub(crate) async fn job_version(
        &self,
        job_id: &str,
        version: &str,
    ) -> anyhow::Result<Arc<Job>> {
        if let Some(job) = self.jobs.get(job_id, version) {
            return Ok(job);
        }
        let source = self.store.job_source(job_id, version).await?;
        let job = parse_job(
            &format!("{job_id}@{}", &version[..12.min(version.len())]),
            &source,
        )
        .map_err(|errors| anyhow::anyhow!("stored job version no longer parses: {}", errors[0]))?;
        let job = Arc::new(job);
        self.jobs.insert(job.clone());
        Ok(job)
    }
}
