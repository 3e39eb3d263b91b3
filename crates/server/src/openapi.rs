//! The API's OpenAPI 3.1 document, served at `/api/v1/openapi.json`. It is written here by
//! hand, beside the handlers in [`crate::api`]; the API tests check that every documented
//! operation answers as documented, and schemathesis fuzzes the server against it.

use std::sync::OnceLock;

use serde_json::{json, Value};

/// The document as JSON text (built once).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| build().to_string())
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}

fn content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn ok(description: &str, body: Value) -> Value {
    json!({"description": description, "content": content(body)})
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": content(schema("Error"))})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string", "minLength": 1}})
}

fn run_id() -> Value {
    path_param("run_id", "a run id (in full)")
}

fn task_id() -> Value {
    path_param("task_id", "a task id of the run's job")
}

fn try_number() -> Value {
    json!({"name": "try_number", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1, "maximum": 4294967295u64}})
}

fn job_id() -> Value {
    path_param("job_id", "a job id")
}

fn name_param(kind: &str) -> Value {
    json!({"name": "name", "in": "path", "required": true, "description": format!("{kind} name: a-z, 0-9 and _"), "schema": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"}})
}

/// An operation: summary, the role it needs, parameters, body, responses.
fn operation(
    id: &str,
    summary: &str,
    role: Option<&str>,
    parameters: Vec<Value>,
    body: Option<Value>,
    mut responses: Value,
) -> Value {
    let mut operation = json!({
        "operationId": id,
        "summary": summary,
        "parameters": parameters,
    });
    if let Some(role) = role {
        operation["description"] = json!(format!("Needs a token with the {role} role."));
        responses["401"] = error("no token, or an unknown or revoked one");
        responses["403"] = error("the token's role does not allow this");
    } else {
        operation["security"] = json!([]);
    }
    if let Some(body) = body {
        operation["requestBody"] = json!({"required": true, "content": content(body)});
        responses["400"] = error("the body is not what this operation takes");
    }
    operation["responses"] = responses;
    operation
}

fn build() -> Value {
    let viewer = Some("viewer");
    let operator = Some("operator");
    let admin = Some("admin");
    let not_found = || error("no such job, run, task or try");
    let items = |item: &str| json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": schema(item)}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Stevedore",
            "version": "1",
            "description": "Jobs, runs, task instances, tries and their logs. Every operation but health needs `Authorization: Bearer <token>` (`stevedore tokens create NAME --role viewer|operator|admin`). Errors are `{\"error\": {\"code\", \"message\"}}`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/health": {"get": operation("health", "Whether the server and its store answer", None, vec![], None, json!({
                "200": ok("healthy", schema("Health")),
                "503": ok("the store does not answer", schema("Health")),
            }))},
            "/api/v1/openapi.json": {"get": operation("openapi", "This document", viewer, vec![], None, json!({
                "200": ok("the OpenAPI document", json!({"type": "object"})),
            }))},
            "/api/v1/jobs": {"get": operation("listJobs", "Jobs of the jobs folder, with their last runs; the errors of invalid job files", viewer, vec![], None, json!({
                "200": ok("jobs", json!({"type": "object", "required": ["items", "errors"], "properties": {
                    "items": {"type": "array", "items": schema("JobSummary")},
                    "errors": {"type": "array", "items": {"type": "string"}},
                }})),
            }))},
            "/api/v1/jobs/{job_id}": {"get": operation("getJob", "A job with its tasks (the DAG), params and file", viewer, vec![job_id()], None, json!({
                "200": ok("the job", schema("Job")),
                "404": not_found(),
            }))},
            "/api/v1/jobs/{job_id}/pause": {"post": operation("pauseJob", "Stops the job's schedule from making runs", operator, vec![job_id()], None, json!({
                "200": ok("paused", schema("Paused")),
                "404": not_found(),
            }))},
            "/api/v1/jobs/{job_id}/unpause": {"post": operation("unpauseJob", "Lets the job's schedule make runs again", operator, vec![job_id()], None, json!({
                "200": ok("unpaused", schema("Paused")),
                "404": not_found(),
            }))},
            "/api/v1/jobs/{job_id}/runs": {"post": operation("triggerRun", "Creates a manual run; params must be the job's own, of their defaults' types", operator, vec![job_id()], Some(schema("Trigger")), json!({
                "201": ok("the run, queued", schema("Run")),
                "404": not_found(),
                "422": error("a param is not the job's, or not of its default's type"),
            }))},
            "/api/v1/jobs/{job_id}/backfill": {"post": operation("backfillJob", "Creates the runs of every data interval whose start lies in [from, to], in order; with rerun_failed, failed runs of the range run again", operator, vec![job_id()], Some(schema("BackfillRequest")), json!({
                "201": ok("what the backfill created", schema("Backfill")),
                "400": error("a body that is not a backfill request"),
                "404": not_found(),
                "422": error("a job without a schedule, a date that does not parse, an empty or too long range"),
            }))},
            "/api/v1/runs": {"get": operation("listRuns", "Runs, newest first, a page at a time", viewer, vec![
                json!({"name": "job_id", "in": "query", "schema": {"type": "string"}}),
                json!({"name": "state", "in": "query", "description": "states, comma-separated", "schema": {"type": "string", "pattern": "^(queued|running|success|failed)(,(queued|running|success|failed))*$"}}),
                json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": crate::paging::MAX_PAGE, "default": crate::paging::DEFAULT_PAGE}}),
                json!({"name": "cursor", "in": "query", "description": "`next_cursor` of the previous page (the last run id it listed)", "schema": {"type": "string"}}),
            ], None, json!({
                "200": ok("a page of runs", json!({"type": "object", "required": ["items", "next_cursor"], "properties": {
                    "items": {"type": "array", "items": schema("Run")},
                    "next_cursor": nullable("string"),
                }})),
                "400": error("a bad filter, limit or cursor"),
            }))},
            "/api/v1/runs/{run_id}": {"get": operation("getRun", "A run and its task instances", viewer, vec![run_id()], None, json!({
                "200": ok("the run", schema("RunDetail")),
                "400": error("a path parameter is malformed"),
                "404": not_found(),
            }))},
            "/api/v1/runs/{run_id}/cancel": {"post": operation("cancelRun", "Cancels a queued or running run: running tries are killed, the rest skipped", operator, vec![run_id()], None, json!({
                "200": ok("cancel requested", schema("Run")),
                "400": error("a path parameter is malformed"),
                "404": not_found(),
                "409": error("the run has already ended"),
            }))},
            "/api/v1/runs/{run_id}/tasks": {"get": operation("listTaskInstances", "The run's task instances", viewer, vec![run_id()], None, json!({
                "200": ok("task instances", items("TaskInstance")),
                "400": error("a path parameter is malformed"),
                "404": not_found(),
            }))},
            "/api/v1/runs/{run_id}/tasks/{task_id}": {"get": operation("getTaskInstance", "A task instance and its tries", viewer, vec![run_id(), task_id()], None, json!({
                "200": ok("the task instance", schema("TaskInstanceDetail")),
                "400": error("a path parameter is malformed"),
                "404": not_found(),
            }))},
            "/api/v1/runs/{run_id}/tasks/{task_id}/clear": {"post": operation("clearTask", "Runs the task instance again (a new try, a fresh retry budget), with its downstream if asked", operator, vec![run_id(), task_id()], Some(schema("Clear")), json!({
                "200": ok("cleared", json!({"type": "object", "required": ["run_id", "cleared"], "properties": {"run_id": {"type": "string"}, "cleared": {"type": "array", "items": {"type": "string"}}}})),
                "404": not_found(),
                "422": error("the run's job version no longer parses"),
            }))},
            "/api/v1/runs/{run_id}/tasks/{task_id}/mark": {"post": operation("markTask", "Sets the task instance's state by hand", operator, vec![run_id(), task_id()], Some(schema("Mark")), json!({
                "200": ok("the task instance", schema("TaskInstance")),
                "404": not_found(),
                "422": error("not a state that can be set by hand"),
            }))},
            "/api/v1/runs/{run_id}/tasks/{task_id}/tries": {"get": operation("listTries", "The task instance's tries", viewer, vec![run_id(), task_id()], None, json!({
                "200": ok("tries", items("Try")),
                "400": error("a path parameter is malformed"),
                "404": not_found(),
            }))},
            "/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}": {"get": operation("getTry", "A try, with its outputs", viewer, vec![run_id(), task_id(), try_number()], None, json!({
                "200": ok("the try", schema("TryDetail")),
                "400": error("a path parameter is malformed"),
                "404": not_found(),
            }))},
            "/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}/logs": {"get": operation("getLogs", "Log lines of a try, by line number", viewer, vec![run_id(), task_id(), try_number(),
                json!({"name": "after", "in": "query", "description": "lines after this seq (from the first line without it)", "schema": {"type": "integer", "minimum": -1, "maximum": 9223372036854775807i64}}),
                json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}}),
            ], None, json!({
                "200": ok("lines", schema("LogPage")),
                "400": error("a bad range or path parameter"),
                "404": not_found(),
            }))},
            "/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}/logs/follow": {"get": operation("followLogs", "Log lines as Server-Sent Events: `line` events (data: a LogLine, id: its seq) while the try runs, then one `end` event (data: the Try)", viewer, vec![run_id(), task_id(), try_number(),
                json!({"name": "after", "in": "query", "schema": {"type": "integer", "minimum": -1, "maximum": 9223372036854775807i64}}),
            ], None, json!({
                "200": {"description": "the event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "400": error("a bad range or path parameter"),
                "404": not_found(),
            }))},
            "/api/v1/pools": {"get": operation("listPools", "Pools", viewer, vec![], None, json!({
                "200": ok("pools", items("Pool")),
            }))},
            "/api/v1/pools/{name}": {
                "put": operation("putPool", "Creates or resizes a pool", admin, vec![name_param("pool")], Some(schema("PoolBody")), json!({
                    "200": ok("the pool", schema("Pool")),
                })),
                "delete": operation("deletePool", "Deletes a pool", admin, vec![name_param("pool")], None, json!({
                    "204": {"description": "deleted"},
                    "404": not_found(),
                    "409": error("the default pool cannot be deleted"),
                })),
            },
            "/api/v1/connections": {"get": operation("listConnections", "Connections: names and variable names, never values", viewer, vec![], None, json!({
                "200": ok("connections", items("Connection")),
            }))},
            "/api/v1/connections/{name}": {
                "put": operation("putConnection", "Creates or replaces a connection; its values are sealed and never returned", admin, vec![name_param("connection")], Some(schema("ConnectionBody")), json!({
                    "200": ok("the connection, without its values", schema("Connection")),
                    "503": error("the server has no secret key to seal values with"),
                })),
                "delete": operation("deleteConnection", "Deletes a connection", admin, vec![name_param("connection")], None, json!({
                    "204": {"description": "deleted"},
                    "404": not_found(),
                })),
            },
            "/metrics": {"get": operation("metrics", "Prometheus metrics (text exposition)", viewer, vec![], None, json!({
                "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
            }))},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

fn schemas() -> Value {
    let time = || json!({"type": "string", "format": "date-time"});
    let maybe_time = || json!({"type": ["string", "null"], "format": "date-time"});
    use stevedore_domain::state::{RunState, RunTrigger, TaskState, TryState};
    let run_state = json!({"type": "string", "enum": RunState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()});
    let task_state = json!({"type": "string", "enum": TaskState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()});
    let try_state = json!({"type": "string", "enum": TryState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()});
    let trigger = json!({"type": "string", "enum": RunTrigger::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()});
    let run = json!({"type": "object", "required": ["run_id", "job_id", "job_version", "trigger", "state", "logical_date", "data_interval_start", "data_interval_end", "params", "queued_at", "started_at", "ended_at", "cancel_requested"], "properties": {
        "run_id": {"type": "string"},
        "job_id": {"type": "string"},
        "job_version": {"type": "string"},
        "trigger": trigger,
        "state": run_state,
        "logical_date": time(),
        "data_interval_start": time(),
        "data_interval_end": time(),
        "params": {"type": "object"},
        "queued_at": time(),
        "started_at": maybe_time(),
        "ended_at": maybe_time(),
        "cancel_requested": {"type": "boolean"},
    }});
    let instance = json!({"type": "object", "required": ["run_id", "task_id", "state", "try_number", "next_try_at", "started_at", "ended_at", "exit_code", "image_digest", "failure_reason"], "properties": {
        "run_id": {"type": "string"},
        "task_id": {"type": "string"},
        "state": task_state,
        "try_number": {"type": "integer", "minimum": 0},
        "next_try_at": maybe_time(),
        "started_at": maybe_time(),
        "ended_at": maybe_time(),
        "exit_code": nullable("integer"),
        "image_digest": nullable("string"),
        "failure_reason": nullable("string"),
    }});
    let attempt = json!({"type": "object", "required": ["run_id", "task_id", "try_number", "state", "backend", "container_id", "image", "image_digest", "started_at", "ended_at", "exit_code", "failure_reason"], "properties": {
        "run_id": {"type": "string"},
        "task_id": {"type": "string"},
        "try_number": {"type": "integer", "minimum": 1},
        "state": try_state,
        "backend": {"type": "string"},
        "container_id": nullable("string"),
        "image": {"type": "string"},
        "image_digest": nullable("string"),
        "started_at": time(),
        "ended_at": maybe_time(),
        "exit_code": nullable("integer"),
        "failure_reason": nullable("string"),
    }});
    let job_summary = json!({"type": "object", "required": ["job_id", "description", "schedule", "timezone", "paused", "next_run_at", "last_runs"], "properties": {
        "job_id": {"type": "string"},
        "description": nullable("string"),
        "schedule": nullable("string"),
        "timezone": {"type": "string"},
        "paused": {"type": "boolean"},
        "next_run_at": maybe_time(),
        "last_runs": {"type": "array", "items": {"type": "object", "required": ["run_id", "state"], "properties": {"run_id": {"type": "string"}, "state": run_state}}},
    }});
    let mut job = job_summary.clone();
    for key in ["version", "file", "source", "params", "tasks"] {
        job["required"].as_array_mut().unwrap().push(json!(key));
    }
    job["properties"]["version"] = json!({"type": "string"});
    job["properties"]["file"] = json!({"type": "string"});
    job["properties"]["source"] = json!({"type": "string"});
    job["properties"]["params"] = json!({"type": "object"});
    job["properties"]["tasks"] = json!({"type": "array", "items": {"type": "object", "required": ["task_id", "image", "depends_on", "trigger_rule", "pool", "retries", "connections"], "properties": {
        "task_id": {"type": "string"},
        "image": {"type": "string"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "trigger_rule": {"type": "string"},
        "pool": {"type": "string"},
        "retries": {"type": "integer", "minimum": 0},
        "connections": {"type": "array", "items": {"type": "string"}},
    }}});
    let mut run_detail = run.clone();
    run_detail["required"]
        .as_array_mut()
        .unwrap()
        .push(json!("task_instances"));
    run_detail["properties"]["task_instances"] =
        json!({"type": "array", "items": schema("TaskInstanceDetail")});
    let mut instance_detail = instance.clone();
    instance_detail["required"]
        .as_array_mut()
        .unwrap()
        .push(json!("tries"));
    instance_detail["properties"]["tries"] = json!({"type": "array", "items": schema("Try")});
    let mut try_detail = attempt.clone();
    try_detail["required"]
        .as_array_mut()
        .unwrap()
        .push(json!("outputs"));
    try_detail["properties"]["outputs"] = json!({"type": "object"});
    let line = json!({"type": "object", "required": ["seq", "stream", "timestamp", "text"], "properties": {
        "seq": {"type": "integer", "minimum": 0},
        "stream": {"type": "string", "enum": ["stdout", "stderr", "log"]},
        "timestamp": time(),
        "text": {"type": "string"},
    }});
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "enum": ["bad_request", "unauthorized", "forbidden", "not_found", "conflict", "invalid", "no_secret_key", "internal"]},
            "message": {"type": "string"},
        }}}},
        "Health": {"type": "object", "required": ["status", "store"], "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}, "store": {"type": "string"}}},
        "JobSummary": job_summary,
        "Job": job,
        "Paused": {"type": "object", "required": ["job_id", "paused"], "properties": {"job_id": {"type": "string"}, "paused": {"type": "boolean"}}},
        "Trigger": {"type": "object", "additionalProperties": false, "properties": {"params": {"type": "object", "description": "overrides of the job's params"}}},
        "BackfillRequest": {"type": "object", "additionalProperties": false, "required": ["from", "to"], "properties": {
            "from": {"type": "string", "description": "first logical date (the job's timezone unless it has an offset), such as 2024-01-01"},
            "to": {"type": "string", "description": "last logical date, included"},
            "rerun_failed": {"type": "boolean", "default": false},
        }},
        "Backfill": {"type": "object", "required": ["from", "to", "intervals", "created", "rerun", "kept"], "properties": {
            "from": maybe_time(),
            "to": maybe_time(),
            "intervals": {"type": "integer", "minimum": 0},
            "created": {"type": "array", "items": {"type": "string"}},
            "rerun": {"type": "array", "items": {"type": "string"}},
            "kept": {"type": "integer", "minimum": 0},
        }},
        "Run": run,
        "RunDetail": run_detail,
        "TaskInstance": instance,
        "TaskInstanceDetail": instance_detail,
        "Try": attempt,
        "TryDetail": try_detail,
        "Clear": {"type": "object", "additionalProperties": false, "properties": {"downstream": {"type": "boolean", "default": false}}},
        "Mark": {"type": "object", "additionalProperties": false, "required": ["state"], "properties": {"state": {"type": "string", "enum": ["success", "failed"]}}},
        "LogLine": line,
        "LogPage": {"type": "object", "required": ["lines", "next_after", "try_state", "finished"], "properties": {
            "lines": {"type": "array", "items": schema("LogLine")},
            "next_after": nullable("integer"),
            "try_state": try_state,
            "finished": {"type": "boolean"},
        }},
        "Pool": {"type": "object", "required": ["name", "slots", "description"], "properties": {"name": {"type": "string"}, "slots": {"type": "integer", "minimum": 0}, "description": {"type": "string"}}},
        "PoolBody": {"type": "object", "additionalProperties": false, "required": ["slots"], "properties": {"slots": {"type": "integer", "minimum": 0, "maximum": 9223372036854775807i64}, "description": {"type": "string"}}},
        "Connection": {"type": "object", "required": ["name", "keys", "description"], "properties": {"name": {"type": "string"}, "keys": {"type": "array", "items": {"type": "string"}}, "description": {"type": "string"}}},
        "ConnectionBody": {"type": "object", "additionalProperties": false, "required": ["values"], "properties": {
            "values": {"type": "object", "propertyNames": {"pattern": "^[A-Z_][A-Z0-9_]*$"}, "additionalProperties": {"type": "string"}, "description": "variable name to value; write-only"},
            "description": {"type": "string"},
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_points_at_a_schema() {
        let document: Value = serde_json::from_str(document()).unwrap();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        let text = document.to_string();
        for reference in text.split("#/components/schemas/").skip(1) {
            let name: String = reference
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            assert!(schemas.contains_key(&name), "no schema {name}");
        }
    }
}
