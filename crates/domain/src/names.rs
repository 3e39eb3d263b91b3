//! The naming rules every part of Stevedore shares: ids of jobs, tasks, pools and
//! connections, and environment variable names.

/// The most characters a name of a pool or a connection may have.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `text` is an identifier: job, task, pool and connection ids (`[a-z0-9_]+`).
pub fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Whether `text` is an environment variable name a connection may set
/// (`[A-Z_][A-Z0-9_]*`).
pub fn is_env_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// `Ok` when `name` is an identifier of at most [`MAX_NAME_LEN`] characters; else the
/// sentence that says so, naming the `kind` of name (`pool`, `connection`).
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if is_identifier(name) && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(format!(
            "{kind} name `{name}` may only hold a-z, 0-9 and _ (at most {MAX_NAME_LEN})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_rule() {
        assert!(is_identifier("stripe_api_2"));
        assert!(!is_identifier("Stripe") && !is_identifier("") && !is_identifier("a-b"));
        assert!(is_env_name("API_TOKEN") && is_env_name("_X1"));
        assert!(!is_env_name("1X") && !is_env_name("api") && !is_env_name(""));
        assert!(check_name("pool", &"a".repeat(64)).is_ok());
        assert!(check_name("pool", &"a".repeat(65))
            .unwrap_err()
            .contains("pool name"));
    }
}
