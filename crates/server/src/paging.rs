//! Paging of long lists: the most items one page holds, and the default. The API's handlers
//! and the OpenAPI document both read it here, so neither depends on the other for it.

use crate::error::{ApiError, ApiResult};

/// The most items one page of a list holds.
pub const MAX_PAGE: u32 = 500;
/// The items of a page when the request names no `limit`.
pub const DEFAULT_PAGE: u32 = 100;

/// The page size a request's `limit` asks for, or why it cannot be had.
pub fn page_size(limit: Option<u32>) -> ApiResult<u32> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        n if n > MAX_PAGE => Err(ApiError::bad_request(format!(
            "limit must be at most {MAX_PAGE}"
        ))),
        n => Ok(n),
    }
}
