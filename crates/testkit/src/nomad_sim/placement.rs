//! Validating a registered job and placing its allocation on the one node by its
//! `Resources` (a task that does not fit waits as a blocked evaluation).

#[allow(unused_imports)]
use super::*;

pub(super) fn task_resources(task: &Value) -> (u64, u64) {
    let resources = &task["Resources"];
    (
        resources["CPU"].as_u64().unwrap_or(100),
        resources["MemoryMB"].as_u64().unwrap_or(300),
    )
}

/// Checks a job as Nomad's `Job.Validate` would for the parts the simulator runs.
pub(super) fn validate(job: &Value) -> Result<(), String> {
    let id = job["ID"].as_str().unwrap_or_default();
    if id.is_empty() {
        return Err("1 error occurred:\n\t* Missing job ID".to_owned());
    }
    if job["Type"].as_str().unwrap_or("service") != "batch" {
        return Err(format!(
            "job {id:?}: the simulator runs batch jobs only (Type {:?}; Nomad's default is service)",
            job["Type"]
        ));
    }
    let groups = job["TaskGroups"].as_array().cloned().unwrap_or_default();
    if groups.len() != 1 {
        return Err(format!(
            "job {id:?}: the simulator runs jobs of one task group"
        ));
    }
    let group = &groups[0];
    let restart = &group["RestartPolicy"];
    if !restart.is_null() {
        let mode = restart["Mode"].as_str().unwrap_or("");
        if mode != "fail" && mode != "delay" {
            return Err(format!("Unsupported restart mode: {mode:?}"));
        }
        if restart["Attempts"].as_u64() == Some(0) && mode != "fail" {
            return Err("Restart policy \"delay\" mode with zero attempts is invalid; use \"fail\" mode instead".to_owned());
        }
    }
    let tasks = group["Tasks"].as_array().cloned().unwrap_or_default();
    if tasks.len() != 1 {
        return Err(format!("job {id:?}: the simulator runs groups of one task"));
    }
    let task = &tasks[0];
    // nomad/structs/structs.go: MinResources, Resources.Validate.
    let memory = task["Resources"]["MemoryMB"].as_u64().unwrap_or(300);
    if memory < 10 {
        return Err(format!(
            "1 error occurred:\n\t* Task group {:?} validation failed: 1 error occurred:\n\t* Task {:?} validation failed: 1 error occurred:\n\t* minimum MemoryMB value is 10; got {memory}\n\n",
            group["Name"].as_str().unwrap_or_default(),
            task["Name"].as_str().unwrap_or_default()
        ));
    }
    if task["Driver"] != "docker" {
        return Err(format!(
            "task {:?}: Missing or unsupported driver {:?}",
            task["Name"], task["Driver"]
        ));
    }
    if task["Config"]["image"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(format!(
            "task {:?}: docker config: image is required",
            task["Name"]
        ));
    }
    for template in task["Templates"].as_array().into_iter().flatten() {
        if template["DestPath"].as_str().unwrap_or_default().is_empty() {
            return Err("template: must specify a destination".to_owned());
        }
    }
    Ok(())
}

/// Places the job's group on the node, or records why not (a blocked evaluation).
pub(super) fn evaluate(sim: &Arc<Sim>, ns: &str, id: &str, eval_id: &str, triggered_by: &str) {
    let mut state = sim.state.lock().unwrap();
    let Some(job) = state.jobs.get(&(ns.to_owned(), id.to_owned())) else {
        return;
    };
    if job.stopped {
        return;
    }
    let job_value = job.job.clone();
    let group = job_value["TaskGroups"][0].clone();
    let task = group["Tasks"][0].clone();
    let (cpu, memory) = task_resources(&task);
    let datacenters: Vec<String> = job_value["Datacenters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    let in_datacenter = datacenters.is_empty()
        || datacenters.iter().any(|d| {
            d == "*"
                || d == DATACENTER
                || (d.ends_with('*') && DATACENTER.starts_with(d.trim_end_matches('*')))
        });
    // The first node the constraints (`${meta.KEY} = value`) and the resources left allow.
    let mut constraint_filtered = serde_json::Map::new();
    let mut dimension = serde_json::Map::new();
    let mut filtered = 0;
    let mut exhausted = 0;
    let mut chosen = None;
    for (at, node) in sim.nodes.iter().enumerate() {
        let mut passes = true;
        for constraint in job_value["Constraints"].as_array().into_iter().flatten() {
            let target = constraint["LTarget"].as_str().unwrap_or_default();
            let wanted = constraint["RTarget"].as_str().unwrap_or_default();
            let operand = constraint["Operand"].as_str().unwrap_or("=");
            let value = target
                .strip_prefix("${meta.")
                .and_then(|key| key.strip_suffix('}'))
                .and_then(|key| node.meta.get(key));
            let holds = operand == "=" && value.is_some_and(|v| v == wanted);
            if !holds {
                passes = false;
                constraint_filtered.insert(format!("{target} {operand} {wanted}"), json!(1));
                break;
            }
        }
        if !passes {
            filtered += 1;
            continue;
        }
        let (used_cpu, used_memory) = state.used[at];
        let mut fits = true;
        if used_cpu + cpu > NODE_CPU_MHZ {
            *dimension.entry("cpu").or_insert(json!(0)) = json!(exhausted + 1);
            fits = false;
        }
        if used_memory + memory > NODE_MEMORY_MB {
            *dimension.entry("memory").or_insert(json!(0)) = json!(exhausted + 1);
            fits = false;
        }
        if !fits {
            exhausted += 1;
            continue;
        }
        chosen = Some(at);
        break;
    }
    let nodes = sim.nodes.len();
    let index = sim.bump();
    let fits = in_datacenter && chosen.is_some();
    let failed = if fits {
        Value::Null
    } else {
        let metric = json!({
            "NodesEvaluated": if in_datacenter { nodes } else { 0 },
            "NodesFiltered": filtered,
            "NodesAvailable": if in_datacenter { json!({DATACENTER: nodes}) } else { json!({}) },
            "ClassFiltered": null,
            "ConstraintFiltered": if constraint_filtered.is_empty() { Value::Null } else { Value::Object(constraint_filtered) },
            "NodesExhausted": exhausted,
            "ClassExhausted": null,
            "DimensionExhausted": if dimension.is_empty() { Value::Null } else { Value::Object(dimension) },
            "QuotaExhausted": null, "ResourcesExhausted": null, "Scores": null,
            "AllocationTime": 12_345, "CoalescedFailures": 0, "ScoreMetaData": null,
        });
        json!({ group["Name"].as_str().unwrap_or("group"): metric })
    };
    state.evals.push(json!({
        "ID": eval_id, "Priority": 50, "Type": "batch", "TriggeredBy": triggered_by,
        "Namespace": ns, "JobID": id, "JobModifyIndex": index, "NodeID": "",
        "Status": "complete", "StatusDescription": "",
        "BlockedEval": if fits { String::new() } else { uuid() },
        "FailedTGAllocs": failed, "QueuedAllocations": { group["Name"].as_str().unwrap_or("group"): if fits { 0 } else { 1 } },
        "CreateIndex": index, "ModifyIndex": index, "CreateTime": now_nanos(), "ModifyTime": now_nanos(),
    }));
    if !fits {
        if !state.blocked.iter().any(|(n, j)| n == ns && j == id) {
            state.blocked.push((ns.to_owned(), id.to_owned()));
        }
        return;
    }
    state.blocked.retain(|(n, j)| !(n == ns && j == id));
    let node = chosen.expect("a node that fits");
    state.used[node].0 += cpu;
    state.used[node].1 += memory;
    let alloc_id = uuid();
    let task_name = task["Name"].as_str().unwrap_or("task").to_owned();
    // logmon's files: the task's `LogConfig`, else Nomad's defaults (`api/tasks.go`).
    let (file_bytes, max_files) = sim.log_rotation.lock().unwrap().unwrap_or_else(|| {
        let config = &task["LogConfig"];
        (
            config["MaxFileSizeMB"].as_u64().unwrap_or(10) as usize * 1024 * 1024,
            config["MaxFiles"].as_u64().unwrap_or(10) as usize,
        )
    });
    let alloc = SimAlloc {
        id: alloc_id.clone(),
        eval_id: eval_id.to_owned(),
        namespace: ns.to_owned(),
        job_id: id.to_owned(),
        group: group["Name"].as_str().unwrap_or("group").to_owned(),
        task: task_name,
        client_status: "pending".to_owned(),
        desired_status: "run".to_owned(),
        client_description: "No tasks have started".to_owned(),
        task_state: "pending".to_owned(),
        failed: false,
        restarts: 0,
        started_at: None,
        finished_at: None,
        events: vec![event("Received", "Task received by client", Value::Null)],
        create_index: index,
        modify_index: index,
        create_time: now_nanos(),
        cpu,
        memory,
        node,
        logs: [
            Arc::new(Log::new(file_bytes, max_files)),
            Arc::new(Log::new(file_bytes, max_files)),
        ],
        stop: Arc::new(Notify::new()),
        stopping: false,
        lost: false,
        collected: false,
        evicted: None,
    };
    state.allocs.insert(alloc_id.clone(), alloc);
    drop(state);
    let sim = sim.clone();
    tokio::spawn(async move { run_alloc(sim, alloc_id, job_value).await });
}
