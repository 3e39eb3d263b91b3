//! `POST /api/v1/jobs/{job_id}/events`: a webhook. A job with `events:` in its file takes
//! JSON events, authenticated by the job's webhook token (`stevedore jobs webhook-token
//! JOB`) or by an HMAC-SHA256 signature of the body under its `secret_connection`'s
//! `WEBHOOK_SECRET`; they are stored before the answer (202), and the scheduler gives them
//! to runs in batches (docs/webhooks.md).

#[allow(unused_imports)]
use super::*;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What was stored.
#[derive(Serialize, ToSchema)]
pub(crate) struct Accepted {
    job_id: String,
    /// How many events were stored (one per JSON line, or one for a JSON body).
    accepted: u64,
}

/// Posts events to a job (a webhook)
///
/// Not a user token: `Authorization: Bearer <the job's webhook token>`, or
/// `X-Stevedore-Signature: sha256=<hex HMAC-SHA256 of the body>` under the `WEBHOOK_SECRET`
/// of the job's `events.secret_connection`. The body is one JSON event, or JSON lines
/// (`Content-Type: application/x-ndjson`), at most the job's `events.max_body` bytes.
#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/events", operation_id = "postEvents", params(JobPath),
    request_body(content = String, description = "one JSON event, or JSON lines", content_type = "application/json"),
    responses(
        (status = 202, description = "stored; a run will get them", body = Accepted),
        (status = 400, description = "a body that is not JSON (or JSON lines), naming the line", body = ErrorBody),
        (status = 401, description = "no valid webhook token or signature", body = ErrorBody),
        (status = 404, description = "no such job, or it takes no events", body = ErrorBody),
        (status = 409, description = "the job is paused: nothing is stored", body = ErrorBody),
        (status = 413, description = "a body over the job's max_body: nothing is stored", body = ErrorBody),
    ),
    security(())
)]
pub(super) async fn post_events(
    State(state): State<AppState>,
    Path(JobPath { job_id }): Path<JobPath>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let takes_none = || {
        ApiError::not_found(format!(
            "job `{job_id}` takes no events (no `events:` in its file)"
        ))
    };
    let (job, _, _) = actions::load_job(&state.jobs_dir, &job_id).map_err(|_| takes_none())?;
    let Some(events) = &job.events else {
        return Err(takes_none());
    };
    // A token is checked before the body is read; a signature needs the body.
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token_ok = match bearer {
        Some(token) => state
            .store
            .webhook_token(&job.id)
            .await?
            .is_some_and(|hash| hash == crate::auth::hash_token(token)),
        None => false,
    };
    let signature = headers
        .get("x-stevedore-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !token_ok && signature.is_none() {
        return Err(unauthorized());
    }
    let body = axum::body::to_bytes(body, events.max_body as usize)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the body is over job `{}`'s events.max_body of {} bytes: nothing was stored",
                    job.id, events.max_body
                ),
            )
        })?;
    if !token_ok {
        let secret = match &events.secret_connection {
            Some(name) => webhook_secret(&state, name).await,
            None => None,
        };
        let valid = match (
            secret,
            signature.as_deref().and_then(|s| s.strip_prefix("sha256=")),
        ) {
            (Some(secret), Some(hex_mac)) => verify(&secret, &body, hex_mac),
            _ => false,
        };
        if !valid {
            return Err(unauthorized());
        }
    }
    if state
        .store
        .list_jobs()
        .await?
        .iter()
        .any(|record| record.job_id == job.id && record.paused)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("job `{}` is paused: nothing was stored", job.id),
        ));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let parsed = parse_events(
        &body,
        content_type.contains("ndjson") || content_type.contains("jsonl"),
    )
    .map_err(ApiError::bad_request)?;
    let accepted = state
        .store
        .accept_events(&job.id, &parsed, chrono::Utc::now())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            job_id: job.id.clone(),
            accepted,
        }),
    ))
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a webhook needs the job's webhook token (Authorization: Bearer ...) or a valid X-Stevedore-Signature".to_owned(),
    )
}

/// The `WEBHOOK_SECRET` of connection `name`, when it can be opened.
async fn webhook_secret(state: &AppState, name: &str) -> Option<String> {
    let key = state.secret_key.as_ref()?;
    let values = stevedore_ops::connections::open(state.store.as_ref(), Some(key), name)
        .await
        .ok()?;
    values.get("WEBHOOK_SECRET").cloned()
}

/// Whether `hex_mac` is the HMAC-SHA256 of `body` under `secret` (compared in constant time).
fn verify(secret: &str, body: &[u8], hex_mac: &str) -> bool {
    let Ok(expected) = hex::decode(hex_mac) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The events of a body: one JSON value, or one per non-empty line; each kept as compact
/// JSON text.
fn parse_events(body: &[u8], lines: bool) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let parse = |line: &str| serde_json::from_str::<serde_json::Value>(line);
    let events: Vec<String> = if lines {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(number, line)| {
                parse(line)
                    .map(|value| value.to_string())
                    .map_err(|e| format!("line {}: not JSON: {e}", number + 1))
            })
            .collect::<Result<_, _>>()?
    } else {
        vec![parse(text)
            .map_err(|e| format!("the body is not JSON: {e}"))?
            .to_string()]
    };
    if events.is_empty() {
        return Err("the body holds no event".to_owned());
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_one_event_or_json_lines() {
        assert_eq!(parse_events(br#"{"a": 1}"#, false).unwrap(), [r#"{"a":1}"#]);
        assert_eq!(
            parse_events(b"{\"a\":1}\n\n{\"b\":2}\n", true).unwrap(),
            [r#"{"a":1}"#, r#"{"b":2}"#]
        );
        assert!(parse_events(b"{\"a\":1}\nnope\n", true)
            .unwrap_err()
            .starts_with("line 2: not JSON"));
        assert!(parse_events(b"", true).unwrap_err().contains("no event"));
    }

    #[test]
    fn a_signature_is_checked_against_the_body() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"{}");
        let good = hex::encode(mac.finalize().into_bytes());
        assert!(verify("s3cret", b"{}", &good));
        assert!(!verify("s3cret", b"{ }", &good));
        assert!(!verify("other", b"{}", &good));
        assert!(!verify("s3cret", b"{}", "zz"));
    }
}
