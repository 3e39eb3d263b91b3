//! Pools and connections (the admin role): list, set, remove. A connection's values are
//! sealed on the way in and never leave.

#[allow(unused_imports)]
use super::*;

/// The pools.
#[derive(Serialize, ToSchema)]
pub(crate) struct Pools {
    items: Vec<views::PoolView>,
}

/// Pools
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/pools", operation_id = "listPools", responses(
    (status = 200, description = "pools", body = Pools),
))]
pub(super) async fn list_pools(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Pools>> {
    caller.require(Role::Viewer)?;
    let pools = state.store.list_pools().await?;
    Ok(Json(Pools {
        items: pools.iter().map(views::PoolView::from).collect(),
    }))
}

/// A pool's size.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PoolBody {
    /// A whole number; JSON allows writing it `4.0`.
    #[schema(value_type = i64, minimum = 0)]
    slots: serde_json::Number,
    #[serde(default)]
    description: String,
}

/// Creates or resizes a pool
///
/// Needs a token with the admin role.
#[utoipa::path(put, path = "/api/v1/pools/{name}", operation_id = "putPool", params(PoolPath), request_body = PoolBody, responses(
    (status = 200, description = "the pool", body = views::PoolView),
))]
pub(super) async fn put_pool(
    caller: Caller,
    State(state): State<AppState>,
    Path(PoolPath { name }): Path<PoolPath>,
    Body(body): Body<PoolBody>,
) -> ApiResult<Json<views::PoolView>> {
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
    Ok(Json(views::PoolView::from(&pool)))
}

/// Deletes a pool
///
/// Needs a token with the admin role.
#[utoipa::path(delete, path = "/api/v1/pools/{name}", operation_id = "deletePool", params(PoolPath), responses(
    (status = 204, description = "deleted"),
    (status = 404, description = "no such pool", body = ErrorBody),
    (status = 409, description = "the default pool cannot be deleted", body = ErrorBody),
))]
pub(super) async fn delete_pool(
    caller: Caller,
    State(state): State<AppState>,
    Path(PoolPath { name }): Path<PoolPath>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    state.store.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// Connections: names and variable names only; values go in and never come out.

/// The connections.
#[derive(Serialize, ToSchema)]
pub(crate) struct Connections {
    items: Vec<views::ConnectionView>,
}

/// Connections: names and variable names, never values
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/connections", operation_id = "listConnections", responses(
    (status = 200, description = "connections", body = Connections),
))]
pub(super) async fn list_connections(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Connections>> {
    caller.require(Role::Viewer)?;
    let connections = state.store.list_connections().await?;
    Ok(Json(Connections {
        items: connections
            .iter()
            .map(views::ConnectionView::from)
            .collect(),
    }))
}

/// Variable name to value: names as the environment takes them, values write-only.
fn connection_values() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Z_][A-Z0-9_]*$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new().schema_type(Type::String).into(),
        )))
        .description(Some("variable name to value; write-only"))
        .build()
}

/// A connection's values and description.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionBody {
    #[schema(schema_with = connection_values)]
    values: BTreeMap<String, String>,
    #[serde(default)]
    description: String,
}

/// Creates or replaces a connection; its values are sealed and never returned
///
/// Needs a token with the admin role.
#[utoipa::path(put, path = "/api/v1/connections/{name}", operation_id = "putConnection", params(ConnectionPath), request_body = ConnectionBody, responses(
    (status = 200, description = "the connection, without its values", body = views::ConnectionView),
    (status = 503, description = "the server has no secret key to seal values with", body = ErrorBody),
))]
pub(super) async fn put_connection(
    caller: Caller,
    State(state): State<AppState>,
    Path(ConnectionPath { name }): Path<ConnectionPath>,
    Body(body): Body<ConnectionBody>,
) -> ApiResult<Json<views::ConnectionView>> {
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
    Ok(Json(views::ConnectionView::from(&record)))
}

/// Deletes a connection
///
/// Needs a token with the admin role.
#[utoipa::path(delete, path = "/api/v1/connections/{name}", operation_id = "deleteConnection", params(ConnectionPath), responses(
    (status = 204, description = "deleted"),
    (status = 404, description = "no such connection", body = ErrorBody),
))]
pub(super) async fn delete_connection(
    caller: Caller,
    State(state): State<AppState>,
    Path(ConnectionPath { name }): Path<ConnectionPath>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    state.store.delete_connection(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
