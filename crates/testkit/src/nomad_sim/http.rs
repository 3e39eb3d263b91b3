//! The simulator's HTTP endpoints, with Nomad's JSON shapes and blocking queries.

#[allow(unused_imports)]
use super::*;

pub(super) async fn leader() -> Json<Value> {
    Json(json!("127.0.0.1:4647"))
}

pub(super) fn job_status(state: &Inner, namespace: &str, id: &str, job: &SimJob) -> &'static str {
    let allocs: Vec<&SimAlloc> = state
        .allocs
        .values()
        .filter(|a| a.namespace == namespace && a.job_id == id)
        .collect();
    if job.stopped || (!allocs.is_empty() && allocs.iter().all(|a| is_terminal(a))) {
        "dead"
    } else if allocs.iter().any(|a| a.client_status == "running") {
        "running"
    } else {
        "pending"
    }
}

pub(super) fn is_terminal(alloc: &SimAlloc) -> bool {
    matches!(alloc.client_status.as_str(), "complete" | "failed" | "lost")
}

pub(super) async fn list_jobs(State(sim): State<Arc<Sim>>, Query(params): Params) -> Response {
    let ns = namespace(&params);
    let prefix = params.get("prefix").cloned().unwrap_or_default();
    let with_meta = params.get("meta").is_some_and(|m| m == "true");
    sim.blocking(&params, |state| {
        Ok(Value::Array(
            state
                .jobs
                .iter()
                .filter(|((n, id), _)| *n == ns && id.starts_with(&prefix))
                .map(|((n, id), job)| {
                    let mut stub = json!({
                        "ID": id, "ParentID": "", "Name": job.job["Name"], "Namespace": n,
                        "Datacenters": job.job["Datacenters"], "Type": "batch",
                        "Priority": 50, "Periodic": false, "ParameterizedJob": false,
                        "Stop": job.stopped, "Status": job_status(state, n, id, job),
                        "StatusDescription": "", "CreateIndex": job.create_index,
                        "ModifyIndex": job.modify_index, "JobModifyIndex": job.modify_index,
                        "SubmitTime": now_nanos(),
                    });
                    if with_meta {
                        stub["Meta"] = job.job["Meta"].clone();
                    }
                    stub
                })
                .collect(),
        ))
    })
    .await
}

pub(super) async fn read_job(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let ns = namespace(&params);
    sim.blocking(&params, |state| {
        let job = state
            .jobs
            .get(&(ns.clone(), id.clone()))
            .ok_or_else(|| error(StatusCode::NOT_FOUND, "job not found"))?;
        let mut value = job.job.clone();
        value["Status"] = json!(job_status(state, &ns, &id, job));
        value["Stop"] = json!(job.stopped);
        value["CreateIndex"] = json!(job.create_index);
        value["ModifyIndex"] = json!(job.modify_index);
        value["JobModifyIndex"] = json!(job.modify_index);
        Ok(value)
    })
    .await
}

pub(super) async fn register(
    State(sim): State<Arc<Sim>>,
    Query(params): Params,
    Json(body): Json<Value>,
) -> Response {
    let job = body["Job"].clone();
    // A job Nomad will not take is a 500 with the reason, as every error the agent has no
    // code for (`command/agent/http.go`, `wrap`): not a 400.
    if let Err(problem) = validate(&job) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &problem);
    }
    let ns = job["Namespace"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| namespace(&params));
    let id = job["ID"].as_str().unwrap().to_owned();
    // nomad/job_endpoint_validators.go: an uncoded error, so a 500.
    if !sim.state.lock().unwrap().has_namespace(&ns) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("job {id:?} is in nonexistent namespace {ns:?}"),
        );
    }
    let enforce = body["EnforceIndex"].as_bool().unwrap_or(false);
    let expected = body["JobModifyIndex"].as_u64().unwrap_or(0);
    let (eval_id, index) = {
        let mut state = sim.state.lock().unwrap();
        let existing = state.jobs.get(&(ns.clone(), id.clone()));
        if enforce {
            match existing {
                Some(_) if expected == 0 => {
                    // nomad/job_endpoint.go: RegisterEnforceIndexErrPrefix
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Enforcing job modify index 0: job already exists",
                    );
                }
                Some(job) if job.modify_index != expected => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!(
                            "Enforcing job modify index {expected}: job exists with conflicting job modify index: {}",
                            job.modify_index
                        ),
                    );
                }
                None if expected != 0 => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("Enforcing job modify index {expected}: job does not exist"),
                    );
                }
                _ => {}
            }
        }
        let index = sim.bump();
        // Nomad's batch default: one reschedule (nomad/structs: DefaultBatchJobReschedulePolicy).
        let reschedule = &job["TaskGroups"][0]["ReschedulePolicy"];
        let reschedules_left = if reschedule.is_null() {
            1
        } else if reschedule["Unlimited"].as_bool() == Some(true) {
            u64::MAX
        } else {
            reschedule["Attempts"].as_u64().unwrap_or(0)
        };
        state.registered.insert(id.clone(), job.clone());
        state.jobs.insert(
            (ns.clone(), id.clone()),
            SimJob {
                job: job.clone(),
                stopped: false,
                create_index: index,
                modify_index: index,
                reschedules_left,
            },
        );
        (uuid(), index)
    };
    evaluate(&sim, &ns, &id, &eval_id, "job-register");
    let mut headers = HeaderMap::new();
    headers.insert("X-Nomad-Index", HeaderValue::from(index));
    (
        headers,
        Json(json!({
            "EvalID": eval_id, "EvalCreateIndex": index, "JobModifyIndex": index,
            "Warnings": "", "Index": index, "LastContact": 0, "KnownLeader": true,
        })),
    )
        .into_response()
}

pub(super) fn alloc_json(sim: &Sim, alloc: &SimAlloc) -> Value {
    let node = &sim.nodes[alloc.node];
    json!({
        "ID": alloc.id, "EvalID": alloc.eval_id,
        "Name": format!("{}.{}[0]", alloc.job_id, alloc.group),
        "Namespace": alloc.namespace, "NodeID": node.id, "NodeName": node.name,
        "JobID": alloc.job_id, "JobType": "batch", "JobVersion": 0, "TaskGroup": alloc.group,
        "AllocatedResources": {"Tasks": {alloc.task.clone(): {"Cpu": {"CpuShares": alloc.cpu}, "Memory": {"MemoryMB": alloc.memory}}}},
        "DesiredStatus": alloc.desired_status, "DesiredDescription": match (&alloc.evicted, alloc.lost) {
            (Some(why), _) => why.as_str(),
            (None, true) => "alloc is lost since its node is down",
            _ if alloc.desired_status == "stop" => "alloc is being stopped",
            _ => "",
        },
        "ClientStatus": alloc.client_status, "ClientDescription": alloc.client_description,
        "TaskStates": { alloc.task.clone(): {
            "State": alloc.task_state, "Failed": alloc.failed, "Restarts": alloc.restarts,
            "LastRestart": null,
            "StartedAt": alloc.started_at, "FinishedAt": alloc.finished_at,
            "Events": alloc.events,
        }},
        "DeploymentStatus": null, "FollowupEvalID": "", "NextAllocation": "",
        "RescheduleTracker": null, "PreemptedAllocations": null, "PreemptedByAllocation": "",
        "CreateIndex": alloc.create_index, "ModifyIndex": alloc.modify_index,
        "CreateTime": alloc.create_time, "ModifyTime": now_nanos(),
    })
}

pub(super) async fn job_allocations(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let ns = namespace(&params);
    sim.blocking_on(&params, Some(allocs_index), |state| {
        Ok(Value::Array(
            state
                .allocs
                .values()
                .filter(|a| a.namespace == ns && a.job_id == id)
                .map(|alloc| alloc_json(&sim, alloc))
                .collect(),
        ))
    })
    .await
}

pub(super) async fn job_evaluations(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let ns = namespace(&params);
    sim.blocking(&params, |state| {
        Ok(Value::Array(
            state
                .evals
                .iter()
                .filter(|e| e["Namespace"] == ns.as_str() && e["JobID"] == id.as_str())
                .cloned()
                .collect(),
        ))
    })
    .await
}

pub(super) async fn read_allocation(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    sim.blocking(&params, |state| {
        state
            .allocs
            .get(&id)
            .map(|alloc| alloc_json(&sim, alloc))
            .ok_or_else(|| error(StatusCode::NOT_FOUND, "alloc not found"))
    })
    .await
}

pub(super) async fn deregister(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let ns = namespace(&params);
    let purge = params.get("purge").is_some_and(|p| p == "true");
    let index = {
        let mut state = sim.state.lock().unwrap();
        let key = (ns.clone(), id.clone());
        let index = sim.bump();
        // Deregistering a job Nomad does not have is no error (`nomad/job_endpoint.go`,
        // `Deregister`: a missing job still gets its evaluation).
        if !state.jobs.contains_key(&key) {
            drop(state);
            return Json(json!({
                "EvalID": uuid(), "EvalCreateIndex": index, "JobModifyIndex": 0,
                "VolumeEvalID": "", "VolumeEvalIndex": 0, "Index": index, "LastContact": 0, "KnownLeader": true,
            }))
            .into_response();
        }
        if purge {
            state.jobs.remove(&key);
        } else if let Some(job) = state.jobs.get_mut(&key) {
            job.stopped = true;
            job.modify_index = index;
        }
        state.blocked.retain(|(n, j)| !(n == &ns && j == &id));
        for alloc in state.allocs.values_mut() {
            if alloc.namespace == ns && alloc.job_id == id && !is_terminal(alloc) {
                alloc.desired_status = "stop".to_owned();
                alloc.modify_index = index;
                alloc.stopping = true;
                alloc.stop.notify_one();
            }
        }
        index
    };
    sim.bump();
    Json(json!({
        "EvalID": uuid(), "EvalCreateIndex": index, "JobModifyIndex": index,
        "VolumeEvalID": "", "VolumeEvalIndex": 0, "Index": index, "LastContact": 0, "KnownLeader": true,
    }))
    .into_response()
}

/// `GET /v1/namespace/:name` (`command/agent/namespace_endpoint.go`): the namespace, or 404
/// `Namespace not found`.
pub(super) async fn read_namespace(
    State(sim): State<Arc<Sim>>,
    Path(name): Path<String>,
    Query(params): Params,
) -> Response {
    sim.blocking(&params, |state| {
        if !state.has_namespace(&name) {
            return Err(error(StatusCode::NOT_FOUND, "Namespace not found"));
        }
        Ok(json!({
            "Name": name, "Description": "", "Quota": "", "Meta": null,
            "Capabilities": null, "NodePoolConfiguration": null,
            "CreateIndex": 1, "ModifyIndex": 1,
        }))
    })
    .await
}
