//! The lease: the runs this scheduler holds (with their fencing tokens) and when it last
//! recorded a heartbeat. A scheduler silent for too long gives its work up before other
//! schedulers may take it over, so two never follow one try.

#[allow(unused_imports)]
use super::*;

/// The runs held and the last heartbeat, each behind its own lock.
pub(crate) struct Lease {
    /// The runs this scheduler holds, with their fencing tokens.
    claims: Mutex<HashMap<String, Fence>>,
    /// When the last heartbeat was recorded.
    last_heartbeat: Mutex<tokio::time::Instant>,
}

impl Lease {
    pub(crate) fn new() -> Lease {
        Lease {
            claims: Mutex::new(HashMap::new()),
            last_heartbeat: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Records that a heartbeat was written now.
    pub(crate) fn beat(&self) {
        *self.last_heartbeat.lock().expect("poisoned") = tokio::time::Instant::now();
    }

    /// How long since the last heartbeat was written.
    fn silent(&self) -> Duration {
        self.last_heartbeat.lock().expect("poisoned").elapsed()
    }

    /// The runs held after a claim; `true` when one was not held before.
    pub(crate) fn hold(&self, held: &HashMap<String, Fence>) -> bool {
        let mut claims = self.claims.lock().expect("poisoned");
        let newly = held.keys().any(|run_id| !claims.contains_key(run_id));
        *claims = held.clone();
        newly
    }

    /// Forgets a run another scheduler took over.
    pub(crate) fn release(&self, run_id: &str) {
        self.claims.lock().expect("poisoned").remove(run_id);
    }

    fn holds_any(&self) -> bool {
        !self.claims.lock().expect("poisoned").is_empty()
    }

    fn clear(&self) {
        self.claims.lock().expect("poisoned").clear();
    }
}

impl Scheduler {
    /// Records that this scheduler is alive, every `heartbeat_every`. When no heartbeat
    /// could be recorded for `lease - heartbeat_every`, other schedulers may soon take its
    /// runs over: it stops following its tries first (without killing them) and claims
    /// afresh once the store answers.
    pub(crate) async fn heartbeat_loop(self: Arc<Self>) {
        let margin = self
            .config
            .lease
            .saturating_sub(self.config.heartbeat_every);
        loop {
            tokio::time::sleep(self.config.heartbeat_every).await;
            let now = self.now();
            let recorded = match self.store.heartbeat(&self.id, now).await {
                Err(StoreError::NotFound(_)) => {
                    warn!(scheduler_id = %self.id, "this scheduler's record was removed; registering again");
                    self.store
                        .register_scheduler(&self.id, &hostname(), std::process::id(), now)
                        .await
                }
                other => other,
            };
            match recorded {
                Ok(()) => self.lease.beat(),
                Err(error) => warn!(error = %error, "cannot record the heartbeat"),
            }
            let silent = self.lease.silent();
            if silent >= margin && self.lease.holds_any() {
                error!(silent_secs = silent.as_secs(), "no heartbeat recorded for too long: other schedulers may take this one's runs over; it stops following its tries");
                self.drop_work();
            }
        }
    }

    /// Stops following every try (their containers run on) and forgets every claim.
    pub(crate) fn drop_work(&self) {
        self.followed.abort_all();
        self.lease.clear();
    }
}
