//! Where and how to reach Nomad: `NOMAD_*` (Nomad's own CLI's variables) and
//! Stevedore's `STEVEDORE_NOMAD_*` settings.

#[allow(unused_imports)]
use super::*;

/// Where and how to reach Nomad. [`NomadConfig::from_env`] reads the `NOMAD_*` variables
/// Nomad's own CLI honours and Stevedore's `STEVEDORE_NOMAD_*` settings. `Debug` never shows the token.
#[derive(Clone)]
pub struct NomadConfig {
    /// `NOMAD_ADDR`, by default `http://127.0.0.1:4646`.
    pub address: String,
    /// `NOMAD_TOKEN`, sent as `X-Nomad-Token`. Never logged.
    pub token: Option<String>,
    /// `NOMAD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `NOMAD_REGION`.
    pub region: Option<String>,
    /// `STEVEDORE_NOMAD_DATACENTERS` (comma-separated), by default `*` (every datacenter).
    pub datacenters: Vec<String>,
    /// `NOMAD_CACERT`: the CA that signed Nomad's certificate (an `https://` address).
    pub ca_cert: Option<std::path::PathBuf>,
    /// `NOMAD_CAPATH`: a folder of CA certificates (PEM files), each trusted.
    pub ca_path: Option<std::path::PathBuf>,
    /// `NOMAD_CLIENT_CERT` and `NOMAD_CLIENT_KEY`: a client certificate for mTLS.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `NOMAD_TLS_SERVER_NAME`: the name Nomad's certificate is checked against (and sent
    /// as SNI) instead of the address's host; Nomad's own certificates name
    /// `server.<region>.nomad`, so an address by IP needs it.
    pub tls_server_name: Option<String>,
    /// `NOMAD_SKIP_VERIFY`: do not check Nomad's certificate at all (for a trial only).
    pub skip_verify: bool,
    /// `STEVEDORE_NOMAD_PLACEMENT_TIMEOUT`: how long a try may wait for Nomad to place it
    /// before it fails with Nomad's reason (default 2 minutes).
    pub placement_timeout: Duration,
    /// `STEVEDORE_NOMAD_MHZ_PER_CPU`: what one CPU of a task's `resources.cpu` is in Nomad's
    /// MHz (default 1000).
    pub mhz_per_cpu: u64,
    /// How long one blocking query waits (`wait`), by default 30 s.
    pub wait: Duration,
}

impl std::fmt::Debug for NomadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("namespace", &self.namespace)
            .field("region", &self.region)
            .field("datacenters", &self.datacenters)
            .field("tls_server_name", &self.tls_server_name)
            .field("skip_verify", &self.skip_verify)
            .field("placement_timeout", &self.placement_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for NomadConfig {
    fn default() -> Self {
        NomadConfig {
            address: "http://127.0.0.1:4646".to_owned(),
            token: None,
            namespace: None,
            region: None,
            datacenters: vec!["*".to_owned()],
            ca_cert: None,
            ca_path: None,
            client_cert: None,
            tls_server_name: None,
            skip_verify: false,
            placement_timeout: Duration::from_secs(120),
            mhz_per_cpu: 1000,
            wait: Duration::from_secs(30),
        }
    }
}

impl NomadConfig {
    /// The configuration from the environment; an error names the variable that is wrong.
    pub fn from_env() -> Result<NomadConfig, String> {
        NomadConfig::from_settings(&|name| std::env::var(name).ok())
    }

    /// The same from `setting(name)`: the value of the variable `name` (`NOMAD_ADDR`, ...)
    /// as the caller resolved it (the command line gives its settings this way).
    pub fn from_settings(setting: &dyn Fn(&str) -> Option<String>) -> Result<NomadConfig, String> {
        let var = |name: &str| setting(name).filter(|v| !v.trim().is_empty());
        let mut config = NomadConfig::default();
        if let Some(address) = var("NOMAD_ADDR") {
            config.address = address.trim_end_matches('/').to_owned();
        }
        config.token = var("NOMAD_TOKEN");
        config.namespace = var("NOMAD_NAMESPACE");
        config.region = var("NOMAD_REGION");
        if let Some(list) = var("STEVEDORE_NOMAD_DATACENTERS") {
            config.datacenters = list
                .split(',')
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty())
                .collect();
        }
        config.ca_cert = var("NOMAD_CACERT").map(Into::into);
        config.ca_path = var("NOMAD_CAPATH").map(Into::into);
        config.tls_server_name = var("NOMAD_TLS_SERVER_NAME").map(|n| n.trim().to_owned());
        if let Some(text) = var("NOMAD_SKIP_VERIFY") {
            // As Nomad's `api` package reads it: Go's `strconv.ParseBool`.
            config.skip_verify = match text.trim() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                other => return Err(format!("NOMAD_SKIP_VERIFY: `{other}` is not true or false")),
            };
        }
        config.client_cert = match (var("NOMAD_CLIENT_CERT"), var("NOMAD_CLIENT_KEY")) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => {
                return Err(
                    "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY must be set together".to_owned(),
                )
            }
        };
        if let Some(text) = var("STEVEDORE_NOMAD_PLACEMENT_TIMEOUT") {
            config.placement_timeout = stevedore_domain::duration::parse_duration(&text)
                .map_err(|e| format!("STEVEDORE_NOMAD_PLACEMENT_TIMEOUT: {e}"))?;
        }
        if let Some(text) = var("STEVEDORE_NOMAD_MHZ_PER_CPU") {
            config.mhz_per_cpu = text.parse().ok().filter(|mhz| *mhz > 0).ok_or_else(|| {
                format!("STEVEDORE_NOMAD_MHZ_PER_CPU: `{text}` is not a positive number")
            })?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<NomadConfig, String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        NomadConfig::from_settings(&|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_tls_settings_are_read_as_nomads_cli_reads_them() {
        let config = from(&[
            ("NOMAD_ADDR", "https://10.0.0.5:4646"),
            ("NOMAD_CAPATH", "/etc/nomad.d/cas"),
            ("NOMAD_TLS_SERVER_NAME", "server.global.nomad"),
            ("NOMAD_SKIP_VERIFY", "T"),
        ])
        .unwrap();
        assert_eq!(config.ca_path, Some("/etc/nomad.d/cas".into()));
        assert_eq!(
            config.tls_server_name.as_deref(),
            Some("server.global.nomad")
        );
        assert!(config.skip_verify);
        assert!(!from(&[("NOMAD_SKIP_VERIFY", "0")]).unwrap().skip_verify);
        assert!(!from(&[]).unwrap().skip_verify);
        let error = from(&[("NOMAD_SKIP_VERIFY", "maybe")]).unwrap_err();
        assert!(error.contains("NOMAD_SKIP_VERIFY: `maybe`"), "{error}");
    }
}
