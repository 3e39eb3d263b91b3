//! `{{ variable }}` templates in a task's `args`, `env` and `image`.
//!
//! Templates are checked when the job file loads (an unknown variable is an error there, never
//! an empty string at run time) and rendered when a try starts.

/// The context variables every task may use.
pub const CONTEXT_VARIABLES: [&str; 9] = [
    "job_id",
    "run_id",
    "task_id",
    "try_number",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    // The asset updates that triggered the run (a JSON list, `[]` for other runs).
    "triggering_asset_events",
    // How many posted events the run was made for (0 for other runs).
    "event_count",
];

/// A variable named in a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variable {
    /// One of [`CONTEXT_VARIABLES`].
    Context(String),
    /// `params.<name>`.
    Param(String),
    /// `outputs.<task>.<key>`: an output an upstream try published (for a mapped upstream,
    /// the list of every instance's value).
    Output { task: String, key: String },
    /// `item` or `item.<field>...`: the item a mapped task instance was made for.
    Item(Vec<String>),
    /// `map_index`: the index of a mapped task instance (0 for the first item).
    MapIndex,
}

impl std::fmt::Display for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Variable::Context(name) => f.write_str(name),
            Variable::Param(name) => write!(f, "params.{name}"),
            Variable::Output { task, key } => write!(f, "outputs.{task}.{key}"),
            Variable::Item(path) if path.is_empty() => f.write_str("item"),
            Variable::Item(path) => write!(f, "item.{}", path.join(".")),
            Variable::MapIndex => f.write_str("map_index"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment<'a> {
    Literal(&'a str),
    Variable(Variable),
}

fn parse(text: &str) -> Result<Vec<Segment<'_>>, String> {
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            segments.push(Segment::Literal(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("`{text}` opens `{{{{` without closing `}}}}`"))?;
        segments.push(Segment::Variable(parse_variable(after[..close].trim())?));
        rest = &after[close + 2..];
    }
    if rest.contains("}}") {
        return Err(format!("`{text}` closes `}}}}` without opening `{{{{`"));
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest));
    }
    Ok(segments)
}

fn parse_variable(name: &str) -> Result<Variable, String> {
    // Template parts are laxer than ids (`-` too): an output key is the integration's word.
    let is_part = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [single] if CONTEXT_VARIABLES.contains(single) => Ok(Variable::Context(single.to_string())),
        ["map_index"] => Ok(Variable::MapIndex),
        ["item", fields @ ..] if fields.iter().all(|f| is_part(f)) => Ok(Variable::Item(
            fields.iter().map(|f| f.to_string()).collect(),
        )),
        ["params", param] if is_part(param) => Ok(Variable::Param(param.to_string())),
        ["outputs", task, key] if is_part(task) && is_part(key) => Ok(Variable::Output {
            task: task.to_string(),
            key: key.to_string(),
        }),
        _ => Err(format!(
            "`{{{{ {name} }}}}` is not a known variable; use one of {}, params.<name>, \
             outputs.<task>.<key>, or in a mapped task item, item.<field> and map_index",
            CONTEXT_VARIABLES.join(", ")
        )),
    }
}

/// The variables a template names, or why it cannot be parsed.
pub fn variables(text: &str) -> Result<Vec<Variable>, String> {
    Ok(parse(text)?
        .into_iter()
        .filter_map(|segment| match segment {
            Segment::Variable(variable) => Some(variable),
            Segment::Literal(_) => None,
        })
        .collect())
}

/// Renders a template; `lookup` gives each variable's value, `None` when it has none (for
/// instance an output the upstream try never published), which is an error naming it.
pub fn render(text: &str, lookup: &dyn Fn(&Variable) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for segment in parse(text)? {
        match segment {
            Segment::Literal(literal) => out.push_str(literal),
            Segment::Variable(variable) => {
                let value = lookup(&variable).ok_or_else(|| match &variable {
                    Variable::Output { task, key } => format!(
                        "`outputs.{task}.{key}` has no value: task `{task}` did not publish an \
                         output `{key}`"
                    ),
                    Variable::Param(name) => format!("`params.{name}` has no value"),
                    Variable::Context(name) => format!("`{name}` has no value"),
                    Variable::Item(path) if path.is_empty() => "`item` has no value".to_owned(),
                    Variable::Item(path) => format!(
                        "`item.{}` has no value: the item has no such field",
                        path.join(".")
                    ),
                    Variable::MapIndex => "`map_index` has no value".to_owned(),
                })?;
                out.push_str(&value);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(variable: &Variable) -> Option<String> {
        match variable {
            Variable::Context(name) if name == "data_interval_start" => {
                Some("2024-01-01T00:00:00Z".into())
            }
            Variable::Param(name) if name == "lookback" => Some("3".into()),
            Variable::Output { task, key } if task == "extract" && key == "rows" => {
                Some("42".into())
            }
            _ => None,
        }
    }

    #[test]
    fn renders_context_params_and_outputs() {
        let text = "--since={{ data_interval_start }} --days {{params.lookback}} n={{ outputs.extract.rows }}";
        assert_eq!(
            render(text, &lookup).unwrap(),
            "--since=2024-01-01T00:00:00Z --days 3 n=42"
        );
        assert_eq!(render("plain", &lookup).unwrap(), "plain");
    }

    #[test]
    fn unknown_variables_are_errors() {
        assert!(variables("{{ data_interval_begin }}")
            .unwrap_err()
            .contains("not a known variable"));
        assert!(variables("{{ outputs.extract }}").is_err());
        assert!(variables("{{ job_id")
            .unwrap_err()
            .contains("without closing"));
        assert!(render("{{ outputs.extract.missing }}", &lookup)
            .unwrap_err()
            .contains("did not publish"));
    }

    #[test]
    fn items_and_map_index_are_variables() {
        assert_eq!(
            variables("{{ item }}/{{ item.account.id }}/{{ map_index }}").unwrap(),
            vec![
                Variable::Item(vec![]),
                Variable::Item(vec!["account".into(), "id".into()]),
                Variable::MapIndex
            ]
        );
        assert!(variables("{{ item. }}").is_err());
    }

    #[test]
    fn lists_variables() {
        assert_eq!(
            variables("{{ job_id }}-{{ params.a }}").unwrap(),
            vec![
                Variable::Context("job_id".into()),
                Variable::Param("a".into())
            ]
        );
    }
}
