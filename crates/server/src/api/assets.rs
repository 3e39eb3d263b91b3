//! `/api/v1/assets`: the assets the job files name, who produces them, which jobs their
//! updates trigger, and their updates (docs/assets.md).

#[allow(unused_imports)]
use super::*;

use stevedore_ops::assets::{self, AssetDetail, AssetView};

/// Every asset.
#[derive(Serialize, ToSchema)]
pub(crate) struct Assets {
    items: Vec<AssetView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct AssetPath {
    /// An asset's name (`warehouse.charges`; a `/` in it sent as `%2F`).
    #[param(min_length = 1)]
    name: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AssetQuery {
    /// How many updates, newest first.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
}

/// The assets, by name
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/assets", operation_id = "listAssets", responses(
    (status = 200, description = "every asset the job files name or that was updated, with its producers, consumers and last update", body = Assets),
))]
pub(super) async fn list_assets(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Assets>> {
    caller.require(Role::Viewer)?;
    Ok(Json(Assets {
        items: assets::list(state.store.as_ref(), &state.jobs_dir).await?,
    }))
}

/// An asset and its updates
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/assets/{name}", operation_id = "getAsset", params(AssetPath, AssetQuery), responses(
    (status = 200, description = "the asset and its updates, newest first", body = AssetDetail),
    (status = 400, description = "a bad limit", body = ErrorBody),
    (status = 404, description = "no job file names it and it was never updated", body = ErrorBody),
))]
pub(super) async fn get_asset(
    caller: Caller,
    State(state): State<AppState>,
    Path(AssetPath { name }): Path<AssetPath>,
    Params(query): Params<AssetQuery>,
) -> ApiResult<Json<AssetDetail>> {
    caller.require(Role::Viewer)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=assets::MAX_EVENTS).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is not between 1 and {}",
            assets::MAX_EVENTS
        )));
    }
    Ok(Json(
        assets::show(state.store.as_ref(), &state.jobs_dir, &name, limit).await?,
    ))
}
