//! What a Nomad client does to a docker task's `config` before the driver sees it: every
//! string is an HCL2 template (`client/allocrunner/taskrunner/task_runner.go` hands the
//! config to `helper/pluginutils/hclutils.ParseHclInterface`, which encodes it as JSON and
//! decodes it with HCL2's JSON syntax, where strings are templates). `${name}` is replaced
//! by a variable the client knows (the task's `NOMAD_*` environment, its `env`, `node.*`,
//! `attr.*`, `meta.*`), an unknown one fails the task with a `Failed Validation` event, and
//! `%{` opens a template directive; `$${` and `%%{` are the literal `${` and `%{`. Object
//! keys (a label's name) are not templates. Only what Stevedore could meet is modelled:
//! variable references, the two escapes and a directive that does not parse.

use std::collections::HashMap;

use serde_json::Value;

/// The config with every string evaluated, or the diagnostic Nomad's client fails the task
/// with.
pub(super) fn evaluate(config: &Value, vars: &HashMap<String, String>) -> Result<Value, String> {
    Ok(match config {
        Value::String(text) => Value::String(template(text, vars)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| evaluate(item, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| Ok((key.clone(), evaluate(value, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// One string as an HCL2 template.
pub(super) fn template(text: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("%%{") {
            out.push_str("%{");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(diagnostic(
                    "Unterminated template string",
                    "No closing marker was found for the string.",
                ));
            };
            let name = after[..end].trim();
            let is_reference = !name.is_empty()
                && name.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
            if !is_reference {
                return Err(diagnostic(
                    "Invalid expression",
                    "Expected the start of an expression, but found an invalid expression token.",
                ));
            }
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    let root = name.split('.').next().unwrap_or(name);
                    return Err(diagnostic(
                        "Unknown variable",
                        &format!("There is no variable named \"{root}\"."),
                    ));
                }
            }
            rest = &after[end + 1..];
        } else if rest.starts_with("%{") {
            return Err(diagnostic(
                "Invalid template directive",
                "A template directive keyword (\"if\", \"for\", etc) is expected at the beginning of a %{ sequence.",
            ));
        } else {
            let next = rest.chars().next().expect("not empty");
            out.push(next);
            rest = &rest[next.len_utf8()..];
        }
    }
    Ok(out)
}

/// What the client does to each of the task's `env` values (`helper/args.ReplaceEnv`): a
/// `${name}` it knows is replaced, any other is left as it is; there is no escape.
pub(super) fn replace_env(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .unwrap_or(after.len());
        match (
            after[name_len..].starts_with('}'),
            vars.get(&after[..name_len]),
        ) {
            (true, Some(value)) if name_len > 0 => {
                out.push_str(value);
                rest = &after[name_len + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// How the client words a failed config: `multierror` over hclutils' diagnostics
/// (`task_runner.go`: "failed to parse config: ").
fn diagnostic(summary: &str, detail: &str) -> String {
    format!("2 errors occurred:\n\t* failed to parse config: \n\t* <nil>: {summary}; {detail}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_interpolate_escape_and_fail_as_nomads_client_does() {
        let vars = HashMap::from([("NOMAD_ALLOC_ID".to_owned(), "a1".to_owned())]);
        assert_eq!(template("id ${NOMAD_ALLOC_ID}", &vars).unwrap(), "id a1");
        assert_eq!(
            template("$${HOME} %%{ if }", &vars).unwrap(),
            "${HOME} %{ if }"
        );
        assert!(template("${HOME}", &vars)
            .unwrap_err()
            .contains("There is no variable named \"HOME\""));
        assert!(template("%{ if x }", &vars)
            .unwrap_err()
            .contains("Invalid template directive"));
        assert_eq!(
            template("plain $ and % and {}", &vars).unwrap(),
            "plain $ and % and {}"
        );
        assert_eq!(
            replace_env("${NOMAD_ALLOC_ID}/${HOME}", &vars),
            "a1/${HOME}"
        );
    }
}
