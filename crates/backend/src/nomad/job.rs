//! The job a try is: one group, one docker-driver task, Nomad's restarts and reschedules off.

/// `text` as a literal in a docker task's `config`: Nomad's client evaluates every string
/// there as an HCL2 template (`client/allocrunner/taskrunner/task_runner.go` through
/// `helper/pluginutils/hclutils.ParseHclInterface`), where `${...}` interpolates (an unknown
/// name fails the task) and `%{...}` is a directive. Doubled, `$${` and `%%{` are the literal
/// `${` and `%{`.
pub(crate) fn hcl_literal(text: &str) -> String {
    text.replace("${", "$${").replace("%{", "%%{")
}

#[allow(unused_imports)]
use super::*;

impl NomadBackend {
    /// The job a try is: one group, one docker task, Nomad's restarts and reschedules off.
    pub(crate) fn job_body(
        &self,
        spec: &LaunchSpec,
        image: &ImageRef,
        artifacts: &[Value],
    ) -> Value {
        let id = job_id(&spec.job_id, &spec.task_id, &spec.run_id, spec.try_number);
        let meta = BTreeMap::from([
            (LABEL_JOB.to_owned(), spec.job_id.clone()),
            (LABEL_RUN.to_owned(), spec.run_id.clone()),
            (LABEL_TASK.to_owned(), spec.task_id.clone()),
            (LABEL_TRY.to_owned(), spec.try_number.to_string()),
        ]);
        let mut labels: BTreeMap<String, String> = spec.labels.clone();
        labels.extend(meta.clone());
        // A label's name is not a template; its value is.
        let labels: BTreeMap<String, String> = labels
            .into_iter()
            .map(|(name, value)| (name, hcl_literal(&value)))
            .collect();
        let mut env = spec.env.clone();
        let args: Vec<String> = spec.args.iter().map(|arg| hcl_literal(arg)).collect();
        let mut config = json!({
            "image": hcl_literal(&image.to_string()),
            "args": args,
            "labels": [labels],
            "force_pull": spec.pull_policy == PullPolicy::Always,
        });
        if let Some(command) = &spec.command {
            let command: Vec<String> = command.iter().map(|part| hcl_literal(part)).collect();
            config["entrypoint"] = json!(command);
        }
        let mut mounts = Vec::new();
        // The task directory's `local/workspace`: the client fetches the inputs into it and
        // serves what the try left through its file system API. One mechanism whatever the
        // store: no volume is shared between tries.
        config["volumes"] = json!([format!("{}:{WORKSPACE_DIR}", files::TASK_WORKSPACE)]);
        env.insert("STEVEDORE_WORKSPACE".to_owned(), WORKSPACE_DIR.to_owned());
        let isolation = &spec.isolation;
        if let Some(limit) = isolation.pids_limit {
            config["pids_limit"] = json!(limit);
        }
        if isolation.read_only_rootfs {
            // The task's `local/` and `alloc/` folders (the state file's) stay writable: Nomad
            // bind-mounts them. /tmp becomes a small tmpfs, as with the docker backend.
            config["readonly_rootfs"] = json!(true);
            mounts.push(json!({
                "type": "tmpfs",
                "target": "/tmp",
                "readonly": false,
                "tmpfs_options": {"size": 64 * 1024 * 1024},
            }));
        }
        if !mounts.is_empty() {
            config["mount"] = Value::Array(mounts);
        }
        if let Some(auth) = &spec.registry_auth {
            let server = auth.server.clone().or_else(|| image.registry.clone());
            config["auth"] = json!({
                "username": hcl_literal(&auth.username),
                "password": hcl_literal(&auth.password),
                "server_address": hcl_literal(&server.unwrap_or_default()),
            });
        }
        let mut templates = Vec::new();
        if let Some(state) = &spec.state {
            env.insert(
                "STEVEDORE_STATE_FILE".to_owned(),
                NOMAD_STATE_FILE.to_owned(),
            );
            templates.push(json!({
                "EmbeddedTmpl": state,
                "DestPath": NOMAD_STATE_FILE.trim_start_matches('/'),
                "LeftDelim": LEFT_DELIM,
                "RightDelim": RIGHT_DELIM,
                "ChangeMode": "noop",
                "Perms": "0644",
            }));
        }
        let cpu = spec
            .resources
            .cpu
            .map(|cpu| ((cpu * self.config.mhz_per_cpu as f64).ceil() as u64).max(1))
            .unwrap_or(DEFAULT_CPU_MHZ);
        let memory = spec
            .resources
            .memory_bytes
            .map(|bytes| bytes.div_ceil(1024 * 1024).max(1))
            .unwrap_or(DEFAULT_MEMORY_MB);
        let mut job = json!({
            "ID": id,
            "Name": id,
            "Type": "batch",
            "Datacenters": self.config.datacenters,
            "Meta": meta,
            "TaskGroups": [{
                "Name": GROUP,
                "Count": 1,
                "RestartPolicy": {
                    "Attempts": 0,
                    "Mode": "fail",
                    "Interval": 86_400_000_000_000u64,
                    "Delay": 0,
                },
                "ReschedulePolicy": {"Attempts": 0, "Unlimited": false},
                "Tasks": [{
                    "Name": TASK,
                    "Driver": "docker",
                    "Config": config,
                    "Env": env,
                    "Meta": meta,
                    "Resources": {"CPU": cpu, "MemoryMB": memory},
                    "User": isolation.user.clone().unwrap_or_default(),
                    // Like the docker backend: a kill is immediate.
                    "KillSignal": "SIGKILL",
                    "KillTimeout": 5_000_000_000u64,
                    "Templates": templates,
                    "Artifacts": artifacts,
                }],
            }],
        });
        if let Some(namespace) = &self.config.namespace {
            job["Namespace"] = json!(namespace);
        }
        if let Some(region) = &self.config.region {
            job["Region"] = json!(region);
        }
        if !spec.placement.is_empty() {
            job["Constraints"] = Value::Array(
                spec.placement
                    .iter()
                    .map(|(key, value)| {
                        json!({"LTarget": format!("${{meta.{key}}}"), "RTarget": value, "Operand": "="})
                    })
                    .collect(),
            );
        }
        job
    }
}
