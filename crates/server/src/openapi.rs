//! The API's OpenAPI 3.1 document, served at `/api/v1/openapi.json`. It is derived, not
//! written: utoipa reads each handler's `#[utoipa::path]` (route, parameters, body, answers;
//! [`crate::api::Operations`] lists them) and each body's `ToSchema`, derived on the very
//! types the handlers answer with (`stevedore_ops::views` for runs, task instances, tries,
//! log lines, pools and connections, the ones the CLI's `-o json` prints too). What holds
//! for every operation alike is added here once: the bearer token, its 401 and 403, and a
//! 400 for a body that is not what the operation takes. The API tests check that every
//! documented operation answers as documented, and schemathesis fuzzes the server against
//! it.

use std::sync::OnceLock;

use serde_json::{json, Value};
use utoipa::OpenApi;

/// The document as JSON text (built once).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| build().to_string())
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn build() -> Value {
    let mut document =
        serde_json::to_value(crate::api::Operations::openapi()).expect("a JSON document");
    document["info"] = json!({
        "title": "Stevedore",
        "version": "1",
        "description": "Jobs, runs, task instances, tries and their logs. Every operation but health needs `Authorization: Bearer <token>` (`stevedore tokens create NAME --role viewer|operator|admin`). Errors are `{\"error\": {\"code\", \"message\"}}`.",
    });
    document["servers"] = json!([{"url": "/"}]);
    document["security"] = json!([{"bearer": []}]);
    document["components"]["securitySchemes"] =
        json!({"bearer": {"type": "http", "scheme": "bearer"}});
    let paths = document["paths"].as_object_mut().expect("paths");
    for methods in paths.values_mut() {
        for operation in methods.as_object_mut().expect("methods").values_mut() {
            let public = operation["security"] == json!([{}]) || operation["security"] == json!([]);
            if public {
                operation["security"] = json!([]);
            }
            let has_body = operation.get("requestBody").is_some();
            let responses = operation["responses"].as_object_mut().expect("responses");
            if !public {
                responses.insert(
                    "401".into(),
                    error("no token, or an unknown or revoked one"),
                );
                responses.insert("403".into(), error("the token's role does not allow this"));
            }
            if has_body {
                responses
                    .entry("400")
                    .or_insert_with(|| error("the body is not what this operation takes"));
            }
            if has_body {
                operation["requestBody"]["required"] = json!(true);
            }
        }
    }
    every_answered_field_is_required(&mut document);
    document
}

/// utoipa leaves an `Option` field out of `required`; but the API always writes every field
/// of what it answers with (serde writes `None` as `null`), so in the schemas of answers
/// every property is required, `null` where its type allows. The schemas of request bodies
/// keep their optional fields.
fn every_answered_field_is_required(document: &mut Value) {
    let mut taken = std::collections::BTreeSet::new();
    for methods in document["paths"].as_object().expect("paths").values() {
        for operation in methods.as_object().expect("methods").values() {
            let body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap_or_default();
            if let Some(name) = body.strip_prefix("#/components/schemas/") {
                taken.insert(name.to_owned());
            }
        }
    }
    fn require_all(schema: &mut Value) {
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            let names: Vec<Value> = properties.keys().map(|k| json!(k)).collect();
            schema["required"] = Value::Array(names);
        }
        if let Some(parts) = schema.get_mut("allOf").and_then(Value::as_array_mut) {
            parts.iter_mut().for_each(require_all);
        }
    }
    let schemas = document["components"]["schemas"]
        .as_object_mut()
        .expect("schemas");
    for (name, schema) in schemas.iter_mut() {
        if !taken.contains(name) {
            require_all(schema);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document_value() -> Value {
        serde_json::from_str(document()).unwrap()
    }

    #[test]
    fn every_reference_points_at_a_schema() {
        let document = document_value();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        let text = document.to_string();
        for reference in text.split("#/components/schemas/").skip(1) {
            let name: String = reference
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            assert!(schemas.contains_key(&name), "no schema {name}");
        }
    }

    /// The views are the types the CLI prints too: their schemas carry their field names.
    #[test]
    fn the_run_schema_is_the_run_view() {
        let document = document_value();
        let run = &document["components"]["schemas"]["Run"];
        let view = serde_json::to_value(stevedore_ops::views::RunView {
            run_id: "r".into(),
            job_id: "j".into(),
            job_version: "v".into(),
            trigger: "manual".into(),
            state: "queued".into(),
            logical_date: "2024-01-01T00:00:00Z".into(),
            data_interval_start: "2024-01-01T00:00:00Z".into(),
            data_interval_end: "2024-01-01T00:00:00Z".into(),
            params: json!({}),
            queued_at: "2024-01-01T00:00:00Z".into(),
            started_at: None,
            ended_at: None,
            cancel_requested: false,
            deadline_missed_at: None,
            full_refresh: vec![],
        })
        .unwrap();
        let mut fields: Vec<&String> = view.as_object().unwrap().keys().collect();
        let mut documented: Vec<&String> = run["properties"].as_object().unwrap().keys().collect();
        fields.sort();
        documented.sort();
        assert_eq!(fields, documented);
        let required: Vec<&str> = run["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(required.contains(&"started_at"), "{required:?}");
        assert_eq!(run["properties"]["state"]["enum"][0], "queued");
    }

    /// The limits the handlers apply are the ones documented.
    #[test]
    fn the_documented_page_limits_are_the_handlers() {
        let document = document_value();
        let parameters = document["paths"]["/api/v1/runs"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let limit = parameters.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["maximum"], crate::paging::MAX_PAGE);
        assert_eq!(limit["schema"]["default"], crate::paging::DEFAULT_PAGE);
        let logs = document["paths"]
            ["/api/v1/runs/{run_id}/tasks/{task_id}/tries/{try_number}/logs"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let limit = logs.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["maximum"], crate::api::tries::MAX_LOG_PAGE);
    }
}
