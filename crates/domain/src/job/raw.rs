//! The job file's shape as it is read: every field spanned, so each error names its line.

#[allow(unused_imports)]
use super::*;

/// A YAML scalar read as text: `PAGE_SIZE: 100` and `PAGE_SIZE: "100"` mean the same.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Scalar(pub(super) String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) id: Spanned<String>,
    pub(super) description: Option<String>,
    /// A cron expression or preset, `null`, or `{assets: [...], mode: ...}` / `{after: [...]}`.
    pub(super) schedule: Option<Spanned<Value>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) start_date: Option<Spanned<Scalar>>,
    pub(super) end_date: Option<Spanned<Option<Scalar>>>,
    pub(super) catchup: Option<bool>,
    pub(super) max_active_runs: Option<u32>,
    pub(super) max_active_tasks: Option<u32>,
    pub(super) params: Option<Map<String, Value>>,
    pub(super) defaults: Option<Spanned<RawTask>>,
    pub(super) allowed_images: Option<Spanned<Vec<String>>>,
    pub(super) notify: Option<Vec<Spanned<RawRule>>>,
    pub(super) deadline: Option<Spanned<Scalar>>,
    pub(super) retention: Option<Spanned<Scalar>>,
    pub(super) run_timeout: Option<Spanned<Scalar>>,
    pub(super) repeated_failure_after: Option<Spanned<u32>>,
    pub(super) events: Option<Spanned<RawEvents>>,
    pub(super) tasks: Spanned<Vec<Spanned<RawTask>>>,
}

/// `events: {max_batch: 100, max_wait: 1m, max_body: 1Mi, secret_connection: vendor}`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    pub(super) max_batch: Option<Spanned<u32>>,
    pub(super) max_wait: Option<Spanned<Scalar>>,
    pub(super) max_body: Option<Spanned<Scalar>>,
    pub(super) secret_connection: Option<Spanned<String>>,
}

/// A `notify:` rule as written: `{on: [failure, retry], connection: ops}`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) on: Spanned<Vec<Spanned<String>>>,
    pub(super) connection: Spanned<String>,
}

/// A task entry, or the `defaults` block (which may not carry `id` or `depends_on`).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    pub(super) id: Option<Spanned<String>>,
    pub(super) image: Option<Spanned<String>>,
    pub(super) command: Option<Vec<String>>,
    pub(super) args: Option<Spanned<Vec<Scalar>>>,
    pub(super) env: Option<Spanned<BTreeMap<String, Scalar>>>,
    pub(super) connections: Option<Spanned<Vec<String>>>,
    pub(super) registry_connection: Option<Spanned<String>>,
    pub(super) placement: Option<Spanned<BTreeMap<String, Scalar>>>,
    pub(super) resources: Option<RawResources>,
    pub(super) pool: Option<Spanned<String>>,
    pub(super) pool_slots: Option<u32>,
    pub(super) priority: Option<i32>,
    pub(super) depends_on: Option<Vec<Spanned<String>>>,
    pub(super) trigger_rule: Option<Spanned<String>>,
    pub(super) retries: Option<u32>,
    pub(super) retry_delay: Option<Spanned<Scalar>>,
    pub(super) retry_exponential_backoff: Option<bool>,
    pub(super) max_retry_delay: Option<Spanned<Scalar>>,
    pub(super) timeout: Option<Spanned<Scalar>>,
    pub(super) backend: Option<Spanned<String>>,
    pub(super) pull_policy: Option<Spanned<String>>,
    pub(super) depends_on_past: Option<bool>,
    pub(super) reschedule_interval: Option<Spanned<Scalar>>,
    pub(super) sensor_timeout: Option<Spanned<Scalar>>,
    pub(super) read_only_rootfs: Option<bool>,
    pub(super) user: Option<Spanned<Scalar>>,
    pub(super) max_artifact_size: Option<Spanned<Scalar>>,
    pub(super) notify: Option<Vec<Spanned<RawRule>>>,
    pub(super) for_each: Option<Spanned<Value>>,
    pub(super) produces: Option<Spanned<Vec<String>>>,
    pub(super) max_active: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResources {
    pub(super) cpu: Option<f64>,
    pub(super) memory: Option<Spanned<Scalar>>,
}
