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
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "give a token: `Authorization: Bearer <token>` (stevedore tokens create)",
                )
            })?;
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
