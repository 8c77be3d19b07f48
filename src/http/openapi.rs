//! `/openapi.json`: an OpenAPI 3.1 document generated from the route table
//! ([`super::routes`]) — the same rows the router is built from, so every
//! served route is documented and nothing else is.

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};

use super::{Access, Input, Route};
use crate::app::AppState;
use crate::config::Config;

pub async fn openapi(State(state): State<AppState>) -> Json<Value> {
    Json(document(&state.config, &super::routes(&state.config)))
}

/// Path parameters of a route pattern: `/admin/keys/{kid}/retire` → `kid`.
fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn operation_id(r: &Route) -> String {
    let mut id = r.verb.as_str().to_string();
    for part in r.path.split(['/', '.', '-', '{', '}']) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OAuthError" } } }
    })
}

fn operation(r: &Route) -> Value {
    let d = &r.doc;
    let mut parameters: Vec<Value> = path_params(r.path)
        .into_iter()
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    parameters.extend(d.query.iter().map(|(name, description)| {
        json!({ "name": name, "in": "query", "required": false, "description": description,
                "schema": { "type": "string" } })
    }));
    let ok_schema = if d.produces == "application/json" {
        json!({ "type": "object" })
    } else {
        json!({ "type": "string" })
    };
    let mut responses = Map::new();
    if d.produces == "none" {
        responses.insert("204".into(), json!({ "description": "Done" }));
    } else {
        responses.insert(
            "200".into(),
            json!({ "description": "Success", "content": { d.produces: { "schema": ok_schema } } }),
        );
    }
    if d.access != Access::Public || d.input != Input::None || !d.query.is_empty() {
        responses.insert(
            "400".into(),
            error_response("Malformed request (OAuth error body)"),
        );
    }
    if d.access != Access::Public {
        responses.insert(
            "401".into(),
            error_response("Missing or invalid credentials"),
        );
    }
    if d.access == Access::Admin {
        responses.insert("403".into(), error_response("Not an admin token"));
    }
    let mut op = json!({
        "operationId": operation_id(r),
        "summary": d.summary,
        "tags": [d.tag],
        "responses": responses,
    });
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    match d.input {
        Input::None => {}
        Input::Form => {
            op["requestBody"] = json!({ "required": true, "content": {
                "application/x-www-form-urlencoded": { "schema": { "type": "object",
                    "additionalProperties": { "type": "string" } } } } });
        }
        Input::Json => {
            op["requestBody"] = json!({ "required": false, "content": {
                "application/json": { "schema": { "type": "object" } } } });
        }
    }
    let security = match d.access {
        Access::Public => None,
        Access::Client => Some(json!([{ "clientBasic": [] }, {}])),
        Access::Bearer | Access::Admin => Some(json!([{ "bearer": [] }])),
        Access::Metrics => Some(json!([{ "metricsToken": [] }, {}])),
    };
    if let Some(s) = security {
        op["security"] = s;
    }
    op
}

/// The OpenAPI 3.1 document for `routes` as `config` serves them.
pub fn document(config: &Config, routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for r in routes {
        let item = paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        item[r.verb.as_str()] = operation(r);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "latchkey",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An OIDC-style identity provider with a rotating, KMS-backed signing key ring.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" }
        },
        "servers": [{ "url": config.issuer }],
        "paths": paths,
        "components": {
            "schemas": {
                "OAuthError": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": { "type": "string" },
                        "error_description": { "type": "string" }
                    }
                }
            },
            "securitySchemes": {
                "clientBasic": { "type": "http", "scheme": "basic",
                    "description": "OAuth client id and secret (client_secret_basic); client_secret_post and public clients send client_id in the form instead" },
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "metricsToken": { "type": "http", "scheme": "bearer",
                    "description": "LATCHKEY_METRICS__TOKEN, when configured" }
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn path_params_and_operation_ids() {
        assert_eq!(path_params("/admin/keys/{kid}/retire"), vec!["kid"]);
        assert!(path_params("/token").is_empty());
    }
}
