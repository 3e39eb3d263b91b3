//! A backend that completes every try at once (exit 0, no container, no output), for
//! measuring the scheduler itself: what it costs to decide, launch and record a try when the
//! work takes no time. Never used to run real tasks.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::*;

pub struct InstantBackend {
    name: &'static str,
}

impl InstantBackend {
    /// An instant backend standing in for the backend called `name` (say `docker`).
    pub fn named(name: &'static str) -> InstantBackend {
        InstantBackend { name }
    }
}

#[async_trait]
impl Backend for InstantBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn execute(
        &self,
        spec: LaunchSpec,
        events: mpsc::Sender<TryEvent>,
        _kill: KillReceiver,
    ) -> Result<TryExit, BackendError> {
        let _ = events
            .send(TryEvent::Launched {
                container_id: format!(
                    "instant-{}-{}-{}",
                    spec.run_id, spec.task_id, spec.try_number
                ),
                image_digest: None,
            })
            .await;
        Ok(TryExit {
            exit_code: Some(0),
            failure: None,
        })
    }

    async fn list_running(&self) -> Result<Vec<RunningTry>, BackendError> {
        Ok(Vec::new())
    }

    async fn remove(&self, _container_id: &str) -> Result<(), BackendError> {
        Ok(())
    }

    async fn workspaces(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }

    async fn remove_workspace(&self, _run_id: &str) -> Result<(), BackendError> {
        Ok(())
    }
}
