//! The web UI: server-rendered HTML (maud escapes every value), a little hand-written JS
//! for the live log, no build step. A browser logs in with a token and gets a session
//! cookie (HttpOnly, SameSite=Strict, Secure behind HTTPS); every form carries the
//! session's CSRF token, checked before anything changes.
//!
//! - [`pages`]: jobs, a job (grid, graph, file, trigger form), a run (Gantt), a try (log),
//!   pools.
//! - [`svg`]: the grid, the DAG and the Gantt chart as SVG.

pub mod pages;
pub mod svg;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{TimeDelta, Utc};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use stevedore_domain::role::Role;
use stevedore_store::SessionRecord;

use crate::auth::{hash_token, random_hex, Session, SESSION_COOKIE, SESSION_HOURS};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/jobs") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{job_id}", get(pages::job))
        .route("/jobs/{job_id}/trigger", post(pages::trigger))
        .route("/jobs/{job_id}/backfill", post(pages::backfill))
        .route("/jobs/{job_id}/pause", post(pages::pause))
        .route(
            "/jobs/{job_id}/tasks/{task_id}/state",
            post(pages::set_state),
        )
        .route(
            "/jobs/{job_id}/tasks/{task_id}/state/clear",
            post(pages::clear_state),
        )
        .route("/runs/{run_id}", get(pages::run))
        .route("/runs/{run_id}/cancel", post(pages::cancel))
        .route(
            "/runs/{run_id}/artifacts/{task_id}/{*path}",
            get(pages::artifact),
        )
        .route("/runs/{run_id}/tasks/{task_id}/clear", post(pages::clear))
        .route("/runs/{run_id}/tasks/{task_id}/mark", post(pages::mark))
        .route(
            "/runs/{run_id}/tasks/{task_id}/tries/{try_number}",
            get(pages::try_page),
        )
        .route("/pools", get(pages::pools))
        .route("/assets", get(pages::assets_page))
        .route("/assets/{name}", get(pages::asset_page))
        .route("/notifications", get(pages::notifications))
        .route("/notifications/{id}/retry", post(pages::retry_notification))
}

/// A UI error: a page saying what went wrong (a redirect to the login page for a browser
/// that has no session).
pub enum UiError {
    Login(String),
    Page(StatusCode, String),
}

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> UiError {
        UiError::Page(error.status, error.message)
    }
}

impl From<stevedore_store::StoreError> for UiError {
    fn from(error: stevedore_store::StoreError) -> UiError {
        ApiError::from(error).into()
    }
}

impl From<stevedore_ops::actions::ActionError> for UiError {
    fn from(error: stevedore_ops::actions::ActionError) -> UiError {
        ApiError::from(error).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::Login(next) => {
                Redirect::to(&format!("/login?next={}", encode(&next))).into_response()
            }
            UiError::Page(status, message) => {
                let title = status.canonical_reason().unwrap_or("error");
                let body = html! {
                    h1 { (title) }
                    p.error { (message) }
                    p { a href="/jobs" { "Jobs" } }
                };
                (status, Html(layout(title, None, body).into_string())).into_response()
            }
        }
    }
}

pub type UiResult<T> = Result<T, UiError>;

/// The logged-in browser of a UI request; without a session, the browser goes to log in.
pub struct Viewer(pub Session);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Viewer, UiError> {
        match Session::from_parts(parts, state).await? {
            Some(session) => Ok(Viewer(session)),
            None => Err(UiError::Login(
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/jobs".to_owned()),
            )),
        }
    }
}

impl Viewer {
    /// Checks a form's CSRF token and the role the action needs.
    pub fn authorize(&self, csrf: &str, role: Role) -> UiResult<()> {
        if csrf.is_empty() || csrf != self.0.csrf {
            return Err(UiError::Page(
                StatusCode::FORBIDDEN,
                "the form's CSRF token does not match this session; reload the page and try again"
                    .to_owned(),
            ));
        }
        self.0.caller.require(role).map_err(UiError::from)
    }

    pub fn may(&self, role: Role) -> bool {
        self.0.caller.role.allows(role)
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The page around every view: navigation, who is logged in.
pub fn layout(title: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Stevedore" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/jobs" { "Stevedore" }
                    nav {
                        a href="/jobs" { "Jobs" }
                        a href="/pools" { "Pools" }
                        a href="/assets" { "Assets" }
                        a href="/notifications" { "Alerts" }
                    }
                    @if let Some(viewer) = viewer {
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(viewer.0.csrf);
                            span.who { (viewer.0.caller.name) " (" (viewer.0.caller.role) ")" }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn page(title: &str, viewer: &Viewer, body: Markup) -> Html<String> {
    Html(layout(title, Some(viewer), body).into_string())
}

/// A hidden CSRF field for a form of this session.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.0.csrf); }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Where to go after logging in: only a path of this site, as a browser would read it.
///
/// A browser's URL parser drops tabs and newlines and reads `\\` as `/`, so a check of the
/// raw text (`/<TAB>/evil.example` does not start with `//`) is not enough: `next` is
/// resolved with a URL parser against a placeholder origin, kept only if it stays on that
/// origin, and the normalized path (what the browser would request) is what is returned.
fn safe_next(next: Option<&str>) -> String {
    const FALLBACK: &str = "/jobs";
    let Some(next) = next else {
        return FALLBACK.to_owned();
    };
    // Only a relative path: no scheme, no `//host`, nothing a parser could read as one
    // (control characters and backslashes are refused outright).
    if !next.starts_with('/')
        || next.len() > 2048
        || next.chars().any(|c| c.is_control() || c == '\\')
    {
        return FALLBACK.to_owned();
    }
    let base = url::Url::parse("http://stevedore.invalid/").expect("a valid base");
    match base.join(next) {
        Ok(resolved) if resolved.origin() == base.origin() && resolved.username().is_empty() => {
            let mut path = resolved.path().to_owned();
            if path.starts_with("//") {
                return FALLBACK.to_owned();
            }
            if let Some(query) = resolved.query() {
                path.push('?');
                path.push_str(query);
            }
            path
        }
        _ => FALLBACK.to_owned(),
    }
}

async fn login_page(axum::extract::Query(query): axum::extract::Query<LoginQuery>) -> Html<String> {
    login_form(query.next.as_deref(), None)
}

fn login_form(next: Option<&str>, problem: Option<&str>) -> Html<String> {
    let body = html! {
        section.login {
            h1 { "Log in" }
            p { "Paste an API token (" code { "stevedore tokens create NAME --role viewer" } ")." }
            @if let Some(problem) = problem {
                p.error role="alert" { (problem) }
            }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(safe_next(next));
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Log in" }
            }
        }
    };
    Html(layout("Log in", None, body).into_string())
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, UiError> {
    let Some(token) = state
        .store
        .token_by_hash(&hash_token(form.token.trim()))
        .await?
    else {
        let page = login_form(
            form.next.as_deref(),
            Some("That token is unknown or revoked."),
        );
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    };
    let random = |what| {
        random_hex()
            .map_err(|e| UiError::Page(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}")))
    };
    let id = random("session")?;
    let session = SessionRecord {
        id_hash: hash_token(&id),
        token,
        csrf: random("csrf")?,
        expires_at: Utc::now() + TimeDelta::hours(SESSION_HOURS),
    };
    state.store.create_session(&session).await?;
    tracing::info!(token = %session.token.name, "ui login");
    // Secure when the browser reached us over HTTPS (directly or through a proxy).
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes() == b"https");
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_HOURS * 3600,
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to(&safe_next(form.next.as_deref())).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    viewer: Viewer,
    State(state): State<AppState>,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    viewer.authorize(&form.csrf, Role::Viewer)?;
    state.store.delete_session(&viewer.0.id_hash).await?;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "stevedore_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("app.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("app.js"),
    )
}

/// A state's colour class (the CSS gives each state Airflow's colour).
pub fn state_class(state: &str) -> String {
    format!("state state-{state}")
}
