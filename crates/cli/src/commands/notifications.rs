//! `notifications`: the alerts the schedulers made, where their delivery stands, and
//! sending one again.

#[allow(unused_imports)]
use super::*;

use crate::NotificationsCommand;
use stevedore_ops::views::{NotificationDetailView, NotificationView};
use stevedore_store::{NotificationFilter, NotificationRecord};

pub async fn notifications(
    global: &Global,
    command: NotificationsCommand,
) -> anyhow::Result<ExitCode> {
    let store = open_store(&global.db).await?;
    match command {
        NotificationsCommand::List {
            job,
            run,
            failed,
            limit,
        } => {
            let run_id = match run {
                Some(run) => Some(store.find_run(&run).await?.run_id),
                None => None,
            };
            let listed = stevedore_ops::notifications::list(
                store.as_ref(),
                &NotificationFilter {
                    job_id: job,
                    run_id,
                    failed,
                    before_seq: None,
                    limit,
                },
            )
            .await?;
            if global.output == Format::Json {
                let views: Vec<_> = listed.iter().map(NotificationView::from).collect();
                print_json(&json!(views));
            } else {
                notifications_table(&listed).print();
            }
        }
        NotificationsCommand::Show { id } => {
            let detail = stevedore_ops::notifications::show(store.as_ref(), &id).await?;
            if global.output == Format::Json {
                print_json(&serde_json::to_value(NotificationDetailView::from(
                    &detail,
                ))?);
            } else {
                let n = &detail.notification;
                println!("id:           {}", n.id);
                println!("event:        {}", n.event);
                println!("job:          {}", n.job_id);
                println!("run:          {}", n.run_id);
                if let Some(task_id) = &n.task_id {
                    println!(
                        "task:         {task_id} (try {})",
                        n.try_number.unwrap_or_default()
                    );
                }
                println!("connection:   {}", n.connection);
                println!("channel:      {}", n.channel.as_deref().unwrap_or("-"));
                println!("state:        {}", n.state);
                println!("reason:       {}", n.reason.as_deref().unwrap_or("-"));
                println!("occurred at:  {}", time(Some(n.occurred_at)));
                println!("status:       {}", status_text(n));
                println!();
                let mut table =
                    Table::new(&["ATTEMPT", "AT", "CHANNEL", "OK", "CODE", "TOOK", "ERROR"]);
                for attempt in &detail.attempts {
                    table.row(vec![
                        attempt.attempt.to_string(),
                        time(Some(attempt.at)),
                        attempt.channel.clone().unwrap_or_else(|| "-".into()),
                        if attempt.ok { "yes" } else { "no" }.to_owned(),
                        attempt
                            .status_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into()),
                        format!("{}ms", attempt.duration_ms),
                        attempt.error.clone().unwrap_or_default(),
                    ]);
                }
                table.print();
            }
        }
        NotificationsCommand::Retry { id } => {
            let retried =
                stevedore_ops::notifications::retry(store.as_ref(), &id, Utc::now()).await?;
            if global.output == Format::Json {
                print_json(&serde_json::to_value(NotificationView::from(&retried))?);
            } else {
                println!(
                    "notification {} ({} of run {}) will be sent again",
                    retried.id, retried.event, retried.run_id
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a notification's delivery stands, in words.
fn status_text(n: &NotificationRecord) -> String {
    match n.status {
        stevedore_store::NotificationStatus::Delivered => format!(
            "delivered {}",
            n.delivered_at.map(|at| time(Some(at))).unwrap_or_default()
        ),
        stevedore_store::NotificationStatus::Failed => {
            format!(
                "failed after {} attempts (notifications retry {})",
                n.attempts, n.id
            )
        }
        stevedore_store::NotificationStatus::Pending if n.attempts == 0 => "pending".to_owned(),
        stevedore_store::NotificationStatus::Pending => format!(
            "failing: {} attempts, next at {}",
            n.attempts,
            time(Some(n.next_attempt_at))
        ),
    }
}

/// The table `notifications list` and `runs show` print.
pub(super) fn notifications_table(listed: &[NotificationRecord]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "EVENT",
        "JOB",
        "RUN",
        "TASK",
        "CONNECTION",
        "CHANNEL",
        "STATUS",
        "TRIES",
        "OCCURRED",
        "LAST ERROR",
    ]);
    for n in listed {
        table.row(vec![
            n.id.clone(),
            n.event.to_string(),
            n.job_id.clone(),
            n.run_id.chars().take(13).collect(),
            n.task_id.clone().unwrap_or_else(|| "-".into()),
            n.connection.clone(),
            n.channel.clone().unwrap_or_else(|| "-".into()),
            n.status.as_str().to_owned(),
            n.attempts.to_string(),
            time(Some(n.occurred_at)),
            n.last_error
                .clone()
                .map(|e| e.chars().take(60).collect())
                .unwrap_or_default(),
        ]);
    }
    table
}
