//! `postgres-load`: loads a JSON-lines file (an upstream extract's `records_file`) into a
//! PostgreSQL table, in one transaction: every row or none. The table is created from the
//! records (or `--schema`) when missing, and rows are upserted on `--key`, so loading the
//! same records twice leaves each row once.
//!
//! Task args: `--input FILE --table NAME [--key id] [--schema col:type,...] [--batch N]`.
//! The warehouse comes from the libpq variables of a connection: `PGHOST`, `PGPORT`,
//! `PGUSER`, `PGPASSWORD`, `PGDATABASE`.
//!
//! Outputs: `rows_inserted`, `rows_updated`.

use std::io::BufRead;

use serde_json::{json, Value};
use stevedore_sdk::{log, metric, output, progress, Context, Integration, Outcome};

fn identifier(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(format!("\"{name}\""))
    } else {
        Err(format!("`{name}` is not a plain identifier (a-z, 0-9, _)"))
    }
}

/// The column type a JSON value suggests.
fn column_type(value: &Value) -> &'static str {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => "bigint",
        Value::Number(_) => "double precision",
        Value::Bool(_) => "boolean",
        Value::String(_) => "text",
        _ => "jsonb",
    }
}

fn config() -> Result<postgres::Config, String> {
    let mut config = postgres::Config::new();
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    config.host(&var("PGHOST").unwrap_or_else(|| "127.0.0.1".to_owned()));
    if let Some(port) = var("PGPORT") {
        config.port(
            port.parse()
                .map_err(|_| format!("PGPORT `{port}` is not a port"))?,
        );
    }
    config.user(&var("PGUSER").unwrap_or_else(|| "postgres".to_owned()));
    if let Some(password) = var("PGPASSWORD") {
        config.password(password);
    }
    config.dbname(&var("PGDATABASE").unwrap_or_else(|| "postgres".to_owned()));
    Ok(config)
}

/// The `name:type` entries of `--schema`, split on the commas outside parentheses, so a
/// type such as `numeric(12,2)` stays whole.
fn split_schema(schema: &str) -> Vec<&str> {
    let mut entries = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (index, character) in schema.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                entries.push(&schema[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    entries.push(&schema[start..]);
    entries
}

/// A PostgreSQL error with its cause (the crate's own message alone hides it).
fn describe(error: &postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// `check`: connects to the warehouse with the connection's settings.
fn check(_ctx: &Context) -> Result<String, String> {
    let mut client = config()?
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect to the warehouse: {}", describe(&e)))?;
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, version()",
            &[],
        )
        .map_err(|e| format!("connected, but cannot query: {e}"))?;
    let (user, database, version): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    let version = version.split(" on ").next().unwrap_or(&version).to_owned();
    Ok(format!("connected to {database} as {user} ({version})"))
}

fn load(ctx: &Context) -> Result<Outcome, String> {
    let input = ctx
        .arg("input")
        .ok_or("--input is required (the extract's records_file)")?;
    let table = identifier(ctx.arg("table").ok_or("--table is required")?)?;
    let key_name = ctx.arg("key").unwrap_or("id");
    let key = identifier(key_name)?;
    let batch: usize = ctx.arg("batch").map_or(Ok(1000), |b| {
        b.parse()
            .map_err(|_| format!("--batch `{b}` is not a number"))
    })?;
    let path = match std::env::var("STEVEDORE_WORKSPACE") {
        Ok(workspace) if !input.starts_with('/') => std::path::Path::new(&workspace).join(input),
        _ => std::path::PathBuf::from(input),
    };
    // Records stream through in batches: memory holds one batch, whatever the file's size.
    let open = || {
        std::fs::File::open(&path)
            .map(std::io::BufReader::new)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    };
    let total = open()?
        .lines()
        .map_while(Result::ok)
        .filter(|line| !line.trim().is_empty())
        .count() as u64;
    let mut lines = open()?.lines().enumerate();
    // The next record: its line as written, and the record (checked for its key).
    let mut next_record = move || -> Result<Option<(String, Value)>, String> {
        for (number, line) in lines.by_ref() {
            let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Value = serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: not JSON: {e}", path.display(), number + 1))?;
            if record.get(key_name).is_none() {
                return Err(format!(
                    "{}:{}: the record has no key field `{key_name}`",
                    path.display(),
                    number + 1
                ));
            }
            return Ok(Some((line, record)));
        }
        Ok(None)
    };
    let first = next_record()?;
    log(
        "info",
        &format!("loading {total} records from {input} into {table}"),
    );

    let columns: Vec<(String, String)> = match ctx.arg("schema") {
        Some(schema) => split_schema(schema)
            .into_iter()
            .map(|column| {
                let (name, kind) = column
                    .split_once(':')
                    .ok_or_else(|| format!("--schema entry `{column}` is not name:type"))?;
                Ok((name.trim().to_owned(), kind.trim().to_owned()))
            })
            .collect::<Result<_, String>>()?,
        None => match first.as_ref().and_then(|(_, record)| record.as_object()) {
            Some(first) => first
                .iter()
                .map(|(name, value)| (name.clone(), column_type(value).to_owned()))
                .collect(),
            None => Vec::new(),
        },
    };

    let mut client = config()?
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect to the warehouse: {}", describe(&e)))?;
    let mut transaction = client
        .transaction()
        .map_err(|e| format!("cannot begin: {e}"))?;
    let (mut inserted, mut updated) = (0u64, 0u64);
    if !columns.is_empty() {
        let definitions: Vec<String> = columns
            .iter()
            .map(|(name, kind)| Ok(format!("{} {kind}", identifier(name)?)))
            .collect::<Result<_, String>>()?;
        transaction
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({key}))",
                definitions.join(", ")
            ))
            .map_err(|e| format!("cannot create {table}: {e}"))?;
        let names: Vec<String> = columns
            .iter()
            .map(|(name, _)| identifier(name))
            .collect::<Result<_, String>>()?;
        let updates: Vec<String> = names
            .iter()
            .filter(|n| **n != key)
            .map(|n| format!("{n} = EXCLUDED.{n}"))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        // jsonb_populate_recordset turns each record into a row of the table's types.
        let statement = format!(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb) \
             ON CONFLICT ({key}) {on_conflict} RETURNING (xmax = 0) AS inserted",
            cols = names.join(", ")
        );
        let statement = transaction
            .prepare(&statement)
            .map_err(|e| format!("cannot prepare the upsert: {e}"))?;
        let mut pending = first.map(|(line, _)| line);
        let mut done = 0;
        loop {
            let mut rows_text = String::from("[");
            let mut count = 0;
            while count < batch.max(1) {
                let line = match pending.take() {
                    Some(line) => line,
                    None => match next_record()? {
                        Some((line, _)) => line,
                        None => break,
                    },
                };
                if count > 0 {
                    rows_text.push(',');
                }
                rows_text.push_str(line.trim());
                count += 1;
            }
            if count == 0 {
                break;
            }
            rows_text.push(']');
            let rows = transaction
                .query(&statement, &[&rows_text])
                .map_err(|e| format!("cannot load into {table}: {e}"))?;
            for row in rows {
                if row.get::<_, bool>(0) {
                    inserted += 1;
                } else {
                    updated += 1;
                }
            }
            done += count as u64;
            progress(done, Some(total));
        }
    }
    transaction
        .commit()
        .map_err(|e| format!("cannot commit: {e}"))?;
    log(
        "info",
        &format!("{inserted} rows inserted, {updated} updated in {table}"),
    );
    output("rows_inserted", inserted);
    output("rows_updated", updated);
    metric("rows", (inserted + updated) as f64);
    Ok(Outcome::Success)
}

fn main() {
    Integration::new("postgres-load", env!("CARGO_PKG_VERSION"))
        .params_schema(json!({"type": "object"}))
        .check(check)
        .run(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_entries_keep_types_with_commas_whole() {
        assert_eq!(
            split_schema("id:bigint, amount:numeric(12,2),at:timestamptz"),
            vec!["id:bigint", " amount:numeric(12,2)", "at:timestamptz"]
        );
        assert_eq!(split_schema("id:bigint"), vec!["id:bigint"]);
    }
}
