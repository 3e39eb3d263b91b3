//! `serve`, `standalone` and `scheduler`: the long-running processes.

#[allow(unused_imports)]
use super::*;

/// What `serve` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serve {
    /// Scheduler and server in one process, for a laptop: the `process` backend is on
    /// unless the settings turn it off.
    Standalone,
    /// The scheduler alone: the `process` backend only when the settings turn it on.
    Scheduler,
    /// The server alone.
    Server,
}

/// Runs the scheduler, the server or both on one store until Ctrl-C or SIGTERM.
pub async fn serve(global: &Global, what: Serve) -> anyhow::Result<ExitCode> {
    let with_scheduler = what != Serve::Server;
    // A scheduler on SQLite holds its store's scheduler lock for as long as it runs.
    let (store, lock) = if with_scheduler {
        open_for_scheduler(&global.db).await?
    } else {
        let store = if is_postgres(&global.db) {
            open_postgres_patiently(&global.db).await?
        } else {
            open_store(&global.db).await?
        };
        (store, None)
    };
    let exclusive = lock.is_some();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    let signals = tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
    });

    let listener = match what {
        Serve::Standalone | Serve::Server => {
            let address = std::net::SocketAddr::new(global.bind, global.port);
            Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} (--bind, --port)"))?,
            )
        }
        Serve::Scheduler => None,
    };
    let own_url = match &listener {
        Some(listener) => Some(own_url(listener.local_addr()?)),
        None => None,
    };
    if what == Serve::Standalone && global.nomad.is_some() && global.public_url.is_none() {
        // Nomad clients fetch a try's inputs through links this server signs and serves:
        // on one laptop they reach it at its own address, with a key made now if there is
        // none yet (as `connections set` makes one).
        if let Err(message) = SecretKey::load(&global.secret_key, true) {
            tracing::warn!(reason = %message, "no secret key: Nomad tries get no links to their inputs");
        }
    }
    let artifacts = global.artifacts(own_url.as_deref());
    let server = match listener {
        Some(listener) => {
            let address = listener.local_addr()?;
            let secret_key = SecretKey::load(&global.secret_key, false).ok();
            let mut state =
                stevedore_server::AppState::new(store.clone(), global.jobs.clone(), secret_key);
            match &artifacts {
                Ok(artifacts) => state = state.with_artifacts(artifacts.clone()),
                Err(message) => {
                    tracing::warn!(error = %message, "no artifact store: downloads answer 503")
                }
            }
            tracing::info!(url = %format!("http://{address}/"), api = %format!("http://{address}/api/v1"), "server listening");
            eprintln!("stevedore: web UI at http://{address}/ and API at http://{address}/api/v1 (log in with a token: stevedore tokens create NAME --role ROLE)");
            Some(tokio::spawn(stevedore_server::serve(
                listener,
                state,
                stopped(),
            )))
        }
        None => None,
    };
    if with_scheduler {
        let process = global.process_backend.unwrap_or(what == Serve::Standalone);
        let artifacts = artifacts.map_err(|e| anyhow!(e))?;
        scheduler(
            global,
            store,
            artifacts,
            own_url.clone(),
            exclusive,
            process,
            stopped(),
        )
        .await?;
    } else {
        stopped().await;
    }
    if let Some(server) = server {
        // Open log follows end with their tries; do not wait on them for ever.
        let abort = server.abort_handle();
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Err(error))) => tracing::warn!(error = %error, "server ended with an error"),
            Err(_) => abort.abort(),
            _ => {}
        }
    }
    signals.abort();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn scheduler(
    global: &Global,
    store: Arc<dyn Store>,
    artifacts: stevedore_artifacts::ArtifactStore,
    own_url: Option<String>,
    exclusive: bool,
    with_process_backend: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // One Docker engine (`docker_host`), or several with capacities and labels.
    let backend: Arc<dyn stevedore_backend::Backend> = match &global.docker_hosts {
        Some(hosts) => {
            let names: Vec<String> = hosts
                .iter()
                .map(|h| format!("{} ({})", h.name, h.endpoint))
                .collect();
            tracing::info!(db = %global.db, jobs = %global.jobs.display(), docker_hosts = %names.join(", "), "scheduler starting");
            Arc::new(stevedore_backend::docker_hosts::DockerHosts::new(
                hosts.clone(),
                global.host_lost_after,
            )?)
        }
        None => {
            let backend = global.docker()?;
            tracing::info!(db = %global.db, jobs = %global.jobs.display(), docker = backend.endpoint(), "scheduler starting");
            Arc::new(backend)
        }
    };
    let mut backends: Vec<Arc<dyn stevedore_backend::Backend>> = vec![backend];
    // Local processes run as the scheduler's own user, outside any container: for
    // development (on in `standalone`), only on request in a `scheduler`.
    if with_process_backend {
        let process = ProcessBackend::new(&global.process_dir);
        tracing::info!(dir = %global.process_dir.display(), "process backend enabled");
        backends.push(Arc::new(process));
    }
    // A Nomad cluster, when one is configured (`nomad_addr`).
    if let Some(config) = &global.nomad {
        let nomad = stevedore_backend::NomadBackend::new(config.clone())?;
        tracing::info!(nomad = nomad.address(), "nomad backend configured");
        backends.push(Arc::new(nomad));
    }
    let mut config = SchedulerConfig::new(&global.jobs);
    config.pools_file = Some(global.pools.clone());
    config.exclusive = exclusive;
    config.limits = global.limits;
    config.try_defaults = global.try_defaults.clone();
    tracing::info!(artifact_store = %artifacts, "artifact store");
    if global.nomad.is_some() && !artifacts.signs_urls() {
        tracing::warn!(
            "Nomad tries cannot be given their inputs from this artifact store (a folder without public_url and a secret key): a Nomad try whose upstream tasks left files fails naming them; set public_url (stevedore server serves the links) or use an s3:// store (docs/backends.md)"
        );
    }
    if global
        .variable("STEVEDORE_NOMAD_WORKSPACE_VOLUMES")
        .is_some()
    {
        tracing::warn!("nomad_workspace_volumes is no longer used: tries on Nomad exchange their files through the artifact store (docs/backends.md)");
    }
    config.artifacts = Some(artifacts);
    // Events link to their run's page in the web UI: `public_url`, else (standalone) the
    // server in this process.
    config.notifier.public_url = global.public_url.clone().or(own_url);
    if let Some(after) = global.log_archive_after {
        config.log_archive_after = after;
    }
    config.retention = global.retention;
    // Traces over OTLP, from the standard OpenTelemetry variables (docs/tracing.md).
    config.traces =
        stevedore_scheduler::traces::TracesConfig::from_env(|name| std::env::var(name).ok())
            .map_err(|e| anyhow!(e))?;
    for (value, setting) in [
        (global.artifact_retention, &mut config.artifact_retention),
        (global.sweep_every, &mut config.sweep_every),
        (global.heartbeat_every, &mut config.heartbeat_every),
        (global.lease, &mut config.lease),
        (global.shutdown_grace, &mut config.shutdown_grace),
        (
            global.backend_unavailable_timeout,
            &mut config.backend_unavailable_timeout,
        ),
        (
            global.notification_give_up_after,
            &mut config.notifier.give_up_after,
        ),
    ] {
        if let Some(value) = value {
            *setting = value;
        }
    }
    if config.lease <= config.heartbeat_every {
        return Err(anyhow!(
            "lease ({:?}) must be longer than heartbeat_every ({:?})",
            config.lease,
            config.heartbeat_every
        ));
    }
    config.secret_key = match SecretKey::load(&global.secret_key, false) {
        Ok(key) => Some(key),
        Err(message) => {
            tracing::info!(reason = %message, "no secret key: tasks that use connections will fail");
            None
        }
    };
    let scheduler = Scheduler::new(store, backends, config);
    scheduler.run(shutdown).await?;
    Ok(())
}

/// The address a server in this process is reached at from this machine: its own, with an
/// unspecified bind address (`0.0.0.0`, `::`) read as loopback.
fn own_url(address: std::net::SocketAddr) -> String {
    let ip = match address.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, address.port()))
}

#[cfg(test)]
mod tests {
    use super::own_url;

    #[test]
    fn a_server_s_own_url_reads_an_unspecified_bind_as_loopback() {
        assert_eq!(
            own_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(own_url("[::]:8080".parse().unwrap()), "http://[::1]:8080");
        assert_eq!(
            own_url("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80"
        );
    }
}
