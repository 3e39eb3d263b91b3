//! Pools: named slot counts shared across jobs, set by hand (CLI, API) beside the pools
//! file, with one rule for their names and sizes.

use stevedore_domain::names::check_name;
use stevedore_store::{PoolRecord, Store};

use crate::actions::{ActionError, Result};

/// Creates or resizes pool `name` (an id of at most 64 characters) to `slots` (0 or more).
pub async fn set(
    store: &dyn Store,
    name: &str,
    slots: i64,
    description: &str,
) -> Result<PoolRecord> {
    check_name("pool", name).map_err(ActionError::BadInput)?;
    if slots < 0 {
        return Err(ActionError::BadInput("slots must be 0 or more".to_owned()));
    }
    let pool = PoolRecord {
        name: name.to_owned(),
        slots,
        description: description.to_owned(),
    };
    store.set_pool(&pool).await?;
    Ok(pool)
}
