//! The OpenAPI document and the validators agree: for every rule the document states on a
//! request field (`maxLength`, `pattern`, `enum`, `minimum`/`maximum`, `minItems`/`maxItems`),
//! a request at the document's limit is accepted, and one past it is refused with a 422 naming
//! that field. Patterns are checked on a corpus of edge values (whitespace of every kind,
//! control characters, reserved names, URL shapes): the API accepts exactly the values the
//! document's pattern matches. A rule the document gains without a case here fails the test.

use std::collections::BTreeSet;

use http::{Method, StatusCode};
use regex::Regex;
use serde_json::{Value, json};

use crate::harness::{Harness, Reply, endpoint_body, id_of};

const KEY: &str = "azkey-0123456789abcdef0123456789abcdef";

/// The request schemas and the operation each is sent to.
const REQUEST_SCHEMAS: [&str; 14] = [
    "CreateApiTokenRequest",
    "CreateEndpointRequest",
    "UpdateEndpointRequest",
    "CreateKeyRequest",
    "UpdateKeyRequest",
    "WindowLimitsInput",
    "KeyLimitPolicyInput",
    "CreateGatewayRequest",
    "UpdateGatewayRequest",
    "GatewayMemberInput",
    "RoutingInput",
    "QuotaPolicyInput",
    "TracesInput",
    "CreateDataPlaneTokenRequest",
];

const RULE_KEYWORDS: [&str; 7] =
    ["maxLength", "pattern", "enum", "minimum", "maximum", "minItems", "maxItems"];

fn document() -> Value {
    serde_json::from_str(&modelgw_admin_api::openapi().to_json().expect("serializes"))
        .expect("JSON")
}

/// A property's schema with `$ref`s and `oneOf [null, $ref]` resolved to the referenced one.
fn resolve<'a>(doc: &'a Value, property: &'a Value) -> &'a Value {
    let reference = property["$ref"]
        .as_str()
        .or_else(|| property["oneOf"].as_array()?.iter().find_map(|s| s["$ref"].as_str()));
    match reference {
        Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => property,
    }
}

/// Whether `value` satisfies the string rules of `schema` (`maxLength`, `minLength`, `pattern`,
/// `enum`). Leading negative lookaheads `(?!X$)`, which the `regex` crate lacks, are checked
/// as "the value is not all of X".
fn document_accepts(schema: &Value, value: &str) -> bool {
    let chars = value.chars().count();
    if schema["maxLength"].as_u64().is_some_and(|max| chars as u64 > max)
        || schema["minLength"].as_u64().is_some_and(|min| (chars as u64) < min)
    {
        return false;
    }
    if let Some(values) = schema["enum"].as_array() {
        return values.iter().any(|v| v.as_str() == Some(value));
    }
    let Some(pattern) = schema["pattern"].as_str() else { return true };
    let mut rest = pattern.to_owned();
    let mut excluded = Vec::new();
    while let Some(tail) = rest.strip_prefix("^(?!") {
        let end = tail.find("$)").expect("a lookahead ends with $)");
        excluded.push(format!("^(?:{})$", &tail[..end]));
        rest = format!("^{}", &tail[end + 2..]);
    }
    Regex::new(&rest).unwrap_or_else(|e| panic!("{rest}: {e}")).is_match(value)
        && excluded.iter().all(|x| !Regex::new(x).expect("lookahead").is_match(value))
}

/// A world to send requests in: an endpoint, a gateway over it, and a counter for unique names.
struct World {
    h: Harness,
    endpoint: String,
    gateway: String,
    /// A key of `gateway`.
    key: String,
    n: std::cell::Cell<usize>,
}

impl World {
    async fn new() -> World {
        let h = Harness::start().await;
        let endpoint = id_of(&h.create_endpoint(endpoint_body("base", KEY)).await);
        let gateway = id_of(
            &h.create_gateway(json!({"name": "base", "endpoints": [{"endpoint_id": endpoint}]}))
                .await,
        );
        let path = format!("/api/v1/gateways/{gateway}/keys");
        let key = id_of(
            &h.call(Method::POST, &path, Some(json!({"name": "base"})))
                .await
                .expect(StatusCode::CREATED)
                .json(),
        );
        World { h, endpoint, gateway, key, n: std::cell::Cell::new(0) }
    }

    /// A name no other request used, of exactly `len` characters (at least 8).
    fn unique(&self, len: usize) -> String {
        self.n.set(self.n.get() + 1);
        let prefix = format!("u{:07}", self.n.get());
        format!("{prefix}{}", "x".repeat(len.saturating_sub(prefix.len())))
    }

    /// Sends `value` as `schema.field` in an otherwise valid request of the operation that
    /// takes `schema`; returns the reply and the field name the API reports errors under.
    async fn send(&self, schema: &str, field: &str, value: Value) -> (Reply, String) {
        let h = &self.h;
        let fresh_name = json!(self.unique(12));
        let (method, path, body, reported) = match schema {
            "CreateEndpointRequest" => {
                let mut body = endpoint_body(&self.unique(12), KEY);
                if field == "auth" && value == "entra" {
                    body.as_object_mut().expect("object").remove("api_key");
                }
                body[field] = value;
                (Method::POST, "/api/v1/inference-endpoints".to_owned(), body, field.to_owned())
            }
            "UpdateEndpointRequest" => {
                let mut body = json!({field: value});
                if field == "auth" && value == "api_key" {
                    body["api_key"] = json!(KEY);
                }
                let path = format!("/api/v1/inference-endpoints/{}", self.endpoint);
                (Method::PATCH, path, body, field.to_owned())
            }
            "CreateKeyRequest" => {
                let path = format!("/api/v1/gateways/{}/keys", self.gateway);
                (Method::POST, path, json!({field: value}), field.to_owned())
            }
            "UpdateKeyRequest" => {
                let path = format!("/api/v1/gateways/{}/keys/{}", self.gateway, self.key);
                (Method::PATCH, path, json!({field: value}), field.to_owned())
            }
            "WindowLimitsInput" => {
                let path = format!("/api/v1/gateways/{}/keys", self.gateway);
                let body = json!({"name": "k", "limits": {"per_hour": {field: value}}});
                (Method::POST, path, body, format!("limits.per_hour.{field}"))
            }
            "KeyLimitPolicyInput" => {
                let path = format!("/api/v1/gateways/{}", self.gateway);
                let body = json!({"key_limits": {field: value}});
                (Method::PATCH, path, body, format!("key_limits.{field}"))
            }
            "CreateGatewayRequest" => {
                let mut body = json!({"name": fresh_name, "endpoints": []});
                body[field] = value;
                (Method::POST, "/api/v1/gateways".to_owned(), body, field.to_owned())
            }
            "UpdateGatewayRequest" => {
                let path = format!("/api/v1/gateways/{}", self.gateway);
                (Method::PATCH, path, json!({field: value}), field.to_owned())
            }
            "GatewayMemberInput" => {
                let mut member = json!({"endpoint_id": self.endpoint});
                member[field] = value;
                let body = json!({"name": fresh_name, "endpoints": [member]});
                (Method::POST, "/api/v1/gateways".to_owned(), body, format!("endpoints[0].{field}"))
            }
            "RoutingInput" => {
                let body = json!({"name": fresh_name, "endpoints": [], "routing": {field: value}});
                (Method::POST, "/api/v1/gateways".to_owned(), body, format!("routing.{field}"))
            }
            "QuotaPolicyInput" => {
                let body = json!({"name": fresh_name, "endpoints": [],
                    "routing": {"quota": {field: value}}});
                (
                    Method::POST,
                    "/api/v1/gateways".to_owned(),
                    body,
                    format!("routing.quota.{field}"),
                )
            }
            "TracesInput" => {
                let body = json!({"name": fresh_name, "endpoints": [], "traces": {field: value}});
                (Method::POST, "/api/v1/gateways".to_owned(), body, format!("traces.{field}"))
            }
            "CreateApiTokenRequest" => {
                let mut body = json!({"name": fresh_name, "role": "viewer"});
                body[field] = value;
                (Method::POST, "/api/v1/api-tokens".to_owned(), body, field.to_owned())
            }
            "CreateDataPlaneTokenRequest" => {
                let mut body = json!({"name": self.unique(12)});
                body[field] = value;
                (Method::POST, "/api/v1/data-plane-tokens".to_owned(), body, field.to_owned())
            }
            other => panic!("no operation for {other}"),
        };
        (h.call(method, &path, Some(body)).await, reported)
    }

    /// Asserts `value` is accepted as `schema.field`.
    async fn accepted(&self, schema: &str, field: &str, value: Value) {
        let shown = shorten(&value);
        let (reply, _) = self.send(schema, field, value).await;
        assert!(
            reply.status.is_success(),
            "{schema}.{field} = {shown} is valid by the document but refused: {}",
            reply.text
        );
    }

    /// Asserts `value` is refused as `schema.field` with a 422 naming the field.
    async fn refused(&self, schema: &str, field: &str, value: Value) {
        let shown = shorten(&value);
        let (reply, reported) = self.send(schema, field, value).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{schema}.{field} = {shown} is invalid by the document but got: {}",
            reply.text
        );
        assert!(
            reply.error_fields().contains(&reported),
            "{schema}.{field} = {shown}: the 422 does not name {reported}: {}",
            reply.text
        );
    }
}

fn shorten(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}… ({} chars)", &text[..60], text.len())
    } else {
        text
    }
}

/// Edge values for string patterns: every kind of whitespace and control character around and
/// inside a value, reserved names, UUID spellings, URL shapes.
fn corpus() -> Vec<String> {
    let mut values: Vec<String> = [
        "a",
        "eus",
        "gpt-4o",
        "GPT_4o.mini",
        "a b",
        " a",
        "a ",
        "  a  ",
        "",
        " ",
        "auto",
        "AUTO",
        "Auto",
        "autos",
        ".",
        "..",
        "...",
        ".a",
        "a/b",
        "ü",
        "日本",
        "a😀b",
        "sk-test-0123",
        "sk-has space",
        "\"quoted\"",
        "~!@#$%^&*()",
        "a\u{7}b",
        "a\u{7f}",
        "\u{9c}a",
        "\u{85}a",
        "a\u{85}",
        "a\u{a0}",
        "\u{a0}",
        "\u{3000}",
        "a\u{3000}b",
        "\u{2028}",
        "\u{feff}a",
        "a\u{200b}",
        "\ta",
        "a\n",
        "a\r\n",
        "\u{b}a",
        "a\u{c}",
        "00000000-0000-0000-0000-000000000000",
        "0000000000000000000000000000000a",
        "{00000000-0000-0000-0000-000000000000}",
        "urn:uuid:00000000-0000-0000-0000-000000000000",
        " 00000000-0000-0000-0000-000000000000",
        "https://contoso.openai.azure.com",
        "https://contoso.openai.azure.com/",
        "HTTPS://Contoso.OpenAI.Azure.com/openai/",
        "http://127.0.0.1:8080/v1",
        "http://localhost:65535",
        " https://a.com\n",
        "https://a.com/x;y@z:1/%41~",
        "ftp://a.com",
        "https://",
        "https://user:pw@a.com",
        "https://a.com?x=1",
        "https://a.com/#f",
        "https://a.com:65536",
        "https://1.2.3.999",
        "https://xn--a.com",
        "https://a_b.com",
        "https://a--b.com",
        "https://-a.com",
        "https://a-.com",
        "https://[::1]:8080",
        "http://0x7f.1",
        "https://a.1",
        "https://a.com/a b",
        "https://a.com/ü",
        "http:a.com",
        "https:\\\\a.com",
        "a.com",
        "/relative",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    // Every whitespace and control character, around a value and alone.
    for (lo, hi) in
        modelgw_model::limits::WHITESPACE.into_iter().chain(modelgw_model::limits::CONTROL)
    {
        for c in [lo, hi] {
            values.extend([format!("{c}k"), format!("k{c}"), format!("k{c}k"), c.to_string()]);
        }
    }
    values
}

/// The gateway members rule at its limits needs that many distinct endpoints.
async fn endpoints(w: &World, n: usize) -> Vec<Value> {
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        let id = id_of(&w.h.create_endpoint(endpoint_body(&w.unique(12), KEY)).await);
        members.push(json!({"endpoint_id": id}));
    }
    members
}

/// The fields of request schema `name` that carry a rule, with their resolved schemas.
fn rules_of(doc: &Value, name: &str) -> Vec<(String, Value)> {
    let schema = &doc["components"]["schemas"][name];
    schema["properties"]
        .as_object()
        .expect("properties")
        .iter()
        .map(|(field, property)| (field.clone(), resolve(doc, property).clone()))
        .filter(|(_, property)| RULE_KEYWORDS.iter().any(|k| property.get(*k).is_some()))
        .collect()
}

/// Every documented rule of one request schema is the validator's rule: values at the
/// limits are accepted, values past them refused naming the field. One test per schema, each
/// with its own control plane, so they run in parallel.
async fn check_schema(name: &str) {
    let doc = document();
    let w = World::new().await;
    for (field, property) in rules_of(&doc, name) {
        check_property(&w, name, &field, &property).await;
    }
}

macro_rules! schema_rules_hold {
    ($($test:ident => $schema:literal),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                check_schema($schema).await;
            }
        )*

        #[test]
        fn every_request_schema_has_its_rules_test() {
            let tested = [$($schema),*];
            for schema in REQUEST_SCHEMAS {
                assert!(tested.contains(&schema), "{schema} has no rules test");
            }
        }
    };
}

schema_rules_hold! {
    rules_of_create_api_token_request => "CreateApiTokenRequest",
    rules_of_create_endpoint_request => "CreateEndpointRequest",
    rules_of_update_endpoint_request => "UpdateEndpointRequest",
    rules_of_create_key_request => "CreateKeyRequest",
    rules_of_update_key_request => "UpdateKeyRequest",
    rules_of_window_limits_input => "WindowLimitsInput",
    rules_of_key_limit_policy_input => "KeyLimitPolicyInput",
    rules_of_create_gateway_request => "CreateGatewayRequest",
    rules_of_update_gateway_request => "UpdateGatewayRequest",
    rules_of_gateway_member_input => "GatewayMemberInput",
    rules_of_routing_input => "RoutingInput",
    rules_of_quota_policy_input => "QuotaPolicyInput",
    rules_of_traces_input => "TracesInput",
    rules_of_create_data_plane_token_request => "CreateDataPlaneTokenRequest",
}

/// The rules the issue names are in the document (one that lost them would pass the
/// per-schema tests above).
#[test]
fn the_document_states_the_named_rules() {
    let doc = document();
    let checked: BTreeSet<String> = REQUEST_SCHEMAS
        .iter()
        .flat_map(|name| rules_of(&doc, name).into_iter().map(move |(f, _)| format!("{name}.{f}")))
        .collect();
    for expected in [
        "CreateEndpointRequest.api_key",
        "CreateEndpointRequest.region",
        "CreateEndpointRequest.endpoint",
        "CreateEndpointRequest.platform",
        "CreateEndpointRequest.auth",
        "UpdateEndpointRequest.api_key",
        "UpdateEndpointRequest.region",
        "CreateKeyRequest.name",
        "UpdateKeyRequest.name",
        "WindowLimitsInput.requests",
        "WindowLimitsInput.total_tokens",
        "KeyLimitPolicyInput.default_completion_tokens",
        "CreateGatewayRequest.name",
        "CreateGatewayRequest.endpoints",
        "UpdateGatewayRequest.name",
        "GatewayMemberInput.endpoint_id",
        "GatewayMemberInput.priority",
        "GatewayMemberInput.weight",
        "RoutingInput.strategy",
        "RoutingInput.request_timeout_ms",
        "QuotaPolicyInput.request_window_secs",
        "QuotaPolicyInput.token_window_secs",
        "QuotaPolicyInput.reserve_percent",
        "TracesInput.redact_fields",
        "TracesInput.max_payload_bytes",
        "TracesInput.retention_days",
        "TracesInput.max_count",
        "CreateApiTokenRequest.name",
        "CreateApiTokenRequest.role",
        "CreateApiTokenRequest.expires_in_seconds",
        "CreateDataPlaneTokenRequest.name",
        "CreateDataPlaneTokenRequest.max_data_planes",
    ] {
        assert!(checked.contains(expected), "{expected} has no rule in the document");
    }
}

async fn check_property(w: &World, schema: &str, field: &str, property: &Value) {
    // Integer ranges.
    if let (Some(min), Some(max)) = (property["minimum"].as_i64(), property["maximum"].as_i64()) {
        for ok in [min, max] {
            w.accepted(schema, field, json!(ok)).await;
        }
        for bad in [min - 1, max + 1] {
            w.refused(schema, field, json!(bad)).await;
        }
        return;
    }
    // Redacted field names: the item count, and each item's length.
    if field == "redact_fields" {
        let max = property["maxItems"].as_u64().expect("maxItems") as usize;
        let item = &property["items"];
        let (min_chars, max_chars) = (
            item["minLength"].as_u64().expect("minLength") as usize,
            item["maxLength"].as_u64().expect("maxLength") as usize,
        );
        let names: Vec<String> = (0..=max).map(|i| format!("f{i}")).collect();
        w.accepted(schema, field, json!(names[..max])).await;
        w.accepted(schema, field, json!([])).await;
        w.refused(schema, field, json!(names)).await;
        w.accepted(schema, field, json!(["k".repeat(max_chars), "k".repeat(min_chars)])).await;
        let (reply, _) = w.send(schema, field, json!(["ok", "k".repeat(max_chars + 1)])).await;
        assert_eq!(reply.error_fields(), ["traces.redact_fields[1]"], "{}", reply.text);
        let (reply, _) = w.send(schema, field, json!(["k".repeat(min_chars - 1)])).await;
        assert_eq!(reply.error_fields(), ["traces.redact_fields[0]"], "{}", reply.text);
        return;
    }
    // Arrays: only gateway members are sent here (the import's ids are in their own test).
    if property.get("maxItems").is_some() || property.get("minItems").is_some() {
        let max = property["maxItems"].as_u64().expect("maxItems") as usize;
        let min = property["minItems"].as_u64().unwrap_or(0) as usize;
        let members = endpoints(w, max + 1).await;
        w.accepted(schema, field, json!(members[..max])).await;
        w.accepted(schema, field, json!(members[..min])).await;
        w.refused(schema, field, json!(members)).await;
        return;
    }
    // Enums: every value accepted; near misses refused.
    if let Some(values) = property["enum"].as_array() {
        for value in values.iter().filter_map(Value::as_str) {
            w.accepted(schema, field, json!(value)).await;
            for near in [
                format!(" {value}"),
                format!("{value} "),
                value.to_uppercase(),
                format!("{value}x"),
            ] {
                w.refused(schema, field, json!(near)).await;
            }
        }
        w.refused(schema, field, json!("")).await;
        return;
    }
    // Strings: at `maxLength` accepted, past it refused, and the pattern decides the corpus.
    if let Some(max) = property["maxLength"].as_u64() {
        let max = max as usize;
        let at_limit = if field == "api_key" { "k".repeat(max) } else { w.unique(max) };
        assert!(document_accepts(property, &at_limit), "{schema}.{field}: limit value");
        w.accepted(schema, field, json!(at_limit)).await;
        w.refused(schema, field, json!(w.unique(max + 1))).await;
    }
    let mut values = corpus();
    if field == "endpoint_id" {
        // The only ids that can be accepted are those of existing endpoints.
        values.extend([w.endpoint.clone(), w.endpoint.to_uppercase(), w.endpoint.replace('-', "")]);
        values.push(format!(" {}", w.endpoint));
    }
    for value in values {
        // Names must be unique: a valid one gets a fresh suffix if it stays valid with it.
        let value = if field == "name" && document_accepts(property, &value) {
            let suffixed = format!("{value}{}", w.unique(8));
            if document_accepts(property, &suffixed) { suffixed } else { value }
        } else {
            value
        };
        if field == "endpoint_id"
            && document_accepts(property, &value)
            && value.to_lowercase() != w.endpoint
        {
            // A well-formed id of no endpoint: a 422 for another reason, covered elsewhere.
            continue;
        }
        if document_accepts(property, &value) {
            w.accepted(schema, field, json!(value)).await;
        } else {
            w.refused(schema, field, json!(value)).await;
        }
    }
}

/// The import's rules: at least one and at most `maxItems` ids, `auth` from its enum. With no
/// discovery, any id is a 422 naming that id; the counts and `auth` are named themselves.
#[tokio::test]
async fn import_rules_are_the_validators_rules() {
    let doc = document();
    let properties = &doc["components"]["schemas"]["ImportRequest"]["properties"];
    let ids = &properties["deployment_ids"];
    let (min, max) = (
        ids["minItems"].as_u64().expect("minItems") as usize,
        ids["maxItems"].as_u64().expect("maxItems") as usize,
    );
    assert_eq!((min, max), (1, modelgw_model::limits::MAX_IMPORT_IDS));
    let h = Harness::start().await;
    let import = async |body: Value| -> Reply {
        let reply = h.call(Method::POST, "/api/v1/azure/imports", Some(body)).await;
        reply.expect(StatusCode::UNPROCESSABLE_ENTITY)
    };
    let id = |i: usize| {
        format!(
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.CognitiveServices/accounts/a/deployments/d{i}"
        )
    };
    for n in [min, max] {
        let reply = import(json!({"deployment_ids": (0..n).map(id).collect::<Vec<_>>()})).await;
        assert!(
            !reply.error_fields().contains(&"deployment_ids".to_owned()),
            "{n}: {}",
            reply.text
        );
        assert!(reply.error_fields().contains(&"deployment_ids[0]".to_owned()), "{}", reply.text);
    }
    for n in [min - 1, max + 1] {
        let reply = import(json!({"deployment_ids": (0..n).map(id).collect::<Vec<_>>()})).await;
        assert_eq!(reply.error_fields(), ["deployment_ids"], "{n}");
    }
    let modes = properties["auth"]["enum"].as_array().expect("auth enum");
    for mode in modes.iter().filter_map(Value::as_str) {
        let reply = import(json!({"deployment_ids": [id(0)], "auth": mode})).await;
        assert!(!reply.error_fields().contains(&"auth".to_owned()), "{mode}: {}", reply.text);
        let reply = import(json!({"deployment_ids": [id(0)], "auth": format!("{mode} ")})).await;
        assert_eq!(reply.error_fields(), ["auth"], "{mode}");
    }
}

/// The cross-field rules: `auth` decides whether `api_key` is required, and a partial update
/// must set a field. The document states them as `oneOf`/`anyOf`; the API answers accordingly.
#[tokio::test]
async fn auth_decides_whether_api_key_is_required() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["CreateEndpointRequest"]["oneOf"][0]["required"], json!(["api_key"]));
    assert_eq!(schemas["CreateEndpointRequest"]["oneOf"][1]["required"], json!(["auth"]));
    assert!(schemas["UpdateEndpointRequest"]["allOf"][1]["anyOf"].is_array());
    assert!(schemas["UpdateGatewayRequest"]["anyOf"].is_array());

    let w = World::new().await;
    let mut no_key = endpoint_body(&w.unique(12), KEY);
    no_key.as_object_mut().expect("object").remove("api_key");
    let create =
        async |body: Value| w.h.call(Method::POST, "/api/v1/inference-endpoints", Some(body)).await;
    create(no_key.clone()).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
    let mut null_key = no_key.clone();
    null_key["api_key"] = Value::Null;
    create(null_key.clone()).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
    null_key["auth"] = json!("entra");
    null_key["name"] = json!(w.unique(12));
    create(null_key).await.expect(StatusCode::CREATED);
    let mut entra_with_key = endpoint_body(&w.unique(12), KEY);
    entra_with_key["auth"] = json!("entra");
    create(entra_with_key).await.expect(StatusCode::UNPROCESSABLE_ENTITY);

    let patch = async |body: Value| {
        let path = format!("/api/v1/inference-endpoints/{}", w.endpoint);
        w.h.call(Method::PATCH, &path, Some(body)).await
    };
    patch(json!({"auth": "api_key"})).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
    patch(json!({"auth": "entra", "api_key": KEY})).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
    patch(json!({"name": null})).await.expect(StatusCode::UNPROCESSABLE_ENTITY);
    patch(json!({"auth": "entra", "api_key": null})).await.expect(StatusCode::OK);
    patch(json!({"api_key": KEY})).await.expect(StatusCode::OK);
    let path = format!("/api/v1/gateways/{}", w.gateway);
    let reply = w.h.call(Method::PATCH, &path, Some(json!({"routing": null}))).await;
    reply.expect(StatusCode::UNPROCESSABLE_ENTITY);
}
