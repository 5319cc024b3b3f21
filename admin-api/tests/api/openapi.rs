//! The OpenAPI document lists exactly the routes the router serves.

use std::collections::{BTreeMap, BTreeSet};

use http::{Method, StatusCode};
use serde_json::Value;

use crate::harness::Harness;

fn document() -> Value {
    let json = modelgw_admin_api::openapi().to_json().expect("serializes");
    serde_json::from_str(&json).expect("parses as JSON")
}

/// The methods the document lists per path.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = document();
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.1"), "{}", doc["openapi"]);
    let methods = ["get", "put", "post", "patch", "delete", "head", "options", "trace"];
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let ms = methods.iter().filter(|m| item.get(**m).is_some()).map(|m| m.to_string());
            (path.clone(), ms.collect())
        })
        .collect()
}

/// Every path the admin API registers on a router: the role table's (`route_roles`), from
/// which the router builds every authenticated route, and the `.route("…")` literals of
/// `admin-api/src` under the `.nest("…")` prefix (the public document). axum cannot list its
/// routes, so the source is read to make sure no route is registered any other way; which
/// methods each path really answers is then asked of the real router.
fn registered_paths() -> BTreeSet<String> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src];
    let mut text = String::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path).expect("src dir").map(|e| e.expect("entry").path()),
            );
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path).expect("source file"));
        }
    }
    // The string literal that opens each `call(` (rustfmt may break the line after it).
    let literals = |call: &str| -> Vec<String> {
        text.split(call)
            .skip(1)
            .filter_map(|s| s.trim_start().strip_prefix('"')?.split('"').next())
            .map(str::to_owned)
            .collect()
    };
    assert!(!text.contains(".route_service("), "routes this test cannot see: extend it");
    let prefixes = literals(".nest(");
    assert_eq!(prefixes, ["/api/v1"], "one nest, of everything, under /api/v1");
    let mut public = literals(".route(");
    // The probes live outside the API (like the data plane's): not operations of the document.
    let probes: Vec<String> = public.drain(1..).collect();
    assert_eq!(probes, ["/healthz", "/readyz"], "the probes, outside /api/v1");
    assert_eq!(public, ["/openapi.json"], "only the public document is routed by hand");
    assert_eq!(
        text.matches(".route(").count(),
        4,
        "a route registered outside the role table (`protected_routes` in lib.rs)"
    );
    let mut paths: BTreeSet<String> =
        modelgw_admin_api::route_roles().into_iter().map(|r| r.path).collect();
    paths.extend(public.into_iter().map(|p| format!("{}{p}", prefixes[0])));
    paths
}

/// `path` with every `{param}` replaced by a fresh id (nothing exists with it).
fn concrete(path: &str) -> String {
    path.split('/')
        .map(
            |seg| {
                if seg.starts_with('{') { uuid::Uuid::new_v4().to_string() } else { seg.to_owned() }
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// What tells one problem from another: its type and detail (the body also has a request id).
fn problem(text: &str) -> (Value, Value) {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    (body["type"].clone(), body["detail"].clone())
}

/// The methods the real router serves on `path`: every one it answers with something other
/// than "no such route" (404 with the route-not-found problem) or 405. HEAD is left out: axum
/// answers it wherever it answers GET.
async fn served_methods(h: &Harness, path: &str, no_route: &(Value, Value)) -> BTreeSet<String> {
    let mut served = BTreeSet::new();
    for method in ["GET", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "TRACE"] {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        // No body: a served route refuses it (400/415/422) or answers; it never says 404/405.
        let reply = h.call(method.clone(), &concrete(path), None).await;
        let unrouted = reply.status == StatusCode::METHOD_NOT_ALLOWED
            || (reply.status == StatusCode::NOT_FOUND && problem(&reply.text) == *no_route);
        if !unrouted {
            served.insert(method.as_str().to_lowercase());
        }
    }
    served
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_the_router_serves() {
    let h = Harness::start().await;
    let no_route =
        problem(&h.get("/api/v1/no-such-route").await.expect(StatusCode::NOT_FOUND).text);
    assert!(no_route.1.as_str().is_some_and(|d| d.contains("no such route")), "{no_route:?}");
    let nothing = served_methods(&h, "/api/v1/gateways/{id}/no-such-route", &no_route).await;
    assert!(nothing.is_empty(), "the probe tells an unrouted path: {nothing:?}");
    let documented = documented();
    let registered = registered_paths();
    let mut served = BTreeMap::new();
    for path in documented.keys().chain(&registered).collect::<BTreeSet<_>>() {
        let methods = served_methods(&h, path, &no_route).await;
        if !methods.is_empty() {
            served.insert(path.clone(), methods);
        }
    }
    assert_eq!(
        served.keys().collect::<BTreeSet<_>>(),
        registered.iter().collect::<BTreeSet<_>>(),
        "the probe sees exactly the registered paths"
    );
    assert_eq!(documented, served, "documented (left) vs served by the router (right)");
    assert_eq!(documented.len(), 26, "the twenty-six paths of /api/v1");
}

#[test]
fn every_operation_but_the_document_requires_a_token_with_its_role() {
    let doc = document();
    assert_eq!(doc["components"]["securitySchemes"]["admin_token"]["scheme"], "bearer");
    assert_eq!(doc["security"], serde_json::json!([{"admin_token": []}]));
    let roles = modelgw_admin_api::route_roles();
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let responses = op["responses"].as_object().expect("responses");
            if path == "/api/v1/openapi.json" {
                assert_eq!(op["security"], serde_json::json!([{}]), "public");
                assert!(!responses.contains_key("401"));
                assert!(!responses.contains_key("403"));
            } else {
                let route = roles
                    .iter()
                    .find(|r| r.method.as_str().eq_ignore_ascii_case(method) && r.path == *path)
                    .unwrap_or_else(|| panic!("{method} {path} has no role in the role table"));
                seen += 1;
                let role = route.role.as_str();
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"admin_token": [role]}]),
                    "{method} {path}"
                );
                let description = op["description"].as_str().unwrap_or("");
                assert!(
                    description.ends_with(&format!("Requires the `{role}` role.")),
                    "{method} {path}: {description}"
                );
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
                assert!(responses.contains_key("500"), "{method} {path} lacks 500");
                // Every caller has at least `viewer`: only operations above it can be forbidden.
                assert_eq!(
                    responses.contains_key("403"),
                    role != "viewer",
                    "{method} {path} ({role}): 403 documented iff a lower role exists"
                );
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(responses.contains_key(status), "{method} {path} lacks {status}");
                }
            }
        }
    }
    assert_eq!(seen, roles.len(), "every row of the role table is a documented operation");
    let forbidden =
        &doc["components"]["responses"]["Forbidden"]["content"]["application/problem+json"];
    assert_eq!(forbidden["schema"]["$ref"], "#/components/schemas/Problem");
    assert!(doc["components"]["schemas"]["Problem"]["properties"].get("required_role").is_some());
}

#[test]
fn shown_once_secrets_are_documented_as_not_cached() {
    let doc = document();
    for (path, status) in [("/api/v1/gateways/{id}/keys", "201"), ("/api/v1/api-tokens", "201")] {
        let response = &doc["paths"][path]["post"]["responses"][status];
        assert!(
            response["headers"].get("cache-control").is_some(),
            "POST {path} {status} does not document Cache-Control: {response}"
        );
    }
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["ApiTokenResponse"]["properties"].get("token").is_none());
    assert!(schemas["CreatedApiTokenResponse"]["properties"].get("token").is_some());
}

#[test]
fn secrets_are_write_only_and_defaults_are_documented() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["CreateEndpointRequest"]["properties"]["api_key"]["writeOnly"], true);
    assert_eq!(schemas["UpdateEndpointRequest"]["properties"]["api_key"]["writeOnly"], true);
    assert!(schemas["EndpointResponse"]["properties"].get("api_key").is_none());
    assert!(schemas["KeyResponse"]["properties"].get("key").is_none());
    assert!(schemas["DataPlaneTokenResponse"]["properties"].get("token").is_none());
    assert_eq!(schemas["ImportRequest"]["properties"]["auth"]["default"], "api_key");
    let member = &schemas["GatewayMemberInput"]["properties"];
    assert_eq!(member["enabled"]["default"], true);
    assert_eq!(member["priority"]["default"], 0);
    assert_eq!(member["weight"]["default"], 1);
    assert_eq!(member["weight"]["minimum"], 1);
    assert_eq!(member["weight"]["maximum"], 1000);
    assert_eq!(member["priority"]["maximum"], 100);
    let required: Vec<&str> = schemas["GatewayMemberInput"]["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["endpoint_id"]);
}

#[test]
fn every_referenced_schema_exists() {
    let doc = document();
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let responses = doc["components"]["responses"].as_object().expect("responses");
    for reference in text.split("\"$ref\":\"").skip(1).filter_map(|s| s.split('"').next()) {
        if let Some(name) = reference.strip_prefix("#/components/schemas/") {
            assert!(schemas.contains_key(name), "dangling {reference}");
        } else if let Some(name) = reference.strip_prefix("#/components/responses/") {
            assert!(responses.contains_key(name), "dangling {reference}");
        } else {
            panic!("unexpected reference {reference}");
        }
    }
}

#[test]
fn operation_ids_are_unique() {
    let doc = document();
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("path item").values() {
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
        }
    }
    assert_eq!(ids.len(), 37);
}

#[test]
fn routing_and_health_fields_are_documented() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(strings(&schemas["RoutingStrategy"]["enum"]), ["weighted", "fastest"]);
    assert_eq!(
        strings(&schemas["GatewayState"]["enum"]),
        ["healthy", "degraded", "throttling", "error"]
    );
    for request in ["CreateGatewayRequest", "UpdateGatewayRequest"] {
        assert!(schemas[request]["properties"].get("routing").is_some(), "{request}");
        let required = &schemas[request]["required"];
        // `required` is omitted when nothing is.
        assert!(required.is_null() || !strings(required).contains(&"routing".to_owned()));
    }
    let input = &schemas["RoutingInput"]["properties"];
    assert_eq!(input["strategy"]["default"], "weighted");
    assert_eq!(input["wait_for_recovery"]["default"], false);
    assert_eq!(input["request_timeout_ms"]["minimum"], 1000);
    assert_eq!(input["request_timeout_ms"]["maximum"], 600000);
    assert_eq!(
        strings(&schemas["RoutingResponse"]["required"]),
        ["strategy", "wait_for_recovery", "request_timeout_ms", "quota"]
    );
    // `routing.quota`: optional in, every field out, the defaults documented.
    assert!(schemas["RoutingInput"]["required"].is_null(), "nothing of routing is required");
    let quota = &schemas["QuotaPolicyInput"]["properties"];
    assert_eq!(quota["enabled"]["default"], true);
    assert_eq!(quota["request_window_secs"]["default"], 10);
    assert_eq!(quota["token_window_secs"]["default"], 60);
    assert_eq!(quota["reserve_percent"]["default"], 0);
    assert!(schemas["QuotaPolicyInput"]["required"].is_null(), "every quota field is optional");
    assert_eq!(
        strings(&schemas["QuotaPolicyResponse"]["required"]),
        ["enabled", "request_window_secs", "token_window_secs", "reserve_percent"]
    );
    assert_eq!(
        schemas["GatewayResponse"]["properties"]["state"]["$ref"],
        "#/components/schemas/GatewayState"
    );
    assert!(strings(&schemas["GatewayResponse"]["required"]).contains(&"routing".to_owned()));

    let endpoint = &schemas["EndpointResponse"]["properties"];
    for field in
        ["state", "state_reason", "retry_after", "state_until", "last_error", "data_planes"]
    {
        assert!(endpoint.get(field).is_some(), "EndpointResponse.{field}");
    }
    assert_eq!(endpoint["retry_after"]["format"], "date-time");
    let plane = &schemas["DataPlaneHealthResponse"];
    assert_eq!(strings(&plane["required"]), ["node_id", "state", "updated_at"]);
    for field in ["until", "reason"] {
        assert!(plane["properties"].get(field).is_some(), "DataPlaneHealthResponse.{field}");
    }
    assert_eq!(strings(&schemas["LastErrorResponse"]["required"]), ["reason", "at", "node_id"]);
}

/// utoipa's `minimum`, `maximum` and `pattern` take literals only, so the schema repeats the
/// bounds of `modelgw_model::limits`; this keeps the two from drifting apart.
#[test]
fn schema_bounds_are_the_limits() {
    use modelgw_model::QuotaPolicy;
    use modelgw_model::limits::{
        MAX_GATEWAY_NAME_CHARS, PRIORITY_RANGE, REQUEST_TIMEOUT_MS_RANGE, WEIGHT_RANGE,
    };

    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let bounds = |schema: &str, field: &str| {
        let property = &schemas[schema]["properties"][field];
        (property["minimum"].as_i64(), property["maximum"].as_i64())
    };
    let range = |r: std::ops::RangeInclusive<i64>| (Some(*r.start()), Some(*r.end()));
    assert_eq!(bounds("GatewayMemberInput", "priority"), range(PRIORITY_RANGE));
    assert_eq!(bounds("GatewayMemberInput", "weight"), range(WEIGHT_RANGE));
    for schema in ["RoutingInput", "RoutingResponse"] {
        assert_eq!(
            bounds(schema, "request_timeout_ms"),
            range(REQUEST_TIMEOUT_MS_RANGE),
            "{schema}"
        );
    }
    let window = QuotaPolicy::WINDOW_SECS_RANGE;
    let reserve = QuotaPolicy::RESERVE_PERCENT_RANGE;
    for schema in ["QuotaPolicyInput", "QuotaPolicyResponse"] {
        for field in ["request_window_secs", "token_window_secs"] {
            assert_eq!(
                bounds(schema, field),
                range(i64::from(*window.start())..=i64::from(*window.end())),
                "{schema}.{field}"
            );
        }
        assert_eq!(
            bounds(schema, "reserve_percent"),
            range(i64::from(*reserve.start())..=i64::from(*reserve.end())),
            "{schema}"
        );
    }
    // The character class and length as before; the reserved names are excluded by a negative
    // lookahead each in front of it (`contract.rs` proves them against the validator).
    let pattern = format!("[A-Za-z0-9._-]{{1,{MAX_GATEWAY_NAME_CHARS}}}$");
    for schema in ["CreateGatewayRequest", "UpdateGatewayRequest"] {
        let actual = schemas[schema]["properties"]["name"]["pattern"].as_str().expect("pattern");
        assert!(actual.starts_with("^(?!") && actual.ends_with(&pattern), "{schema}: {actual}");
    }
}
