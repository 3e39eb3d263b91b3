//! The configuration file (`--config FILE` or `STEVEDORE_CONFIG`): one YAML mapping whose
//! keys are the `STEVEDORE_*` settings in lower case without the prefix (`db`, `lease`,
//! `heartbeat_every`, ...), plus `docker_host`, `docker_tls_verify`, `docker_cert_path` and
//! the `nomad_*` keys (`NOMAD_*`). A setting given on the command line wins, then one in
//! the environment, then the file's, then the default ([`crate::settings`] resolves them);
//! the file is read, never exported to the environment. See docs/configuration.md.

use std::collections::BTreeMap;
use std::path::Path;

/// Every key the file may hold, and the environment variable it sets.
pub const KEYS: &[(&str, &str)] = &[
    ("db", "STEVEDORE_DB"),
    ("jobs", "STEVEDORE_JOBS"),
    ("pools", "STEVEDORE_POOLS"),
    ("bind", "STEVEDORE_BIND"),
    ("port", "STEVEDORE_PORT"),
    ("log", "STEVEDORE_LOG"),
    ("secret_key", "STEVEDORE_SECRET_KEY"),
    ("secret_key_file", "STEVEDORE_SECRET_KEY_FILE"),
    ("registry", "STEVEDORE_REGISTRY"),
    ("heartbeat_every", "STEVEDORE_HEARTBEAT_EVERY"),
    ("lease", "STEVEDORE_LEASE"),
    ("shutdown_grace", "STEVEDORE_SHUTDOWN_GRACE"),
    ("artifact_store", "STEVEDORE_ARTIFACT_STORE"),
    (
        "artifact_store_endpoint",
        "STEVEDORE_ARTIFACT_STORE_ENDPOINT",
    ),
    ("artifact_store_region", "STEVEDORE_ARTIFACT_STORE_REGION"),
    (
        "artifact_store_path_style",
        "STEVEDORE_ARTIFACT_STORE_PATH_STYLE",
    ),
    (
        "artifact_store_access_key_id",
        "STEVEDORE_ARTIFACT_STORE_ACCESS_KEY_ID",
    ),
    (
        "artifact_store_secret_access_key",
        "STEVEDORE_ARTIFACT_STORE_SECRET_ACCESS_KEY",
    ),
    ("artifact_retention", "STEVEDORE_ARTIFACT_RETENTION"),
    ("log_archive_after", "STEVEDORE_LOG_ARCHIVE_AFTER"),
    ("retention", "STEVEDORE_RETENTION"),
    ("public_url", "STEVEDORE_PUBLIC_URL"),
    ("sweep_every", "STEVEDORE_SWEEP_EVERY"),
    (
        "backend_unavailable_timeout",
        "STEVEDORE_BACKEND_UNAVAILABLE_TIMEOUT",
    ),
    (
        "notification_give_up_after",
        "STEVEDORE_NOTIFICATION_GIVE_UP_AFTER",
    ),
    // Their names before artifacts travelled (a run's workspace was a volume).
    ("workspace_retention", "STEVEDORE_WORKSPACE_RETENTION"),
    ("workspace_sweep_every", "STEVEDORE_WORKSPACE_SWEEP_EVERY"),
    ("docker_host", "DOCKER_HOST"),
    ("docker_tls_verify", "DOCKER_TLS_VERIFY"),
    ("docker_cert_path", "DOCKER_CERT_PATH"),
    ("docker_hosts", "STEVEDORE_DOCKER_HOSTS"),
    ("host_lost_after", "STEVEDORE_HOST_LOST_AFTER"),
    ("nomad_addr", "NOMAD_ADDR"),
    ("nomad_token", "NOMAD_TOKEN"),
    ("nomad_namespace", "NOMAD_NAMESPACE"),
    ("nomad_region", "NOMAD_REGION"),
    ("nomad_cacert", "NOMAD_CACERT"),
    ("nomad_capath", "NOMAD_CAPATH"),
    ("nomad_tls_server_name", "NOMAD_TLS_SERVER_NAME"),
    ("nomad_skip_verify", "NOMAD_SKIP_VERIFY"),
    ("nomad_client_cert", "NOMAD_CLIENT_CERT"),
    ("nomad_client_key", "NOMAD_CLIENT_KEY"),
    ("nomad_datacenters", "STEVEDORE_NOMAD_DATACENTERS"),
    (
        "nomad_placement_timeout",
        "STEVEDORE_NOMAD_PLACEMENT_TIMEOUT",
    ),
    ("nomad_mhz_per_cpu", "STEVEDORE_NOMAD_MHZ_PER_CPU"),
    (
        "nomad_workspace_volumes",
        "STEVEDORE_NOMAD_WORKSPACE_VOLUMES",
    ),
    ("process_backend", "STEVEDORE_PROCESS_BACKEND"),
    ("process_dir", "STEVEDORE_PROCESS_DIR"),
    ("max_line_bytes", "STEVEDORE_MAX_LINE_BYTES"),
    ("max_output_bytes", "STEVEDORE_MAX_OUTPUT_BYTES"),
    ("max_outputs", "STEVEDORE_MAX_OUTPUTS"),
    ("pids_limit", "STEVEDORE_PIDS_LIMIT"),
    ("default_memory", "STEVEDORE_DEFAULT_MEMORY"),
];

/// The environment variable of a file key.
pub fn variable_of(key: &str) -> Option<&'static str> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Reads the file: `key → value` for each setting it holds. Errors name the file, and the
/// line or the key that is wrong.
pub fn read(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config file {}: cannot read it: {e}", path.display()))?;
    Ok(parse(&path.display().to_string(), &text)?
        .into_iter()
        .map(|(variable, value)| {
            let key = KEYS
                .iter()
                .find(|(_, v)| *v == variable)
                .map(|(k, _)| *k)
                .unwrap_or(variable);
            (key.to_owned(), value)
        })
        .collect())
}

pub fn parse(name: &str, text: &str) -> Result<Vec<(&'static str, String)>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let values: BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(text)
        .map_err(|e| format!("config file {name}: not a mapping of settings: {e}"))?;
    let mut settings = Vec::new();
    for (key, value) in values {
        let Some((_, variable)) = KEYS.iter().find(|(k, _)| *k == key) else {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "config file {name}: unknown setting `{key}` (known: {})",
                known.join(", ")
            ));
        };
        let text = match value {
            serde_json::Value::String(text) => text,
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(flag) => flag.to_string(),
            // A list of hosts travels as JSON.
            list @ serde_json::Value::Array(_) if key == "docker_hosts" => list.to_string(),
            // Datacenters may be written as a list.
            serde_json::Value::Array(items) if key == "nomad_datacenters" => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| item.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(format!(
                    "config file {name}: `{key}` must be a string or a number, not {other}"
                ))
            }
        };
        settings.push((*variable, text));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_their_environment_variables() {
        let settings = parse(
            "stevedore.yaml",
            "db: postgres://db/stevedore\nport: 9090\nlease: 45s\ndocker_host: tcp://10.0.0.5:2375\n",
        )
        .unwrap();
        assert_eq!(
            settings,
            vec![
                ("STEVEDORE_DB", "postgres://db/stevedore".to_owned()),
                ("DOCKER_HOST", "tcp://10.0.0.5:2375".to_owned()),
                ("STEVEDORE_LEASE", "45s".to_owned()),
                ("STEVEDORE_PORT", "9090".to_owned()),
            ]
        );
    }

    #[test]
    fn an_unknown_key_is_named() {
        let error = parse("stevedore.yaml", "db: x\nleese: 30s\n").unwrap_err();
        assert!(error.contains("unknown setting `leese`"), "{error}");
        assert!(error.contains("stevedore.yaml"), "{error}");
        let hosts = parse(
            "s.yaml",
            "docker_hosts:\n  - name: a\n    endpoint: unix:///var/run/docker.sock\n    capacity: 4\n",
        )
        .unwrap();
        assert_eq!(
            hosts,
            vec![(
                "STEVEDORE_DOCKER_HOSTS",
                r#"[{"capacity":4,"endpoint":"unix:///var/run/docker.sock","name":"a"}]"#
                    .to_owned()
            )]
        );
        let error = parse("s.yaml", "lease: [1, 2]\n").unwrap_err();
        assert!(
            error.contains("`lease` must be a string or a number"),
            "{error}"
        );
    }

    #[test]
    fn the_deployed_example_config_file_is_valid() {
        let text = include_str!("../../../deploy/systemd/stevedore.yaml");
        let settings = parse("deploy/systemd/stevedore.yaml", text).unwrap();
        assert!(settings.contains(&("STEVEDORE_LEASE", "30s".to_owned())));
        let nomad = parse(
            "nomad.yaml",
            "nomad_addr: http://n:4646\nnomad_datacenters: [a, b]\n",
        )
        .unwrap();
        assert!(nomad.contains(&("STEVEDORE_NOMAD_DATACENTERS", "a,b".to_owned())));
    }

    /// docs/configuration.md is the one reference: every key and its variable are in it.
    #[test]
    fn every_setting_is_in_the_configuration_reference() {
        let reference = include_str!("../../../docs/configuration.md");
        for (key, variable) in KEYS {
            assert!(
                reference.contains(&format!("`{key}`"))
                    && reference.contains(&format!("`{variable}`")),
                "docs/configuration.md does not list `{key}` / `{variable}`"
            );
        }
    }
}
