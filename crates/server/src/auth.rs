//! Bearer tokens: `stv_` and 40 random base62 characters, stored as their SHA-256 only.
//! Every endpoint but health asks for one; its role decides what the caller may do.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::Utc;
use sha2::{Digest, Sha256};
use stevedore_domain::role::Role;

use crate::error::ApiError;
use crate::AppState;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new random token and its hash (what the store keeps).
pub fn new_token() -> Result<(String, String), String> {
    let mut bytes = [0u8; 40];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    // `% 62` is slightly biased (256 = 4 * 62 + 8): still about 5.9 bits per character,
    // over 230 bits in all.
    let body: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    let token = format!("stv_{body}");
    let hash = hash_token(&token);
    Ok((token, hash))
}

pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// Refuses the request (403) unless the caller's role allows `required`.
    pub fn require(&self, required: Role) -> Result<(), ApiError> {
        if self.role.allows(required) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` has the role {}; this needs {required}",
                self.name, self.role
            )))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            // A browser logged in to the UI may read through the API with its session
            // cookie (the log follow of the try page); changes need a token or a UI form.
            if parts.method == axum::http::Method::GET {
                if let Some(session) = Session::from_parts(parts, state).await? {
                    return Ok(session.caller);
                }
            }
            return Err(ApiError::unauthorized(
                "give a token: `Authorization: Bearer <token>` (stevedore tokens create)",
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header is not `Bearer <token>`")
            })?;
        let record = state
            .store
            .token_by_hash(&hash_token(token))
            .await?
            .ok_or_else(|| ApiError::unauthorized("the token is unknown or revoked"))?;
        // `last_used_at` is written at most once a minute per token, not on every request.
        let now = Utc::now();
        if record
            .last_used_at
            .is_none_or(|at| now - at > chrono::TimeDelta::minutes(1))
        {
            let _ = state.store.touch_token(record.id, now).await;
        }
        Ok(Caller {
            name: record.name,
            role: record.role,
        })
    }
}

/// The cookie a logged-in browser carries.
pub const SESSION_COOKIE: &str = "stevedore_session";

/// How long a UI session lasts.
pub const SESSION_HOURS: i64 = 12;

/// A random value for a session id or a CSRF token (64 hex characters).
pub fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A web UI session: who is logged in, and the CSRF token its forms must carry.
#[derive(Clone, Debug)]
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
    pub id_hash: String,
}

impl Session {
    /// The session of the request's cookie, if it is valid.
    pub async fn from_parts(parts: &Parts, state: &AppState) -> Result<Option<Session>, ApiError> {
        let Some(id) = cookie(parts, SESSION_COOKIE) else {
            return Ok(None);
        };
        let id_hash = hash_token(&id);
        let Some(record) = state.store.session(&id_hash, Utc::now()).await? else {
            return Ok(None);
        };
        Ok(Some(Session {
            caller: Caller {
                name: record.token.name,
                role: record.token.role,
            },
            csrf: record.csrf,
            id_hash,
        }))
    }
}

/// The value of cookie `name` in the request.
pub fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let (token, hash) = new_token().unwrap();
        let (other, _) = new_token().unwrap();
        assert!(token.starts_with("stv_") && token.len() == 44, "{token}");
        assert_ne!(token, other);
        assert_eq!(hash, hash_token(&token));
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&token[4..]));
    }
}
