//! Pools and connections (the admin role): list, set, remove. A connection's values are
//! sealed on the way in and never leave.

#[allow(unused_imports)]
use super::*;

pub(super) fn pool_json(pool: &PoolRecord) -> Value {
    json!({"name": pool.name, "slots": pool.slots, "description": pool.description})
}

pub(super) async fn list_pools(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let pools = state.store.list_pools().await?;
    Ok(Json(
        json!({"items": pools.iter().map(pool_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PoolBody {
    /// A whole number; JSON allows writing it `4.0`.
    slots: serde_json::Number,
    #[serde(default)]
    description: String,
}

pub(super) async fn put_pool(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<PoolBody>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let slots = body
        .slots
        .as_i64()
        .or_else(|| {
            body.slots
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                .map(|f| f as i64)
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!("slots `{}` is not a whole number", body.slots))
        })?;
    let pool =
        stevedore_ops::pools::set(state.store.as_ref(), &name, slots, &body.description).await?;
    Ok(Json(pool_json(&pool)))
}

pub(super) async fn delete_pool(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    state.store.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Connections: names and variable names only; values go in and never come out.

pub(super) fn connection_json(connection: &ConnectionRecord) -> Value {
    json!({"name": connection.name, "keys": connection.keys, "description": connection.description})
}

pub(super) async fn list_connections(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let connections = state.store.list_connections().await?;
    Ok(Json(
        json!({"items": connections.iter().map(connection_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionBody {
    values: BTreeMap<String, String>,
    #[serde(default)]
    description: String,
}

pub(super) async fn put_connection(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<ConnectionBody>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    // A bad name is the caller's mistake whatever the server lacks.
    stevedore_domain::names::check_name("connection", &name).map_err(ApiError::bad_request)?;
    let key = state.secret_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_secret_key",
            "the server has no secret key (STEVEDORE_SECRET_KEY or its key file) to seal connections with",
        )
    })?;
    let record = stevedore_ops::connections::put(
        state.store.as_ref(),
        key,
        &name,
        &body.values,
        &body.description,
    )
    .await?;
    tracing::info!(connection = %record.name, by = %caller.name, "connection set");
    Ok(Json(connection_json(&record)))
}

pub(super) async fn delete_connection(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    state.store.delete_connection(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
