//! Housekeeping: containers of tries whose end is recorded, and workspaces of runs past
//! their retention, removed at every sweep (`workspace_sweep_every`) and at a clean stop.

#[allow(unused_imports)]
use super::*;

impl Scheduler {
    /// Removes the containers of tries whose end is recorded: a scheduler that stopped
    /// between recording a try's end and removing its container leaves one behind. A
    /// container whose try this store does not know is left alone (another installation may
    /// share the engine), as is one whose try still runs.
    pub(crate) async fn sweep_containers(&self) {
        for (name, backend) in &self.backends {
            if !self.is_ready(name) || !backend.can_adopt() {
                continue;
            }
            let Ok(containers) = backend.list_running().await else {
                continue;
            };
            for container in containers {
                let Ok(tries) = self
                    .store
                    .tries(&container.run_id, &container.task_id)
                    .await
                else {
                    continue;
                };
                let ended = tries
                    .iter()
                    .find(|t| t.try_number == container.try_number)
                    .is_some_and(|t| t.state != TryState::Running);
                if ended {
                    info!(run_id = %container.run_id, task_id = %container.task_id, try_number = container.try_number, "removing the container of a try that ended");
                    if let Err(error) = backend.discard(&container.container_id).await {
                        warn!(backend = name, error = %error, "cannot remove a container");
                    }
                }
            }
        }
    }

    /// Removes the workspaces of runs that finished longer than the retention ago. A
    /// workspace whose run this store does not know is left alone (another installation
    /// may share the engine).
    pub(crate) async fn sweep_workspaces(&self) {
        let retention = chrono::TimeDelta::from_std(self.config.workspace_retention)
            .unwrap_or(chrono::TimeDelta::MAX);
        let now = self.now();
        for (name, backend) in &self.backends {
            if !self.is_ready(name) {
                continue;
            }
            let Ok(run_ids) = backend.workspaces().await else {
                continue;
            };
            for run_id in run_ids {
                let Ok(run) = self.store.get_run(&run_id).await else {
                    continue;
                };
                let expired = run.state.is_finished()
                    && run.ended_at.is_some_and(|ended| ended + retention <= now);
                if expired {
                    if let Err(error) = backend.remove_workspace(&run_id).await {
                        warn!(backend = name, run_id, error = %error, "cannot remove a run's workspace");
                    }
                }
            }
        }
    }
}
