//! Preparing a try: the task's templates rendered, its connections opened into its
//! environment (and a masker of their values), its registry credentials.

#[allow(unused_imports)]
use super::*;

impl TryRunner {
    /// The environment variables of the task's connections, and a masker of their values
    /// (and of the registry password) for everything the try prints.
    pub(super) async fn connection_env(
        &self,
        task: &Task,
    ) -> Result<(BTreeMap<String, String>, Masker), String> {
        let mut env = BTreeMap::new();
        let mut secrets = Vec::new();
        for name in &task.connections {
            for (variable, value) in self.open_connection(name).await? {
                secrets.push(value.clone());
                env.insert(variable, value);
            }
        }
        if let Some(auth) = self.registry_auth(task).await? {
            // Never in the container's environment, but masked should anything print it.
            secrets.push(auth.password);
        }
        Ok((env, Masker::new(secrets)))
    }

    /// A connection's values, unsealed.
    pub(super) async fn open_connection(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, String>, String> {
        connections::open(self.store.as_ref(), self.secret_key.as_ref(), name).await
    }

    /// The registry credentials of the task's `registry_connection`.
    pub(super) async fn registry_auth(&self, task: &Task) -> Result<Option<RegistryAuth>, String> {
        let Some(name) = &task.registry_connection else {
            return Ok(None);
        };
        let values = self.open_connection(name).await?;
        let credentials = connections::registry_credentials(name, values).map_err(|_| {
            format!("registry_connection `{name}` needs the keys REGISTRY_USERNAME and REGISTRY_PASSWORD")
        })?;
        Ok(Some(RegistryAuth {
            username: credentials.username,
            password: credentials.password,
            server: credentials.server,
        }))
    }
}

/// The task's image, args and env with templates rendered for one try.
pub(super) struct RenderedTask {
    pub(super) image: String,
    pub(super) args: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
}

/// Renders the task's templates for this try; `item` is a mapped instance's item.
pub(super) fn render_task(
    task: &Task,
    allowed_images: &[String],
    context: &TryContext,
    outputs: &HashMap<(String, String), Value>,
    item: Option<&Value>,
) -> Result<RenderedTask, String> {
    let lookup = |variable: &Variable| -> Option<String> {
        match variable {
            Variable::Context(name) => Some(match name.as_str() {
                "job_id" => context.job_id.clone(),
                "run_id" => context.run_id.clone(),
                "task_id" => context.task_id.clone(),
                "try_number" => context.try_number.to_string(),
                "logical_date" => rfc3339(context.logical_date),
                "data_interval_start" => rfc3339(context.data_interval.start),
                "data_interval_end" => rfc3339(context.data_interval.end),
                "event_count" => context
                    .params
                    .get("event_count")
                    .map_or_else(|| "0".to_owned(), |count| count.to_string()),
                "triggering_asset_events" => context
                    .params
                    .get("triggering_asset_events")
                    .map_or_else(|| "[]".to_owned(), |events| events.to_string()),
                _ => return None,
            }),
            Variable::Param(name) => context.params.get(name).map(output_as_text),
            Variable::Output { task, key } => outputs
                .get(&(task.clone(), key.clone()))
                .map(output_as_text),
            Variable::Item(path) => item
                .and_then(|item| mapping::item_field(item, path))
                .map(output_as_text),
            Variable::MapIndex => context.map_index.map(|index| index.to_string()),
        }
    };
    let image = template::render(&task.image, &lookup).map_err(|e| format!("image: {e}"))?;
    if image != task.image && !allowed_images.is_empty() {
        // A param or an output chose the image (the job file allows that only with an
        // allow-list): it must be one of the listed names.
        let name = ImageRef::parse(&image)
            .map(|parsed| parsed.name())
            .map_err(|e| format!("image: {e}"))?;
        if !allowed_images.contains(&name) {
            return Err(format!(
                "image: `{image}` is not among the job's allowed_images ({})",
                allowed_images.join(", ")
            ));
        }
    }
    let args = task
        .args
        .iter()
        .map(|arg| template::render(arg, &lookup))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("args: {e}"))?;
    let env = task
        .env
        .iter()
        .map(|(key, value)| Ok((key.clone(), template::render(value, &lookup)?)))
        .collect::<Result<BTreeMap<_, _>, String>>()
        .map_err(|e| format!("env: {e}"))?;
    Ok(RenderedTask { image, args, env })
}
