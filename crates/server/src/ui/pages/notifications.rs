//! The alerts page: the notifications the `notify:` rules made, newest first, where each
//! delivery stands, and (for operators) sending one again.

#[allow(unused_imports)]
use super::*;

use stevedore_store::{NotificationFilter, NotificationRecord, NotificationStatus};

/// Notifications shown on the alerts page.
const PAGE_NOTIFICATIONS: u32 = 200;

#[derive(Deserialize)]
pub struct NotificationsQuery {
    job: Option<String>,
    /// `1`: only those whose delivery failed.
    failed: Option<String>,
}

pub async fn notifications(
    viewer: Viewer,
    State(state): State<AppState>,
    Query(query): Query<NotificationsQuery>,
) -> UiResult<Html<String>> {
    let job = query.job.filter(|j| !j.is_empty());
    let failed = query.failed.as_deref() == Some("1");
    let listed = state
        .store
        .list_notifications(&NotificationFilter {
            job_id: job.clone(),
            failed,
            limit: PAGE_NOTIFICATIONS,
            ..Default::default()
        })
        .await?;
    let operator = viewer.may(Role::Operator);
    let body = html! {
        h1 { "Alerts" }
        form.filters method="get" action="/notifications" {
            label { "Job " input type="text" name="job" value=(job.clone().unwrap_or_default()); }
            label.check { input type="checkbox" name="failed" value="1" checked[failed]; " failed deliveries only" }
            button type="submit" { "Filter" }
        }
        @if listed.is_empty() {
            p.meta { "No alerts" @if failed { " whose delivery failed" } ". A job's " code { "notify:" } " rules make them (docs/alerts.md)." }
        } @else {
            (notifications_table(&listed, operator, &viewer, true))
        }
    };
    Ok(page("Alerts", &viewer, body))
}

/// Where a delivery stands, in words.
fn delivery(n: &NotificationRecord) -> String {
    match n.status {
        NotificationStatus::Delivered => format!("delivered {}", when(n.delivered_at)),
        NotificationStatus::Failed => format!("failed after {} attempts", n.attempts),
        NotificationStatus::Pending if n.attempts == 0 => "pending".to_owned(),
        NotificationStatus::Pending => format!(
            "failing ({} attempts), next {}",
            n.attempts,
            when(Some(n.next_attempt_at))
        ),
    }
}

/// The table of notifications on the alerts page and a run's page.
pub(super) fn notifications_table(
    listed: &[NotificationRecord],
    operator: bool,
    viewer: &Viewer,
    with_job: bool,
) -> Markup {
    html! {
        div.table-wrap {
            table.notifications {
                thead { tr {
                    th { "Event" } @if with_job { th { "Job" } th { "Run" } } th { "Task" }
                    th { "Connection" } th { "Channel" } th { "Occurred" } th { "Delivery" } th { "Last error" }
                    @if operator { th { "Actions" } }
                } }
                tbody {
                    @for n in listed {
                        tr class={ "delivery-" (n.status.as_str()) } {
                            td title=(n.id) { (n.event) }
                            @if with_job {
                                td { a href={ "/jobs/" (encode(&n.job_id)) } { (n.job_id) } }
                                td.mono { a href={ "/runs/" (encode(&n.run_id)) } { (n.run_id[..13.min(n.run_id.len())]) } }
                            }
                            td { @if let (Some(task_id), Some(try_number)) = (&n.task_id, n.try_number) {
                                a href=(try_link(&n.run_id, task_id, try_number)) { (task_id) " #" (try_number) }
                            } @else { "–" } }
                            td { (n.connection) }
                            td { (n.channel.clone().unwrap_or_else(|| "–".into())) }
                            td { (when(Some(n.occurred_at))) }
                            td { (delivery(n)) }
                            td { (n.last_error.clone().unwrap_or_default()) }
                            @if operator {
                                td.actions {
                                    @if n.attempts > 0 {
                                        form.inline method="post" action={ "/notifications/" (encode(&n.id)) "/retry" } {
                                            (csrf_field(viewer))
                                            button type="submit" { "Send again" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct RetryForm {
    #[serde(default)]
    csrf: String,
}

pub async fn retry_notification(
    viewer: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<RetryForm>,
) -> UiResult<Redirect> {
    viewer.authorize(&form.csrf, Role::Operator)?;
    let retried =
        stevedore_ops::notifications::retry(state.store.as_ref(), &id, Utc::now()).await?;
    Ok(Redirect::to(&format!("/runs/{}", encode(&retried.run_id))))
}
