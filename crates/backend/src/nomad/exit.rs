//! How a terminal allocation's task ended, from its events; errors with their causes.

#[allow(unused_imports)]
use super::*;

/// How the task of a terminal allocation ended, from its events.
pub(crate) fn exit_of(allocation: &Allocation, killed: Option<StopReason>) -> TryExit {
    let events = allocation.events();
    // Nomad ended it, not the task: a lost node, or an eviction (preemption, a drain). Its
    // task's exit (137 from the kill, if any) is Nomad's doing, not the task's result.
    if killed.is_none() && allocation.client_status == "lost" {
        return TryExit {
            exit_code: None,
            failure: Some(FailureReason::Backend(format!(
                "Nomad lost the allocation {} on node {}: {}",
                allocation.id,
                allocation.node_name,
                [
                    &allocation.desired_description,
                    &allocation.client_description
                ]
                .into_iter()
                .find(|d| !d.is_empty())
                .cloned()
                .unwrap_or_default()
            ))),
        };
    }
    if killed.is_none() && allocation.desired_status == "evict" {
        return TryExit {
            exit_code: None,
            failure: Some(FailureReason::Backend(format!(
                "Nomad evicted the allocation {} from node {}: {}",
                allocation.id,
                allocation.node_name,
                if allocation.desired_description.is_empty() {
                    "preempted or drained"
                } else {
                    &allocation.desired_description
                }
            ))),
        };
    }
    let terminated = events.iter().rev().find(|e| e.kind == "Terminated");
    let exit_code = terminated
        .and_then(|e| e.detail("exit_code"))
        .and_then(|code| code.parse::<i64>().ok());
    if let Some(reason) = killed {
        return TryExit {
            exit_code,
            failure: Some(reason.as_failure()),
        };
    }
    if terminated.and_then(|e| e.detail("oom_killed")) == Some("true") {
        return TryExit {
            exit_code,
            failure: Some(FailureReason::Backend(
                "killed by the kernel: out of memory".to_owned(),
            )),
        };
    }
    if exit_code.is_some() {
        return TryExit {
            exit_code,
            failure: None,
        };
    }
    // The task never ran to an exit: the event that failed it says why.
    // The event that says why comes before `Not Restarting`, which only says it is final.
    // A prestart hook's failure (`client/allocrunner/taskrunner/task_runner_hooks.go`,
    // `emitHookError`) is a `Task hook failed` event whose message names the hook.
    let failing = events
        .iter()
        .rev()
        .find(|e| {
            matches!(
                e.kind.as_str(),
                "Driver Failure"
                    | "Setup Failure"
                    | "Failed Validation"
                    | "Failed Artifact Download"
                    | "Task hook failed"
                    | "Template"
            )
        })
        .or_else(|| events.iter().rev().find(|e| e.fails_task));
    let failure = match failing {
        Some(event) => {
            // Nomad's multi-errors span lines ("2 errors occurred:\n\t* ..."): one line here.
            let message = event
                .message()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            // A download's error quotes its URL, whose query is a signature while it lives.
            let message = if event.kind == "Failed Artifact Download" {
                super::files::redact_urls(&message)
            } else {
                message
            };
            let lower = message.to_lowercase();
            if event.kind == "Driver Failure" && (lower.contains("pull") || lower.contains("image"))
            {
                FailureReason::Image(format!("Nomad: {message}"))
            } else {
                FailureReason::Backend(format!("Nomad: {}: {message}", event.kind))
            }
        }
        None if allocation.client_status == "lost" => FailureReason::Backend(format!(
            "Nomad lost the allocation {} on node {}: {}",
            allocation.id, allocation.node_name, allocation.client_description
        )),
        None => FailureReason::Backend(format!(
            "Nomad allocation {} ended {} without an exit code: {}",
            allocation.id, allocation.client_status, allocation.client_description
        )),
    };
    TryExit {
        exit_code: None,
        failure: Some(failure),
    }
}

/// An error and its causes, for a message that says what went wrong.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = cause_of(source);
    }
    text
}

pub(crate) fn cause_of<'a>(
    error: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    error.and_then(|e| e.source())
}
