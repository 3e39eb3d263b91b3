//! Several Docker engines as one `docker` backend. Each host has a name, an endpoint, a
//! capacity (tries running on it at once) and labels; a try goes to the host with the most
//! free slots among those whose labels match the task's `placement`; the tries of one run
//! may land on different hosts, their files travel through the artifact store. When every
//! matching host is full, the try waits for a slot (and says so in its log). Adoption,
//! capture and clean-up span every host. Configured by `STEVEDORE_DOCKER_HOSTS` (docs/configuration.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use stevedore_domain::state::FailureReason;
use tokio::sync::mpsc;

use crate::docker::DockerBackend;
use crate::*;

/// One host, as configured.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerHostConfig {
    pub name: String,
    /// `unix:///var/run/docker.sock`, `tcp://host:2375`, or `tcp://host:2376` with `tls`.
    pub endpoint: String,
    /// The CA and client certificate to reach a `tcp://` endpoint over TLS with.
    #[serde(default)]
    pub tls: Option<crate::docker::TlsFiles>,
    /// Tries running on it at once, counting every scheduler's.
    #[serde(default = "unlimited")]
    pub capacity: usize,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn unlimited() -> usize {
    usize::MAX
}

/// Reads `STEVEDORE_DOCKER_HOSTS`: a JSON list of hosts. Errors name what is wrong.
pub fn parse_hosts(text: &str) -> Result<Vec<DockerHostConfig>, String> {
    let hosts: Vec<DockerHostConfig> = serde_json::from_str(text).map_err(|e| {
        format!(
            "STEVEDORE_DOCKER_HOSTS: not a list of {{name, endpoint, capacity, labels, tls}}: {e}"
        )
    })?;
    if hosts.is_empty() {
        return Err("STEVEDORE_DOCKER_HOSTS: the list is empty".to_owned());
    }
    for (index, host) in hosts.iter().enumerate() {
        if host.capacity == 0 {
            return Err(format!(
                "STEVEDORE_DOCKER_HOSTS: host `{}` has capacity 0",
                host.name
            ));
        }
        if hosts[..index].iter().any(|other| other.name == host.name) {
            return Err(format!(
                "STEVEDORE_DOCKER_HOSTS: two hosts are named `{}`",
                host.name
            ));
        }
    }
    Ok(hosts)
}

struct Host {
    config: DockerHostConfig,
    engine: DockerBackend,
    /// Tries this process placed here that have not ended.
    placed: AtomicUsize,
}

pub struct DockerHosts {
    hosts: Vec<Host>,
    /// When each host that does not answer stopped answering.
    unreachable_since: Mutex<HashMap<usize, std::time::Instant>>,
    /// How long a host may not answer before the tries on it are given up as lost (and
    /// retried, on another host).
    lost_after: Duration,
    /// Held from counting a host's free slots to taking one, so two tries never take the
    /// same slot.
    placing: tokio::sync::Mutex<()>,
}

/// Why no host was picked.
enum NoHost {
    /// No host carries the task's placement labels.
    NoMatch(String),
    /// Every matching host is full.
    Full,
    /// No matching host answers.
    Unreachable(String),
}

impl DockerHosts {
    pub fn new(
        configs: Vec<DockerHostConfig>,
        lost_after: Duration,
    ) -> Result<DockerHosts, BackendError> {
        let mut hosts = Vec::new();
        for config in configs {
            let engine = DockerBackend::connect_with(&config.endpoint, config.tls.clone())?;
            hosts.push(Host {
                config,
                engine,
                placed: AtomicUsize::new(0),
            });
        }
        Ok(DockerHosts {
            hosts,
            unreachable_since: Mutex::new(HashMap::new()),
            lost_after,
            placing: tokio::sync::Mutex::new(()),
        })
    }

    /// Notes whether host `index` answered; returns how long it has not, if it has not.
    fn answered(&self, index: usize, answered: bool) -> Option<Duration> {
        let mut since = self.unreachable_since.lock().expect("poisoned");
        if answered {
            since.remove(&index);
            None
        } else {
            Some(
                since
                    .entry(index)
                    .or_insert_with(std::time::Instant::now)
                    .elapsed(),
            )
        }
    }

    /// The host with the most free slots among those that match `spec`'s placement.
    async fn pick(&self, spec: &LaunchSpec) -> Result<usize, NoHost> {
        let matching: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| {
                spec.placement
                    .iter()
                    .all(|(key, value)| self.hosts[i].config.labels.get(key) == Some(value))
            })
            .collect();
        if matching.is_empty() {
            let wanted: Vec<String> = spec
                .placement
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            return Err(NoHost::NoMatch(format!(
                "no Docker host has the labels {}",
                wanted.join(", ")
            )));
        }
        let mut best: Option<(usize, usize)> = None;
        let mut unreachable = Vec::new();
        for &index in &matching {
            let host = &self.hosts[index];
            let running = match host.engine.containers(true).await {
                Ok(containers) => {
                    self.answered(index, true);
                    containers.len()
                }
                Err(error) => {
                    self.answered(index, false);
                    unreachable.push(format!("{}: {error}", host.config.name));
                    continue;
                }
            };
            // This process's tries that have not started yet are not in the engine's count.
            let busy = running.max(host.placed.load(Ordering::SeqCst));
            let free = host.config.capacity.saturating_sub(busy);
            if free == 0 {
                continue;
            }
            if best.is_none_or(|(_, most)| free > most) {
                best = Some((index, free));
            }
        }
        match best {
            Some((index, _)) => Ok(index),
            None if unreachable.len() == matching.len() => {
                Err(NoHost::Unreachable(unreachable.join("; ")))
            }
            None => Err(NoHost::Full),
        }
    }
}

#[async_trait]
impl Backend for DockerHosts {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn health(&self) -> Result<(), BackendError> {
        let mut problems = Vec::new();
        for host in &self.hosts {
            match host.engine.health().await {
                Ok(()) => return Ok(()),
                Err(error) => problems.push(format!("{}: {error}", host.config.name)),
            }
        }
        Err(BackendError::Unavailable(format!(
            "no Docker host answers: {}",
            problems.join("; ")
        )))
    }

    async fn execute(
        &self,
        spec: LaunchSpec,
        events: mpsc::Sender<TryEvent>,
        mut kill: KillReceiver,
    ) -> Result<TryExit, BackendError> {
        let mut said_waiting = false;
        let index = loop {
            let turn = self.placing.lock().await;
            match self.pick(&spec).await {
                Ok(index) => {
                    // The slot is taken before the next try counts.
                    self.hosts[index].placed.fetch_add(1, Ordering::SeqCst);
                    drop(turn);
                    break index;
                }
                Err(NoHost::NoMatch(message)) => {
                    return Ok(TryExit {
                        exit_code: None,
                        failure: Some(FailureReason::Backend(message)),
                    })
                }
                Err(NoHost::Unreachable(message)) => {
                    return Err(BackendError::Unavailable(format!(
                        "no Docker host for the task answers: {message}"
                    )))
                }
                Err(NoHost::Full) => {
                    drop(turn);
                    if !said_waiting {
                        said_waiting = true;
                        let _ = events
                            .send(TryEvent::Note(
                                "waiting for a free slot on a Docker host".to_owned(),
                            ))
                            .await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        changed = kill.changed() => {
                            let reason = kill.borrow().clone();
                            if let (Ok(()), Some(reason)) = (changed, reason) {
                                return Ok(TryExit { exit_code: None, failure: Some(reason.as_failure()) });
                            }
                        }
                    }
                }
            }
        };
        let host = &self.hosts[index];
        let _ = events
            .send(TryEvent::Note(format!(
                "placed on Docker host {}",
                host.config.name
            )))
            .await;
        let result = host.engine.execute(spec, events, kill).await;
        host.placed.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn can_adopt(&self) -> bool {
        true
    }

    async fn adopt(
        &self,
        adoption: &Adoption,
        events: mpsc::Sender<TryEvent>,
        kill: KillReceiver,
    ) -> Result<Adopted, BackendError> {
        let mut unreachable = Vec::new();
        let mut given_up = true;
        for (index, host) in self.hosts.iter().enumerate() {
            match host.engine.has_try(adoption).await {
                Ok(true) => {
                    self.answered(index, true);
                    return host.engine.adopt(adoption, events, kill).await;
                }
                Ok(false) => {
                    self.answered(index, true);
                }
                Err(error) => {
                    let silent = self.answered(index, false).unwrap_or_default();
                    given_up &= silent >= self.lost_after;
                    unreachable.push(format!("{}: {error}", host.config.name));
                }
            }
        }
        if unreachable.is_empty() {
            Ok(Adopted::Missing)
        } else if given_up {
            // It is on no host that answers, and the others have been away too long.
            let names: Vec<&str> = unreachable
                .iter()
                .map(|u| u.split(':').next().unwrap_or_default())
                .collect();
            Ok(Adopted::Lost(format!(
                "Docker host {} did not answer for {}s",
                names.join(", "),
                self.lost_after.as_secs()
            )))
        } else {
            // It may be on a host that does not answer: look again later.
            Err(BackendError::Unavailable(unreachable.join("; ")))
        }
    }

    async fn discard(&self, container_id: &str) -> Result<(), BackendError> {
        for host in &self.hosts {
            let _ = host.engine.discard(container_id).await;
        }
        Ok(())
    }

    async fn list_running(&self) -> Result<Vec<RunningTry>, BackendError> {
        let mut all = Vec::new();
        for host in &self.hosts {
            if let Ok(found) = host.engine.list_running().await {
                all.extend(found);
            }
        }
        Ok(all)
    }

    async fn remove(&self, container_id: &str) -> Result<(), BackendError> {
        self.discard(container_id).await
    }

    async fn capture(
        &self,
        container_id: &str,
        run_id: &str,
        store: &ArtifactStore,
        staged: &[WorkspaceFile],
        limits: &CaptureLimits,
    ) -> Result<Vec<WorkspaceFile>, CaptureFailure> {
        let mut unreachable = Vec::new();
        for host in &self.hosts {
            match host.engine.has_container(container_id).await {
                Ok(true) => {
                    return host
                        .engine
                        .capture(container_id, run_id, store, staged, limits)
                        .await
                }
                Ok(false) => {}
                Err(error) => unreachable.push(format!("{}: {error}", host.config.name)),
            }
        }
        if unreachable.is_empty() {
            Err(CaptureFailure::Gone(format!(
                "the try's container {container_id} is on no Docker host"
            )))
        } else {
            // It may be on a host that does not answer.
            Err(CaptureFailure::Unavailable(unreachable.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_with_clear_errors() {
        let hosts = parse_hosts(
            r#"[{"name": "a", "endpoint": "unix:///var/run/docker.sock", "capacity": 4},
                {"name": "b", "endpoint": "tcp://10.0.0.5:2375", "labels": {"zone": "b"}}]"#,
        )
        .unwrap();
        assert_eq!(hosts[0].capacity, 4);
        assert_eq!(hosts[1].capacity, usize::MAX);
        assert_eq!(hosts[1].labels["zone"], "b");
        let error = parse_hosts(r#"[{"name": "a", "endpoint": "x", "capacity": 0}]"#).unwrap_err();
        assert!(error.contains("capacity 0"), "{error}");
        let error =
            parse_hosts(r#"[{"name": "a", "endpoint": "x"}, {"name": "a", "endpoint": "y"}]"#)
                .unwrap_err();
        assert!(error.contains("two hosts are named `a`"), "{error}");
        let error = parse_hosts(r#"[{"name": "a", "endpont": "x"}]"#).unwrap_err();
        assert!(error.contains("endpont"), "{error}");
    }

    #[test]
    fn a_tls_host_names_its_three_files_and_needs_a_tcp_endpoint() {
        let hosts = parse_hosts(
            r#"[{"name": "far", "endpoint": "tcp://10.0.0.9:2376",
                 "tls": {"ca": "/etc/d/ca.pem", "cert": "/etc/d/cert.pem", "key": "/etc/d/key.pem"}}]"#,
        )
        .unwrap();
        assert_eq!(
            hosts[0].tls,
            Some(crate::docker::TlsFiles::in_dir("/etc/d"))
        );
        let error =
            parse_hosts(r#"[{"name": "far", "endpoint": "tcp://h:2376", "tls": {"ca": "/x"}}]"#)
                .unwrap_err();
        assert!(error.contains("missing field `cert`"), "{error}");
        let unix = DockerBackend::connect_with(
            "unix:///var/run/docker.sock",
            Some(crate::docker::TlsFiles::in_dir("/etc/d")),
        );
        assert!(
            matches!(&unix, Err(BackendError::Unavailable(m)) if m.contains("TLS needs a tcp:// address")),
            "{:?}",
            unix.err()
        );
    }

    #[tokio::test]
    async fn a_missing_certificate_file_is_named() {
        let dir = std::env::temp_dir().join("stevedore-no-such-certs");
        let engine = DockerBackend::connect_with(
            "tcp://127.0.0.1:1",
            Some(crate::docker::TlsFiles::in_dir(&dir)),
        )
        .unwrap();
        let error = engine.health().await.unwrap_err().to_string();
        assert!(
            error.contains("the TLS CA certificate") && error.contains("ca.pem"),
            "{error}"
        );
    }
}
