//! `/api/v1/notifications`: the alerts the schedulers made, where each delivery stands, and
//! sending one again.

#[allow(unused_imports)]
use super::*;

use stevedore_store::NotificationFilter;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct NotificationsQuery {
    job_id: Option<String>,
    run_id: Option<String>,
    /// Only those whose delivery failed: given up, or failing and tried again.
    failed: Option<bool>,
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

/// A page of notifications.
#[derive(Serialize, ToSchema)]
pub(crate) struct NotificationsPage {
    items: Vec<views::NotificationView>,
    /// Where the next page starts; none on the last page.
    next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct NotificationPath {
    /// A notification's id (in full).
    #[param(min_length = 1)]
    id: String,
}

/// Notifications, newest first, a page at a time
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/notifications", operation_id = "listNotifications", params(NotificationsQuery), responses(
    (status = 200, description = "a page of notifications", body = NotificationsPage),
    (status = 400, description = "a bad filter, limit or cursor", body = ErrorBody),
))]
pub(super) async fn list_notifications(
    caller: Caller,
    State(state): State<AppState>,
    Params(query): Params<NotificationsQuery>,
) -> ApiResult<Json<NotificationsPage>> {
    caller.require(Role::Viewer)?;
    let limit = page_size(query.limit)?;
    let before_seq = match query.cursor.as_deref() {
        Some(cursor) => Some(cursor.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("cursor `{cursor}` is not one this API gave"))
        })?),
        None => None,
    };
    let mut listed = state
        .store
        .list_notifications(&NotificationFilter {
            job_id: query.job_id,
            run_id: query.run_id,
            failed: query.failed.unwrap_or(false),
            before_seq,
            limit: limit + 1,
        })
        .await?;
    let next_cursor = if listed.len() > limit as usize {
        listed.truncate(limit as usize);
        listed.last().map(|n| n.seq.to_string())
    } else {
        None
    };
    Ok(Json(NotificationsPage {
        items: listed.iter().map(views::NotificationView::from).collect(),
        next_cursor,
    }))
}

/// The notification with this exact id.
async fn find(
    state: &AppState,
    id: &str,
) -> ApiResult<stevedore_ops::notifications::NotificationDetail> {
    let detail = stevedore_ops::notifications::show(state.store.as_ref(), id)
        .await
        .map_err(|error| match error {
            actions::ActionError::Store(stevedore_store::StoreError::Ambiguous(_)) => {
                ApiError::not_found(format!("notification `{id}` not found"))
            }
            other => other.into(),
        })?;
    if detail.notification.id != id {
        return Err(ApiError::not_found(format!(
            "notification `{id}` not found"
        )));
    }
    Ok(detail)
}

/// A notification and every delivery attempt
///
/// Needs a token with the viewer role.
#[utoipa::path(get, path = "/api/v1/notifications/{id}", operation_id = "getNotification", params(NotificationPath), responses(
    (status = 200, description = "the notification", body = views::NotificationDetailView),
    (status = 400, description = "a path parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such notification", body = ErrorBody),
))]
pub(super) async fn get_notification(
    caller: Caller,
    State(state): State<AppState>,
    Path(NotificationPath { id }): Path<NotificationPath>,
) -> ApiResult<Json<views::NotificationDetailView>> {
    caller.require(Role::Viewer)?;
    let detail = find(&state, &id).await?;
    Ok(Json(views::NotificationDetailView::from(&detail)))
}

/// Sends a notification again at once (its receiver sees the same id)
///
/// Needs a token with the operator role.
#[utoipa::path(post, path = "/api/v1/notifications/{id}/retry", operation_id = "retryNotification", params(NotificationPath), responses(
    (status = 200, description = "it will be sent again", body = views::NotificationView),
    (status = 400, description = "a path parameter is malformed", body = ErrorBody),
    (status = 404, description = "no such notification", body = ErrorBody),
))]
pub(super) async fn retry_notification(
    caller: Caller,
    State(state): State<AppState>,
    Path(NotificationPath { id }): Path<NotificationPath>,
) -> ApiResult<Json<views::NotificationView>> {
    caller.require(Role::Operator)?;
    let detail = find(&state, &id).await?;
    let retried = stevedore_ops::notifications::retry(
        state.store.as_ref(),
        &detail.notification.id,
        Utc::now(),
    )
    .await?;
    tracing::info!(id = %retried.id, by = %caller.name, "notification to be sent again");
    Ok(Json(views::NotificationView::from(&retried)))
}
