//! Backend health: which backends answered their last health check. Tries of a backend
//! that is not ready wait; one that turns ready calls for a look at left tries.

#[allow(unused_imports)]
use super::*;

/// The ready backends, and whether one has turned ready since the last adoption check.
#[derive(Default)]
pub(crate) struct BackendHealth {
    /// Backends that answered their last health check; tries of the others wait.
    ready: Mutex<HashSet<&'static str>>,
    /// What each backend that is not ready answered last (its own words).
    why: Mutex<HashMap<String, String>>,
    turned_ready: std::sync::atomic::AtomicBool,
}

impl BackendHealth {
    pub(crate) fn is_ready(&self, backend: &str) -> bool {
        self.ready.lock().expect("poisoned").contains(backend)
    }

    /// Why `backend` is not ready, in its own words, once it has said.
    pub(crate) fn why_not_ready(&self, backend: &str) -> String {
        self.why
            .lock()
            .expect("poisoned")
            .get(backend)
            .cloned()
            .unwrap_or_else(|| format!("the {backend} backend has not answered a health check yet"))
    }

    fn mark_ready(&self, backend: &'static str) {
        self.why.lock().expect("poisoned").remove(backend);
        self.ready.lock().expect("poisoned").insert(backend);
        self.turned_ready
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A backend that stopped answering: its tries wait until a health check passes again.
    pub(crate) fn mark_unavailable(&self, backend: &str, why: &str) {
        self.why
            .lock()
            .expect("poisoned")
            .insert(backend.to_owned(), why.to_owned());
        self.ready.lock().expect("poisoned").remove(backend);
    }

    /// Whether a backend turned ready since this was last asked.
    pub(crate) fn take_turned_ready(&self) -> bool {
        self.turned_ready
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// When each backend that is not ready is checked next, and the delay after that.
pub(crate) type HealthChecks = HashMap<&'static str, (tokio::time::Instant, Duration)>;

impl Scheduler {
    pub(crate) fn is_ready(&self, backend: &str) -> bool {
        self.health.is_ready(backend)
    }

    /// Checks each backend that is not ready and whose next check is due, with a delay
    /// doubling to 30 s between failed checks.
    pub(crate) async fn check_backends(&self, checks: &mut HealthChecks) {
        for (name, backend) in &self.backends {
            if self.is_ready(name) {
                continue;
            }
            let (next_check, delay) = checks
                .entry(name)
                .or_insert((tokio::time::Instant::now(), Duration::from_secs(1)));
            if tokio::time::Instant::now() < *next_check {
                continue;
            }
            match backend.health().await {
                Ok(()) => {
                    info!(backend = name, "backend ready");
                    self.health.mark_ready(name);
                    checks.remove(name);
                }
                Err(error) => {
                    self.health.mark_unavailable(name, &error.to_string());
                    error!(backend = name, error = %error, retry_in_secs = delay.as_secs(), "backend unavailable; its tries wait until it is back");
                    *next_check = tokio::time::Instant::now() + *delay;
                    *delay = (*delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
