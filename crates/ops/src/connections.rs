//! Connections: named secret sets, sealed before they reach the store, opened only where a
//! try (or an image's `check`) needs them. One place for the rules of their names and
//! keys, for sealing and opening, and for reading registry credentials out of one, used by
//! the CLI, the REST API and the scheduler alike.

use std::collections::BTreeMap;

use stevedore_domain::names::{check_name, is_env_name};
use stevedore_store::secrets::SecretKey;
use stevedore_store::{ConnectionRecord, Store};

use crate::actions::{ActionError, Result};

/// The keys of a connection that holds registry credentials.
pub const REGISTRY_USERNAME: &str = "REGISTRY_USERNAME";
pub const REGISTRY_PASSWORD: &str = "REGISTRY_PASSWORD";
pub const REGISTRY_SERVER: &str = "REGISTRY_SERVER";

/// Registry credentials read from a connection. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
    /// The registry's address; by default the image reference's own registry.
    pub server: Option<String>,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"***")
            .field("server", &self.server)
            .finish()
    }
}

/// Seals `values` with `key` and stores them as connection `name`. The name is an id of at
/// most 64 characters and every key an environment variable name, or
/// [`ActionError::BadInput`] says which is not.
pub async fn put(
    store: &dyn Store,
    key: &SecretKey,
    name: &str,
    values: &BTreeMap<String, String>,
    description: &str,
) -> Result<ConnectionRecord> {
    check_name("connection", name).map_err(ActionError::BadInput)?;
    if let Some(bad) = values.keys().find(|k| !is_env_name(k)) {
        return Err(ActionError::BadInput(format!(
            "`{bad}` is not an environment variable name (A-Z, 0-9, _)"
        )));
    }
    let plain = serde_json::to_vec(values).map_err(|e| ActionError::BadInput(e.to_string()))?;
    let sealed = key.seal(&plain).map_err(ActionError::Internal)?;
    let record = ConnectionRecord {
        name: name.to_owned(),
        description: description.to_owned(),
        keys: values.keys().cloned().collect(),
        sealed,
    };
    store.put_connection(&record).await?;
    Ok(record)
}

/// The values of connection `name`, opened with `key` (`None`: the process has no key,
/// and the message says where it looked for one).
pub async fn open(
    store: &dyn Store,
    key: Option<&SecretKey>,
    name: &str,
) -> std::result::Result<BTreeMap<String, String>, String> {
    let record = store
        .get_connection(name)
        .await
        .map_err(|e| format!("connection `{name}`: {e}"))?;
    let key = key.ok_or_else(|| {
        format!("connection `{name}`: the scheduler has no secret key (STEVEDORE_SECRET_KEY or its key file)")
    })?;
    let plain = key
        .open(&record.sealed)
        .map_err(|e| format!("connection `{name}`: {e}"))?;
    serde_json::from_slice(&plain).map_err(|e| format!("connection `{name}`: {e}"))
}

/// The values of several connections, merged in order (a later one's key wins).
pub async fn open_all(
    store: &dyn Store,
    key: Option<&SecretKey>,
    names: &[String],
) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    for name in names {
        values.extend(open(store, key, name).await?);
    }
    Ok(values)
}

/// The registry credentials connection `name` holds: `REGISTRY_USERNAME` and
/// `REGISTRY_PASSWORD` (and optionally `REGISTRY_SERVER`).
pub fn registry_credentials(
    name: &str,
    mut values: BTreeMap<String, String>,
) -> std::result::Result<RegistryCredentials, String> {
    match (
        values.remove(REGISTRY_USERNAME),
        values.remove(REGISTRY_PASSWORD),
    ) {
        (Some(username), Some(password)) => Ok(RegistryCredentials {
            username,
            password,
            server: values.remove(REGISTRY_SERVER),
        }),
        _ => Err(format!(
            "connection `{name}` needs the keys {REGISTRY_USERNAME} and {REGISTRY_PASSWORD}"
        )),
    }
}
