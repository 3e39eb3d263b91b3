//! OpenTelemetry traces of runs and tries, exported over OTLP when an endpoint is set
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, with the standard
//! variables for the protocol, headers and service name; docs/tracing.md).
//!
//! A run is one trace: its trace id is the run id (a UUID is 16 bytes, as a trace id), so a
//! run's spans meet whichever scheduler made them, across restarts and takeovers. Spans are
//! made when what they measure has ended, with the times the store holds:
//! - `run` (the root): from the run's start to its end, made by the scheduler that records
//!   the end;
//! - `try` (a child of the run's span, its id derived from the try id): from the try's start
//!   to its end;
//!   - `dispatch`: from the try's start to the backend being asked to run it (staging its
//!     inputs, preparing the launch);
//!   - `backend start`: from that request to the backend saying the container (or
//!     allocation, or process) runs (the pull included).
//!
//! The batch exporter runs on a thread of its own: a collector that does not answer never
//! slows scheduling down, and spans it could not take are dropped (counted by the SDK).

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use sha2::{Digest, Sha256};

/// Where and how spans are sent: from the standard OpenTelemetry variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracesConfig {
    /// The traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// `http/protobuf` (the default) or `http/json`.
    pub json: bool,
    /// Headers sent with each export (`OTEL_EXPORTER_OTLP_HEADERS`: `k=v,k2=v2`).
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    pub timeout: Duration,
}

impl TracesConfig {
    /// The configuration the variables `get` reads give: `None` when no endpoint is set
    /// (no traces), an error naming the variable that is wrong.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<TracesConfig>, String> {
        let set = |name: &str| get(name).filter(|value| !value.trim().is_empty());
        let endpoint = match (
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            set("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(traces), _) => traces.trim().to_owned(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim().trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT `{endpoint}`: must be an http:// or https:// URL"
            ));
        }
        let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".to_owned());
        let json = match protocol.trim() {
            "http/protobuf" => false,
            "http/json" => true,
            other => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL `{other}`: Stevedore exports over http/protobuf (the default) or http/json, not gRPC; a collector's OTLP receiver takes both on port 4318"
                ))
            }
        };
        let mut headers = Vec::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            for pair in set(name)
                .unwrap_or_default()
                .split(',')
                .filter(|p| !p.trim().is_empty())
            {
                let (key, value) = pair.split_once('=').ok_or_else(|| {
                    format!(
                        "{name}: `{}` is not key=value",
                        pair.split('=').next().unwrap_or("")
                    )
                })?;
                headers.push((key.trim().to_owned(), percent_decode(value.trim())));
            }
        }
        let timeout = match set("OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some(ms) => Duration::from_millis(ms.trim().parse().map_err(|_| {
                format!("OTEL_EXPORTER_OTLP_TIMEOUT `{ms}`: a number of milliseconds")
            })?),
            None => Duration::from_secs(10),
        };
        Ok(Some(TracesConfig {
            endpoint,
            json,
            headers,
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| "stevedore".to_owned()),
            timeout,
        }))
    }
}

/// `%XX` sequences decoded (header values in `OTEL_EXPORTER_OTLP_HEADERS` are URL-encoded).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[index + 1..index + 3], 16) {
                out.push(byte);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The exporter of one scheduler.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// What a try's span says.
pub struct TrySpan<'a> {
    pub job_id: &'a str,
    pub run_id: &'a str,
    pub task_id: &'a str,
    pub try_id: i64,
    pub try_number: u32,
    pub backend: &'a str,
    pub image: &'a str,
    pub state: &'a str,
    pub exit_code: Option<i64>,
    pub reason: Option<&'a str>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// When the backend was asked to run the try, and when it said it runs: the
    /// `dispatch` and `backend start` spans (none when the try never got that far here).
    pub launch_requested_at: Option<DateTime<Utc>>,
    pub launched_at: Option<DateTime<Utc>>,
}

/// What a run's span says.
pub struct RunSpan<'a> {
    pub job_id: &'a str,
    pub run_id: &'a str,
    pub trigger: &'a str,
    pub logical_date: DateTime<Utc>,
    pub state: &'a str,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
}

/// A run's trace id: its run id's 16 bytes (a run id is a UUID), else a digest of it.
pub fn trace_id(run_id: &str) -> TraceId {
    let hex: String = run_id.chars().filter(|c| *c != '-').collect();
    match (hex.len() == 32)
        .then(|| TraceId::from_hex(&hex).ok())
        .flatten()
    {
        Some(id) if id != TraceId::INVALID => id,
        _ => {
            let digest = Sha256::digest(format!("stevedore run {run_id}").as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            TraceId::from_bytes(bytes)
        }
    }
}

/// A span id derived from what the span is of (`run:ID`, `try:ID`, ...).
pub fn span_id(of: &str) -> SpanId {
    let digest = Sha256::digest(format!("stevedore span {of}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    bytes[0] |= 1; // never the invalid all-zero id
    SpanId::from_bytes(bytes)
}

fn time(at: DateTime<Utc>) -> SystemTime {
    SystemTime::from(at)
}

fn parent(run_id: &str, span: SpanId) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        trace_id(run_id),
        span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

impl Traces {
    /// Starts the exporter (a thread of its own, batching spans).
    pub fn start(config: &TracesConfig) -> Result<Traces, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.clone())
            .with_protocol(if config.json {
                Protocol::HttpJson
            } else {
                Protocol::HttpBinary
            })
            .with_timeout(config.timeout)
            .with_headers(config.headers.iter().cloned().collect())
            .build()
            .map_err(|e| format!("the OTLP exporter for {}: {e}", config.endpoint))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("stevedore");
        Ok(Traces { provider, tracer })
    }

    /// The span of a run that ended.
    pub fn run(&self, run: &RunSpan<'_>) {
        let mut builder = self
            .tracer
            .span_builder(format!("run {}", run.job_id))
            .with_kind(SpanKind::Internal)
            .with_start_time(time(run.started_at))
            .with_attributes(vec![
                KeyValue::new("stevedore.job_id", run.job_id.to_owned()),
                KeyValue::new("stevedore.run_id", run.run_id.to_owned()),
                KeyValue::new("stevedore.trigger", run.trigger.to_owned()),
                KeyValue::new("stevedore.logical_date", run.logical_date.to_rfc3339()),
                KeyValue::new("stevedore.state", run.state.to_owned()),
            ]);
        builder.trace_id = Some(trace_id(run.run_id));
        builder.span_id = Some(span_id(&format!("run:{}", run.run_id)));
        if run.state != "success" {
            builder.status = Status::error(format!("run {}", run.state));
        }
        let mut span = builder.start_with_context(&self.tracer, &Context::new());
        opentelemetry::trace::Span::end_with_timestamp(&mut span, time(run.ended_at));
    }

    /// The span of a try that ended, a child of its run's, with its phases as children.
    pub fn attempt(&self, attempt: &TrySpan<'_>) {
        let run_span = span_id(&format!("run:{}", attempt.run_id));
        let try_span = span_id(&format!("try:{}", attempt.try_id));
        let mut attributes = vec![
            KeyValue::new("stevedore.job_id", attempt.job_id.to_owned()),
            KeyValue::new("stevedore.run_id", attempt.run_id.to_owned()),
            KeyValue::new("stevedore.task_id", attempt.task_id.to_owned()),
            KeyValue::new("stevedore.try_number", i64::from(attempt.try_number)),
            KeyValue::new("stevedore.backend", attempt.backend.to_owned()),
            KeyValue::new("stevedore.image", attempt.image.to_owned()),
            KeyValue::new("stevedore.state", attempt.state.to_owned()),
        ];
        if let Some(code) = attempt.exit_code {
            attributes.push(KeyValue::new("stevedore.exit_code", code));
        }
        let mut builder = self
            .tracer
            .span_builder(format!("try {} #{}", attempt.task_id, attempt.try_number))
            .with_start_time(time(attempt.started_at))
            .with_attributes(attributes);
        builder.span_id = Some(try_span);
        if attempt.state != "success" && attempt.state != "skipped" {
            builder.status = Status::error(attempt.reason.unwrap_or(attempt.state).to_owned());
        }
        let mut span = builder.start_with_context(&self.tracer, &parent(attempt.run_id, run_span));
        opentelemetry::trace::Span::end_with_timestamp(&mut span, time(attempt.ended_at));
        let phases = [
            (
                "dispatch",
                Some(attempt.started_at),
                attempt.launch_requested_at,
            ),
            (
                "backend start",
                attempt.launch_requested_at,
                attempt.launched_at,
            ),
        ];
        for (name, start, end) in phases {
            let (Some(start), Some(end)) = (start, end) else {
                continue;
            };
            let mut builder = self
                .tracer
                .span_builder(name)
                .with_start_time(time(start))
                .with_attributes(vec![KeyValue::new(
                    "stevedore.backend",
                    attempt.backend.to_owned(),
                )]);
            builder.span_id = Some(span_id(&format!("{name}:{}", attempt.try_id)));
            let mut span =
                builder.start_with_context(&self.tracer, &parent(attempt.run_id, try_span));
            opentelemetry::trace::Span::end_with_timestamp(&mut span, time(end.max(start)));
        }
    }

    /// Sends what is batched (at a clean stop).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_variables_configure_the_exporter() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        assert_eq!(TracesConfig::from_env(env(&[])), Ok(None));
        let config = TracesConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=s%20cret,x-tenant=data",
            ),
            ("OTEL_SERVICE_NAME", "stevedore-prod"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.endpoint, "http://collector:4318/v1/traces");
        assert!(!config.json, "http/protobuf by default");
        assert_eq!(
            config.headers,
            vec![
                ("api-key".to_owned(), "s cret".to_owned()),
                ("x-tenant".to_owned(), "data".to_owned())
            ]
        );
        assert_eq!(config.service_name, "stevedore-prod");
        let traces_only = TracesConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://traces.example/otlp",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(traces_only.endpoint, "https://traces.example/otlp");
        assert!(traces_only.json);
        let grpc = TracesConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap_err();
        assert!(grpc.contains("grpc") && grpc.contains("4318"), "{grpc}");
    }

    #[test]
    fn a_run_s_trace_id_is_its_uuid_and_span_ids_are_stable() {
        assert_eq!(
            trace_id("01a24e11-cb7b-72b6-89ed-6db54d7ff482").to_string(),
            "01a24e11cb7b72b689ed6db54d7ff482"
        );
        assert_ne!(trace_id("not-a-uuid"), TraceId::INVALID);
        assert_eq!(span_id("try:7"), span_id("try:7"));
        assert_ne!(span_id("try:7"), span_id("try:8"));
    }
}
