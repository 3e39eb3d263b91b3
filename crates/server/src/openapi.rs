//! The API's OpenAPI document (`/api/v1/openapi.json`), kept beside the code in
//! `openapi.json`; `tests/api.rs` checks that every route is in it.

pub const DOCUMENT: &str = include_str!("openapi.json");
