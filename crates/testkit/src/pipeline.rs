//! What the SaaS API to warehouse pipeline needs for one test: the demo API, a PostgreSQL
//! warehouse and a registry holding the integration images.

#[allow(unused_imports)]
use super::*;

/// What the SaaS API → warehouse pipeline (`jobs/charges_to_warehouse.yaml`) needs, started
/// on this machine for one test: the demo API, a PostgreSQL warehouse, and a registry that
/// holds the integration images.
pub struct PipelineServices {
    pub api: DemoApi,
    pub warehouse: Postgres,
    pub registry: Registry,
    pushed: std::sync::Mutex<Vec<String>>,
}

impl PipelineServices {
    pub fn start(records: usize) -> PipelineServices {
        PipelineServices {
            api: DemoApi::start(records),
            warehouse: Postgres::start(),
            registry: Registry::start(),
            pushed: Default::default(),
        }
    }

    /// `text` (a job file) with the quickstart registry's address replaced by this test's
    /// registry, after pushing every image it names from there to it (from the local image
    /// of the same name, as `stevedore images build --push` would).
    pub async fn job(&self, text: &str) -> String {
        let prefix = format!("{QUICKSTART_REGISTRY}/");
        let docker = DockerBackend::from_env().unwrap().client().unwrap();
        for word in text.split_whitespace() {
            let Some(local) = word.strip_prefix(&prefix) else {
                continue;
            };
            let (name, tag) = local.rsplit_once(':').expect("a tagged image");
            let repository = format!("{}/{name}", self.registry.address);
            push_image(&docker, local, &repository, tag).await;
            self.pushed
                .lock()
                .unwrap()
                .push(format!("{repository}:{tag}"));
        }
        text.replace(&prefix, &format!("{}/", self.registry.address))
    }

    /// A scheduler with the `demo_api` and `warehouse` connections pointing at these
    /// services, given the job files only once those exist (they are read at the next
    /// sync), so no try can start without them.
    pub async fn harness(&self, jobs: &[(&str, &str)]) -> Harness {
        require_images().await;
        let backend: Arc<dyn Backend> = Arc::new(DockerBackend::from_env().expect("docker client"));
        self.harness_on(jobs, vec![backend], None).await
    }

    /// [`PipelineServices::harness`] on these backends and artifact store.
    pub async fn harness_on(
        &self,
        jobs: &[(&str, &str)],
        backends: Vec<Arc<dyn Backend>>,
        artifacts: Option<stevedore_artifacts::StoreSettings>,
    ) -> Harness {
        let harness = Harness::start_with_store(&[], backends, artifacts).await;
        let api_url = self.api.container_url();
        let api = [
            ("API_BASE_URL", api_url.as_str()),
            ("API_TOKEN", "demo-token"),
        ];
        harness.add_connection("demo_api", &api).await;
        let port = self.warehouse.port.to_string();
        let host = self.warehouse.container_host();
        let values = [
            ("PGHOST", host.as_str()),
            ("PGPORT", port.as_str()),
            ("PGUSER", "postgres"),
            ("PGDATABASE", "postgres"),
        ];
        harness.add_connection("warehouse", &values).await;
        for (file, text) in jobs {
            std::fs::write(harness.jobs_dir().join(file), text).unwrap();
        }
        harness
    }
}

impl Drop for PipelineServices {
    fn drop(&mut self) {
        for image in self.pushed.lock().unwrap().iter() {
            let _ = std::process::Command::new("docker")
                .args(["image", "rm", image])
                .output();
        }
    }
}
