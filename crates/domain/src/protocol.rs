//! The entrypoint contract, version 1: how a try's container is called and what its stdout
//! lines mean. `docs/entrypoint-contract.md` is the same contract for integration authors.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::mask::Masker;
use crate::schedule::DataInterval;

/// The contract version, passed as `STEVEDORE_CONTRACT_VERSION`.
pub const CONTRACT_VERSION: &str = "1";

/// Everything a try is told about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct TryContext {
    pub job_id: String,
    pub task_id: String,
    pub run_id: String,
    /// Counts from 1.
    pub try_number: u32,
    pub logical_date: DateTime<Utc>,
    pub data_interval: DataInterval,
    /// The run's params (job defaults merged with the trigger's overrides), a JSON object.
    pub params: Value,
    /// The index of a mapped task instance (`STEVEDORE_MAP_INDEX`); `task_id` is then the
    /// task's own id.
    pub map_index: Option<u32>,
}

/// RFC 3339 in UTC with a `Z`, as every timestamp of the contract is written.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl TryContext {
    /// `run --job J --task T --run R --try N --logical-date D --interval-start S
    /// --interval-end E --params JSON -- ARGS...`: the command after the entrypoint.
    pub fn entrypoint_args(&self, args: &[String]) -> Vec<String> {
        let mut argv = vec![
            "run".to_owned(),
            "--job".to_owned(),
            self.job_id.clone(),
            "--task".to_owned(),
            self.task_id.clone(),
            "--run".to_owned(),
            self.run_id.clone(),
            "--try".to_owned(),
            self.try_number.to_string(),
            "--logical-date".to_owned(),
            rfc3339(self.logical_date),
            "--interval-start".to_owned(),
            rfc3339(self.data_interval.start),
            "--interval-end".to_owned(),
            rfc3339(self.data_interval.end),
            "--params".to_owned(),
            self.params.to_string(),
            "--".to_owned(),
        ];
        argv.extend(args.iter().cloned());
        argv
    }

    /// The `STEVEDORE_*` environment of the try. `state_file` is the path, as the container
    /// sees it, of the file holding the task's last committed state.
    pub fn environment(&self, state_file: Option<&str>) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "STEVEDORE_CONTRACT_VERSION".to_owned(),
                CONTRACT_VERSION.to_owned(),
            ),
            ("STEVEDORE_JOB_ID".to_owned(), self.job_id.clone()),
            ("STEVEDORE_TASK_ID".to_owned(), self.task_id.clone()),
            ("STEVEDORE_RUN_ID".to_owned(), self.run_id.clone()),
            (
                "STEVEDORE_TRY_NUMBER".to_owned(),
                self.try_number.to_string(),
            ),
            (
                "STEVEDORE_LOGICAL_DATE".to_owned(),
                rfc3339(self.logical_date),
            ),
            (
                "STEVEDORE_DATA_INTERVAL_START".to_owned(),
                rfc3339(self.data_interval.start),
            ),
            (
                "STEVEDORE_DATA_INTERVAL_END".to_owned(),
                rfc3339(self.data_interval.end),
            ),
            ("STEVEDORE_PARAMS".to_owned(), self.params.to_string()),
        ];
        if let Some(path) = state_file {
            env.push(("STEVEDORE_STATE_FILE".to_owned(), path.to_owned()));
        }
        if let Some(index) = self.map_index {
            env.push(("STEVEDORE_MAP_INDEX".to_owned(), index.to_string()));
        }
        env
    }
}

/// What one stdout line says.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// `{"type":"log","level":"info","message":"..."}`
    Log { level: String, message: String },
    /// `{"type":"output","key":"rows_file","value":...}`: for downstream templates.
    Output { key: String, value: Value },
    /// `{"type":"state","value":{...}}`: committed only if the try succeeds.
    State { value: Value },
    /// `{"type":"progress","done":120,"total":1000}`
    Progress { done: f64, total: Option<f64> },
    /// `{"type":"metric","name":"records","value":1000}`
    Metric { name: String, value: f64 },
    /// `{"type":"error","message":"...","retryable":false}`: why the try is about to fail
    /// (its failure reason if it then exits non-zero); `retryable` defaults to `true`.
    Error { message: String, retryable: bool },
}

/// The limits a try's output is held to, so that no single try can grow the scheduler's
/// memory or the store without bound (docs/security.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TryLimits {
    /// The most of one log line that is stored (`max_line_bytes`); a longer line is stored
    /// cut, with a marker saying how much was left out.
    pub max_line_bytes: usize,
    /// The largest output or state value, as JSON (`max_output_bytes`); a larger one fails
    /// the try.
    pub max_output_bytes: usize,
    /// The most outputs one try may publish (`max_outputs`).
    pub max_outputs: usize,
}

impl Default for TryLimits {
    fn default() -> Self {
        TryLimits {
            max_line_bytes: 64 * 1024,
            max_output_bytes: 1024 * 1024,
            max_outputs: 1000,
        }
    }
}

impl TryLimits {
    /// The most of one line a backend must keep: a whole log line, or a protocol message
    /// carrying the largest output (with room for its JSON around it). Always 64 KiB more
    /// than a stored line, so a line cut by the backend is cut again where it is stored,
    /// never in the middle of a value the masker did not see whole.
    pub fn line_buffer_bytes(&self) -> usize {
        self.max_line_bytes.max(self.max_output_bytes) + 64 * 1024
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), with a marker that says
/// how many bytes were left out (`dropped` of them before `text` was given). Unchanged when
/// it fits and nothing was dropped.
pub fn cut_line(text: String, max: usize, dropped: u64) -> String {
    if text.len() <= max && dropped == 0 {
        return text;
    }
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let left_out = dropped + (text.len() - end) as u64;
    let mut cut = text;
    cut.truncate(end);
    cut.push_str(&format!(
        " [... {left_out} more bytes not kept: the line is over max_line_bytes]"
    ));
    cut
}

/// One line of a try's output as Stevedore keeps it: masked, cut, and what it says.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadLine {
    /// A `{"type":"log"}` message: `text` is `level: message`.
    pub is_log: bool,
    /// What to store for the line: masked, then cut to `max_line_bytes`.
    pub text: String,
    /// What a protocol message other than `log` says, its values masked; `None` for a plain
    /// line, a `log` message, and a message that broke the limits.
    pub message: Option<Message>,
    /// Why the line breaks the protocol's limits (an output or state over
    /// `max_output_bytes`, a message cut short), when it does: the try fails for it.
    pub problem: Option<String>,
}

/// Reads one line of a try's output (`stdout` or stderr): `text` is what the backend kept
/// of it and `dropped` how many bytes it did not. A stdout line is parsed first (masking
/// first could break the JSON around a value), then every text in it is masked: the raw
/// line as stored, and the decoded message, output and state.
pub fn read_line(
    stdout: bool,
    text: &str,
    dropped: u64,
    masker: &Masker,
    limits: &TryLimits,
) -> ReadLine {
    let mut read = ReadLine {
        is_log: false,
        text: String::new(),
        message: None,
        problem: None,
    };
    if stdout && dropped > 0 && looks_like_message(text) {
        read.problem = Some(format!(
            "a protocol message on stdout is over {} bytes (max_output_bytes with its JSON around it)",
            limits.line_buffer_bytes()
        ));
    }
    let message = (stdout && dropped == 0).then(|| parse_line(text)).flatten();
    let fits = |what: &str, value: &Value| -> Result<(), String> {
        let size = value.to_string().len();
        if size > limits.max_output_bytes {
            return Err(format!(
                "{what} is {size} bytes of JSON, over max_output_bytes ({})",
                limits.max_output_bytes
            ));
        }
        Ok(())
    };
    let mut stored = None;
    match message {
        Some(Message::Log { level, message }) => {
            read.is_log = true;
            stored = Some(masker.mask(&format!("{level}: {message}")));
        }
        Some(Message::Output { key, value }) => {
            let key = masker.mask(&key);
            let value = masker.mask_json(&value);
            match fits(&format!("output `{key}`"), &value) {
                Ok(()) => read.message = Some(Message::Output { key, value }),
                Err(problem) => read.problem = Some(problem),
            }
        }
        Some(Message::State { value }) => {
            let value = masker.mask_json(&value);
            match fits("the state", &value) {
                Ok(()) => read.message = Some(Message::State { value }),
                Err(problem) => read.problem = Some(problem),
            }
        }
        Some(Message::Metric { name, value }) => {
            read.message = Some(Message::Metric {
                name: masker.mask(&name),
                value,
            })
        }
        Some(progress @ Message::Progress { .. }) => read.message = Some(progress),
        Some(Message::Error { message, retryable }) => {
            // Stored as a log line `error: ...` and kept as the try's reason, both masked
            // and the reason cut like a line.
            let message = masker.mask(&message);
            read.is_log = true;
            stored = Some(format!("error: {message}"));
            read.message = Some(Message::Error {
                message: cut_line(message, 2048, 0),
                retryable,
            });
        }
        None => {}
    }
    let masked = stored.unwrap_or_else(|| masker.mask(text));
    read.text = cut_line(masked, limits.max_line_bytes, dropped);
    read
}

/// Whether a line cut short began as an output or state message (its `type` among its
/// first bytes), so that losing its end loses a value the try meant to publish.
fn looks_like_message(text: &str) -> bool {
    let head: String = text
        .trim_start()
        .chars()
        .take(512)
        .filter(|c| !c.is_whitespace())
        .collect();
    head.starts_with('{')
        && (head.contains("\"type\":\"output\"") || head.contains("\"type\":\"state\""))
}

/// Reads a stdout line: `Some` for a protocol message, `None` for a plain log line (any line
/// that is not a JSON object with a known `type` and the fields that type needs).
/// A `progress` message's line as people read it: `progress: 300 of 1200 (25%)`, or
/// `progress: 300` without a total; `None` for any other line.
pub fn progress_text(line: &str) -> Option<String> {
    let Some(Message::Progress { done, total }) = parse_line(line) else {
        return None;
    };
    Some(match total {
        Some(total) if total > 0.0 => format!(
            "progress: {done} of {total} ({:.0}%)",
            (done / total * 100.0).clamp(0.0, 100.0)
        ),
        _ => format!("progress: {done}"),
    })
}

pub fn parse_line(line: &str) -> Option<Message> {
    let trimmed = line.trim_start();
    if !trimmed.starts_with('{') {
        return None;
    }
    let Value::Object(mut object) = serde_json::from_str::<Value>(trimmed).ok()? else {
        return None;
    };
    let kind = object.get("type")?.as_str()?.to_owned();
    let text = |object: &serde_json::Map<String, Value>, field: &str| {
        object.get(field).and_then(Value::as_str).map(str::to_owned)
    };
    match kind.as_str() {
        "log" => Some(Message::Log {
            level: text(&object, "level").unwrap_or_else(|| "info".to_owned()),
            message: text(&object, "message")?,
        }),
        "output" => Some(Message::Output {
            key: text(&object, "key")?,
            value: object.remove("value")?,
        }),
        "state" => Some(Message::State {
            value: object.remove("value")?,
        }),
        "progress" => Some(Message::Progress {
            done: object.get("done")?.as_f64()?,
            total: object.get("total").and_then(Value::as_f64),
        }),
        "metric" => Some(Message::Metric {
            name: text(&object, "name")?,
            value: object.get("value")?.as_f64()?,
        }),
        "error" => Some(Message::Error {
            message: text(&object, "message")?,
            retryable: object
                .get("retryable")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        }),
        _ => None,
    }
}

/// An output value as a template sees it: strings bare, anything else as JSON text.
pub fn output_as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn a_cut_output_or_state_message_is_recognized() {
        assert!(looks_like_message(
            "{\"type\": \"output\", \"key\": \"k\", \"value\": \"xxx"
        ));
        assert!(looks_like_message(
            "  {\"key\":\"k\",\"type\":\"state\",\"value\":{"
        ));
        assert!(!looks_like_message("{\"type\":\"log\",\"message\":\"xxx"));
        assert!(!looks_like_message("plain text"));
    }

    #[test]
    fn lines_are_read_masked_with_their_messages() {
        let masker = Masker::new(["s3cr3t-value"]);
        let limits = TryLimits::default();
        let log = read_line(
            true,
            r#"{"type":"log","level":"warn","message":"got \"s3cr3t-value\""}"#,
            0,
            &masker,
            &limits,
        );
        assert!(log.is_log);
        assert_eq!(log.text, "warn: got \"***\"");
        let output = read_line(
            true,
            r#"{"type":"output","key":"k","value":["s3cr3t-value"]}"#,
            0,
            &masker,
            &limits,
        );
        assert_eq!(
            output.message,
            Some(Message::Output {
                key: "k".into(),
                value: json!(["***"])
            })
        );
        assert!(!output.text.contains("s3cr3t"));
        let error = read_line(
            true,
            r#"{"type":"error","message":"401 for token s3cr3t-value","retryable":false}"#,
            0,
            &masker,
            &limits,
        );
        assert!(error.is_log);
        assert_eq!(error.text, "error: 401 for token ***");
        assert_eq!(
            error.message,
            Some(Message::Error {
                message: "401 for token ***".into(),
                retryable: false
            })
        );
        assert_eq!(
            parse_line(r#"{"type":"error","message":"boom"}"#),
            Some(Message::Error {
                message: "boom".into(),
                retryable: true
            })
        );
        // Only stdout carries messages.
        let stderr = read_line(
            false,
            r#"{"type":"output","key":"k","value":1}"#,
            0,
            &masker,
            &limits,
        );
        assert_eq!(stderr.message, None);
        let small = TryLimits {
            max_output_bytes: 1024,
            ..limits
        };
        let big = format!(r#"{{"type":"state","value":"{}"}}"#, "x".repeat(2000));
        let read = read_line(true, &big, 0, &masker, &small);
        assert_eq!(read.message, None);
        assert!(read
            .problem
            .unwrap()
            .contains("the state is 2002 bytes of JSON"));
    }

    #[test]
    fn long_lines_are_cut_at_a_character_boundary_with_a_marker() {
        assert_eq!(cut_line("short".into(), 10, 0), "short");
        let cut = cut_line("ééééé".into(), 5, 0);
        assert!(cut.starts_with("éé ["), "{cut}");
        assert!(cut.contains("6 more bytes"), "{cut}");
        let cut = cut_line("abc".into(), 10, 1000);
        assert!(cut.starts_with("abc [... 1000 more bytes"), "{cut}");
    }

    fn context() -> TryContext {
        TryContext {
            job_id: "demo".into(),
            task_id: "extract".into(),
            run_id: "r1".into(),
            try_number: 2,
            logical_date: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            data_interval: DataInterval {
                start: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
                end: Utc.with_ymd_and_hms(2024, 1, 2, 0, 0, 0).unwrap(),
            },
            params: json!({"lookback_days": 1}),
            map_index: None,
        }
    }

    #[test]
    fn entrypoint_arguments_follow_the_contract() {
        let argv = context().entrypoint_args(&["--stream".into(), "charges".into()]);
        assert_eq!(
            argv.join(" "),
            "run --job demo --task extract --run r1 --try 2 --logical-date 2024-01-01T00:00:00Z \
             --interval-start 2024-01-01T00:00:00Z --interval-end 2024-01-02T00:00:00Z \
             --params {\"lookback_days\":1} -- --stream charges"
        );
    }

    #[test]
    fn environment_carries_the_same_context() {
        let env = context().environment(Some("/stevedore/state.json"));
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("STEVEDORE_TRY_NUMBER"), Some("2"));
        assert_eq!(
            get("STEVEDORE_DATA_INTERVAL_END"),
            Some("2024-01-02T00:00:00Z")
        );
        assert_eq!(get("STEVEDORE_PARAMS"), Some("{\"lookback_days\":1}"));
        assert_eq!(get("STEVEDORE_STATE_FILE"), Some("/stevedore/state.json"));
    }

    #[test]
    fn parses_protocol_messages() {
        assert_eq!(
            parse_line(r#"{"type":"output","key":"rows","value":12}"#),
            Some(Message::Output {
                key: "rows".into(),
                value: json!(12)
            })
        );
        assert_eq!(
            parse_line(r#"{"type":"state","value":{"cursor":"abc"}}"#),
            Some(Message::State {
                value: json!({"cursor": "abc"})
            })
        );
        assert_eq!(
            parse_line(r#"{"type":"log","level":"warn","message":"slow"}"#),
            Some(Message::Log {
                level: "warn".into(),
                message: "slow".into()
            })
        );
        assert_eq!(
            parse_line(r#"{"type":"progress","done":5,"total":10}"#),
            Some(Message::Progress {
                done: 5.0,
                total: Some(10.0)
            })
        );
        assert_eq!(
            parse_line(r#"{"type":"metric","name":"records","value":3}"#),
            Some(Message::Metric {
                name: "records".into(),
                value: 3.0
            })
        );
    }

    #[test]
    fn anything_else_is_a_plain_line() {
        assert_eq!(parse_line("hello"), None);
        assert_eq!(parse_line(r#"{"level":"info"}"#), None);
        assert_eq!(parse_line(r#"{"type":"output","value":1}"#), None);
        assert_eq!(parse_line(r#"{"type":"unknown"}"#), None);
        assert_eq!(parse_line("{not json"), None);
    }

    #[test]
    fn a_progress_line_reads_as_a_fraction() {
        assert_eq!(
            progress_text(r#"{"done":300,"total":1200,"type":"progress"}"#).as_deref(),
            Some("progress: 300 of 1200 (25%)")
        );
        assert_eq!(
            progress_text(r#"{"type":"progress","done":7}"#).as_deref(),
            Some("progress: 7")
        );
        assert_eq!(
            progress_text(r#"{"type":"metric","name":"x","value":1}"#),
            None
        );
        assert_eq!(progress_text("plain text"), None);
    }
}
