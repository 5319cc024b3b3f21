//! Every kind of bad input: its status, a problem body naming the field, and nothing written.

use axum::body::Body;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Harness, Reply, endpoint_body, id_of};

const KEY: &str = "azkey-SECRET-0123456789abcdef-9999";

/// A harness with one endpoint `eus`, one gateway `gpt-4o` using it, and one key.
struct World {
    h: Harness,
    endpoint: String,
    gateway: String,
}

impl World {
    async fn new() -> World {
        let h = Harness::start().await;
        let endpoint = id_of(&h.create_endpoint(endpoint_body("eus", KEY)).await);
        let gateway = id_of(
            &h.create_gateway(json!({"name": "gpt-4o", "endpoints": [{"endpoint_id": endpoint}]}))
                .await,
        );
        h.call(
            Method::POST,
            &format!("/api/v1/gateways/{gateway}/keys"),
            Some(json!({"name": "k"})),
        )
        .await
        .expect(StatusCode::CREATED);
        World { h, endpoint, gateway }
    }

    fn endpoint_path(&self) -> String {
        format!("/api/v1/inference-endpoints/{}", self.endpoint)
    }

    fn gateway_path(&self) -> String {
        format!("/api/v1/gateways/{}", self.gateway)
    }

    /// Sends the request and checks the rejection: `status`, problem+json, `field` among
    /// `errors[].field` (when given), the key never in the body, and the version and every
    /// list unchanged.
    async fn rejected(
        &self,
        status: StatusCode,
        field: Option<&str>,
        send: impl AsyncFnOnce(&Harness) -> Reply,
    ) -> Reply {
        let version = self.h.version().await;
        let lists = self.h.lists().await;
        let reply = send(&self.h).await;
        assert_eq!(reply.status, status, "body: {}", reply.text);
        assert_eq!(reply.content_type(), "application/problem+json", "body: {}", reply.text);
        let problem = reply.json();
        assert_eq!(problem["status"], status.as_u16());
        assert!(problem["type"].is_string() && problem["title"].is_string(), "{problem}");
        assert!(problem["detail"].is_string(), "{problem}");
        if let Some(field) = field {
            assert!(
                reply.error_fields().iter().any(|f| f == field),
                "expected errors[].field {field:?}, got {:?}",
                reply.error_fields()
            );
        }
        assert!(!reply.text.contains(KEY), "a problem echoed the API key: {}", reply.text);
        assert!(!reply.text.contains("SECRET"), "a problem echoed part of the key: {}", reply.text);
        assert_eq!(self.h.version().await, version, "the version moved");
        assert_eq!(self.h.lists().await, lists, "the lists changed");
        reply
    }

    async fn post_endpoint(&self, status: StatusCode, field: &str, body: Value) -> Reply {
        self.rejected(status, Some(field), async |h| {
            h.call(Method::POST, "/api/v1/inference-endpoints", Some(body)).await
        })
        .await
    }

    async fn patch_endpoint(&self, status: StatusCode, field: &str, body: Value) -> Reply {
        let path = self.endpoint_path();
        self.rejected(status, Some(field), async |h| h.call(Method::PATCH, &path, Some(body)).await)
            .await
    }

    async fn post_gateway(&self, status: StatusCode, field: &str, body: Value) -> Reply {
        self.rejected(status, Some(field), async |h| {
            h.call(Method::POST, "/api/v1/gateways", Some(body)).await
        })
        .await
    }

    async fn patch_gateway(&self, status: StatusCode, field: &str, body: Value) -> Reply {
        let path = self.gateway_path();
        self.rejected(status, Some(field), async |h| h.call(Method::PATCH, &path, Some(body)).await)
            .await
    }
}

fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

fn without(mut body: Value, field: &str) -> Value {
    body.as_object_mut().expect("object").remove(field);
    body
}

const UNPROCESSABLE: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_body() {
    let w = World::new().await;
    for (method, path) in [
        (Method::POST, "/api/v1/inference-endpoints".to_owned()),
        (Method::PATCH, w.endpoint_path()),
        (Method::POST, "/api/v1/gateways".to_owned()),
        (Method::PATCH, w.gateway_path()),
        (Method::POST, format!("{}/keys", w.gateway_path())),
    ] {
        for raw in [
            format!(r#"{{"name": "x", "api_key": "{KEY}""#),
            format!(r#"{{"api_key": "{KEY}",}}"#),
            String::new(),
        ] {
            let reply = w
                .rejected(StatusCode::BAD_REQUEST, Some("body"), async |h| {
                    h.call_raw(method.clone(), &path, Some("application/json"), raw).await
                })
                .await;
            assert!(
                reply.json()["detail"].as_str().expect("detail").contains("line"),
                "{}",
                reply.text
            );
        }
    }
}

#[tokio::test]
async fn a_non_json_content_type_is_a_415() {
    let w = World::new().await;
    let body = endpoint_body("new", KEY).to_string();
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        w.rejected(StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("content-type"), async |h| {
            h.call_raw(Method::POST, "/api/v1/inference-endpoints", content_type, body.clone())
                .await
        })
        .await;
    }
    let path = w.gateway_path();
    w.rejected(StatusCode::UNSUPPORTED_MEDIA_TYPE, None, async |h| {
        h.call_raw(Method::PATCH, &path, Some("text/plain"), r#"{"name":"x"}"#).await
    })
    .await;
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_a_413() {
    let w = World::new().await;
    let big = json!({"name": "x".repeat(1024 * 1024 + 1), "endpoints": []}).to_string();
    w.rejected(StatusCode::PAYLOAD_TOO_LARGE, Some("body"), async |h| {
        h.call_raw(Method::POST, "/api/v1/gateways", Some("application/json"), big.clone()).await
    })
    .await;
    // Also without a Content-Length the server can trust: a streamed body.
    let stream = futures_stream(big.into_bytes());
    w.rejected(StatusCode::PAYLOAD_TOO_LARGE, Some("body"), async |h| {
        h.call_raw(Method::POST, "/api/v1/gateways", Some("application/json"), stream).await
    })
    .await;
}

/// A body without a known length, sent in 64 KiB chunks.
fn futures_stream(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        bytes.chunks(64 * 1024).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    Body::from_stream(tokio_stream::iter(chunks))
}

#[tokio::test]
async fn unknown_fields_are_422_naming_them() {
    let w = World::new().await;
    let reply = w
        .post_endpoint(
            UNPROCESSABLE,
            "apikey",
            without(with(endpoint_body("n", KEY), "apikey", json!(KEY)), "api_key"),
        )
        .await;
    assert!(
        reply.json()["errors"][0]["reason"].as_str().expect("reason").contains("unknown field")
    );
    w.patch_endpoint(UNPROCESSABLE, "base_url", json!({"base_url": "https://x.example"})).await;
    w.post_gateway(UNPROCESSABLE, "members", json!({"name": "g2", "members": []})).await;
    w.post_gateway(
        UNPROCESSABLE,
        "endpoints[0].endpoint",
        json!({"name": "g2", "endpoints": [{"endpoint": w.endpoint}]}),
    )
    .await;
    w.patch_gateway(
        UNPROCESSABLE,
        "endpoints[0].wieght",
        json!({"endpoints": [{"endpoint_id": w.endpoint, "wieght": 2}]}),
    )
    .await;
    let keys = format!("{}/keys", w.gateway_path());
    w.rejected(UNPROCESSABLE, Some("key"), async |h| {
        h.call(Method::POST, &keys, Some(json!({"name": "k2", "key": "chosen"}))).await
    })
    .await;
}

#[tokio::test]
async fn missing_fields_are_422_naming_them() {
    let w = World::new().await;
    for field in [
        "name",
        "platform",
        "endpoint",
        "deployment",
        "model_name",
        "model_version",
        "region",
        "api_key",
    ] {
        w.post_endpoint(UNPROCESSABLE, field, without(endpoint_body("new", KEY), field)).await;
    }
    w.post_gateway(UNPROCESSABLE, "endpoints", json!({"name": "g2"})).await;
    w.post_gateway(UNPROCESSABLE, "name", json!({"endpoints": []})).await;
    w.post_gateway(
        UNPROCESSABLE,
        "endpoints[0].endpoint_id",
        json!({"name": "g2", "endpoints": [{"weight": 2}]}),
    )
    .await;
    let keys = format!("{}/keys", w.gateway_path());
    w.rejected(UNPROCESSABLE, Some("name"), async |h| {
        h.call(Method::POST, &keys, Some(json!({}))).await
    })
    .await;
}

#[tokio::test]
async fn wrong_types_are_422_with_the_path() {
    let w = World::new().await;
    w.post_endpoint(
        UNPROCESSABLE,
        "api_key",
        with(endpoint_body("new", KEY), "api_key", json!({"value": KEY})),
    )
    .await;
    w.post_endpoint(
        UNPROCESSABLE,
        "api_key",
        with(endpoint_body("new", KEY), "api_key", json!([KEY])),
    )
    .await;
    w.post_endpoint(UNPROCESSABLE, "name", with(endpoint_body("new", KEY), "name", json!(42)))
        .await;
    w.post_endpoint(UNPROCESSABLE, "body", json!([endpoint_body("new", KEY)])).await;
    let member = json!({"endpoint_id": w.endpoint, "weight": "heavy"});
    let reply = w
        .post_gateway(
            UNPROCESSABLE,
            "endpoints[0].weight",
            json!({"name": "g2", "endpoints": [member]}),
        )
        .await;
    assert!(!reply.text.contains("heavy"), "values are not echoed: {}", reply.text);
    w.post_gateway(
        UNPROCESSABLE,
        "endpoints[0].enabled",
        json!({"name": "g2", "endpoints": [{"endpoint_id": w.endpoint, "enabled": "yes"}]}),
    )
    .await;
    w.post_gateway(
        UNPROCESSABLE,
        "endpoints[0].priority",
        json!({"name": "g2", "endpoints": [{"endpoint_id": w.endpoint, "priority": 1.5}]}),
    )
    .await;
    w.post_gateway(
        UNPROCESSABLE,
        "endpoints",
        json!({"name": "g2", "endpoints": {"endpoint_id": w.endpoint}}),
    )
    .await;
    w.patch_endpoint(UNPROCESSABLE, "api_key", json!({"api_key": 12345})).await;
    w.patch_gateway(UNPROCESSABLE, "name", json!({"name": ["gpt"]})).await;
}

#[tokio::test]
async fn invalid_endpoint_fields_are_422_naming_each() {
    let w = World::new().await;
    let base = endpoint_body("new", KEY);
    for (field, value) in [
        ("name", json!("   ")),
        ("platform", json!("aws_bedrock")),
        ("endpoint", json!("contoso.openai.azure.com")),
        ("endpoint", json!("ftp://contoso.openai.azure.com")),
        ("endpoint", json!("https://contoso.openai.azure.com/?api-version=1")),
        ("endpoint", json!("https://contoso.openai.azure.com/#frag")),
        ("endpoint", json!("https://user:pw@contoso.openai.azure.com")),
        ("deployment", json!("")),
        ("model_name", json!(" ")),
        ("model_version", json!("")),
        ("region", json!("\t")),
        ("api_key", json!("")),
        ("api_key", json!("   ")),
        ("api_key", json!(format!("{KEY} with spaces"))),
    ] {
        w.post_endpoint(UNPROCESSABLE, field, with(base.clone(), field, value.clone())).await;
        w.patch_endpoint(UNPROCESSABLE, field, json!({ field: value })).await;
    }
}

#[tokio::test]
async fn all_validation_errors_are_reported_at_once() {
    let w = World::new().await;
    let body = json!({
        "name": "", "platform": "nope", "endpoint": "nope", "deployment": "",
        "model_name": "", "model_version": "", "region": "", "api_key": "",
    });
    let reply = w.post_endpoint(UNPROCESSABLE, "name", body).await;
    let mut fields = reply.error_fields();
    fields.sort();
    assert_eq!(
        fields,
        [
            "api_key",
            "deployment",
            "endpoint",
            "model_name",
            "model_version",
            "name",
            "platform",
            "region"
        ]
    );

    let reply = w
        .post_gateway(
            UNPROCESSABLE,
            "name",
            json!({"name": "auto", "endpoints": [
                {"endpoint_id": w.endpoint, "weight": 0},
                {"endpoint_id": w.endpoint, "priority": 101},
                {"endpoint_id": "not-a-uuid", "weight": 1001},
            ]}),
        )
        .await;
    assert_eq!(
        reply.error_fields(),
        [
            "name",
            "endpoints[0].weight",
            "endpoints[1].priority",
            "endpoints[1].endpoint_id",
            "endpoints[2].weight",
            "endpoints[2].endpoint_id",
        ]
    );
}

#[tokio::test]
async fn invalid_gateways_are_422_naming_the_field() {
    let w = World::new().await;
    let e = w.endpoint.clone();
    for (field, body) in [
        ("name", json!({"name": "auto", "endpoints": []})),
        ("name", json!({"name": "Auto", "endpoints": []})),
        ("name", json!({"name": "", "endpoints": []})),
        ("name", json!({"name": "..", "endpoints": []})),
        ("name", json!({"name": "gpt 4o", "endpoints": []})),
        ("name", json!({"name": "gpt/4o", "endpoints": []})),
        ("name", json!({"name": "x".repeat(65), "endpoints": []})),
        (
            "endpoints[0].weight",
            json!({"name": "g2", "endpoints": [{"endpoint_id": e, "weight": 0}]}),
        ),
        (
            "endpoints[0].weight",
            json!({"name": "g2", "endpoints": [{"endpoint_id": e, "weight": 1001}]}),
        ),
        (
            "endpoints[0].priority",
            json!({"name": "g2", "endpoints": [{"endpoint_id": e, "priority": -1}]}),
        ),
        (
            "endpoints[0].priority",
            json!({"name": "g2", "endpoints": [{"endpoint_id": e, "priority": 101}]}),
        ),
        ("endpoints[0].endpoint_id", json!({"name": "g2", "endpoints": [{"endpoint_id": "123"}]})),
        (
            "endpoints[1].endpoint_id",
            json!({"name": "g2", "endpoints": [{"endpoint_id": e}, {"endpoint_id": e}]}),
        ),
    ] {
        w.post_gateway(UNPROCESSABLE, field, body.clone()).await;
        let mut patch = body;
        if patch["name"] == "g2" {
            patch.as_object_mut().expect("object").remove("name");
        }
        w.patch_gateway(UNPROCESSABLE, field, patch).await;
    }
}

#[tokio::test]
async fn an_unknown_member_endpoint_is_422_naming_the_member() {
    let w = World::new().await;
    let unknown = modelgw_model::EndpointId::new().to_string();
    let members = json!([{"endpoint_id": w.endpoint}, {"endpoint_id": unknown}]);
    let reply = w
        .post_gateway(
            UNPROCESSABLE,
            "endpoints[1].endpoint_id",
            json!({"name": "g2", "endpoints": members}),
        )
        .await;
    assert!(reply.text.contains(&unknown), "names the unknown id: {}", reply.text);
    w.patch_gateway(UNPROCESSABLE, "endpoints[1].endpoint_id", json!({"endpoints": members})).await;
}

#[tokio::test]
async fn empty_patches_are_rejected() {
    let w = World::new().await;
    w.patch_endpoint(UNPROCESSABLE, "body", json!({})).await;
    w.patch_gateway(UNPROCESSABLE, "body", json!({})).await;
}

#[tokio::test]
async fn duplicate_names_are_409() {
    let w = World::new().await;
    let reply = w.post_endpoint(StatusCode::CONFLICT, "name", endpoint_body("eus", KEY)).await;
    assert_eq!(reply.json()["type"], "urn:modelgw:problem:conflict");
    w.post_gateway(StatusCode::CONFLICT, "name", json!({"name": "gpt-4o", "endpoints": []})).await;

    let other = id_of(&w.h.create_endpoint(endpoint_body("weu", KEY)).await);
    let other_gw = id_of(&w.h.create_gateway(json!({"name": "other", "endpoints": []})).await);
    let path = format!("/api/v1/inference-endpoints/{other}");
    w.rejected(StatusCode::CONFLICT, Some("name"), async |h| {
        h.call(Method::PATCH, &path, Some(json!({"name": "eus"}))).await
    })
    .await;
    let path = format!("/api/v1/gateways/{other_gw}");
    w.rejected(StatusCode::CONFLICT, Some("name"), async |h| {
        h.call(Method::PATCH, &path, Some(json!({"name": "gpt-4o"}))).await
    })
    .await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_in_the_path_are_404() {
    let w = World::new().await;
    let unknown = "0190a3b4-0000-7000-8000-000000000000";
    let key_path = |g: &str, k: &str| format!("/api/v1/gateways/{g}/keys/{k}");
    let mut cases: Vec<(Method, String, Option<Value>)> = Vec::new();
    for id in [unknown, "not-a-uuid"] {
        cases.extend([
            (Method::GET, format!("/api/v1/inference-endpoints/{id}"), None),
            (
                Method::PATCH,
                format!("/api/v1/inference-endpoints/{id}"),
                Some(json!({"region": "x"})),
            ),
            (Method::DELETE, format!("/api/v1/inference-endpoints/{id}"), None),
            (Method::GET, format!("/api/v1/gateways/{id}"), None),
            (Method::PATCH, format!("/api/v1/gateways/{id}"), Some(json!({"name": "x"}))),
            (Method::DELETE, format!("/api/v1/gateways/{id}"), None),
            (Method::GET, format!("/api/v1/gateways/{id}/keys"), None),
            (Method::POST, format!("/api/v1/gateways/{id}/keys"), Some(json!({"name": "k"}))),
            (Method::DELETE, key_path(id, unknown), None),
            (Method::DELETE, key_path(&w.gateway, id), None),
        ]);
    }
    for (method, path, body) in cases {
        let reply = w
            .rejected(StatusCode::NOT_FOUND, None, async |h| {
                h.call(method.clone(), &path, body).await
            })
            .await;
        assert_eq!(reply.json()["type"], "urn:modelgw:problem:not-found", "{method} {path}");
    }
}

#[tokio::test]
async fn a_bad_force_parameter_is_a_400() {
    let w = World::new().await;
    for query in ["force=maybe", "forse=true"] {
        let path = format!("{}?{query}", w.endpoint_path());
        w.rejected(StatusCode::BAD_REQUEST, Some("query"), async |h| {
            h.call(Method::DELETE, &path, None).await
        })
        .await;
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let w = World::new().await;
    for path in ["/api/v1/nope", "/api/v1/inference-endpoints/x/y", "/api/v2/gateways", "/"] {
        let reply = w.rejected(StatusCode::NOT_FOUND, None, async |h| h.get(path).await).await;
        assert_eq!(reply.json()["type"], "urn:modelgw:problem:not-found");
    }
    let path = w.endpoint_path();
    let reply = w
        .rejected(StatusCode::METHOD_NOT_ALLOWED, None, async |h| {
            h.call(Method::PUT, &path, Some(endpoint_body("eus", KEY))).await
        })
        .await;
    let allow = reply.headers.get(http::header::ALLOW).expect("Allow").to_str().expect("ascii");
    for m in ["GET", "PATCH", "DELETE"] {
        assert!(allow.contains(m), "Allow: {allow}");
    }
    w.rejected(StatusCode::METHOD_NOT_ALLOWED, None, async |h| {
        h.call(Method::DELETE, "/api/v1/status", None).await
    })
    .await;
    w.rejected(StatusCode::METHOD_NOT_ALLOWED, None, async |h| {
        h.call(Method::POST, "/api/v1/openapi.json", Some(json!({}))).await
    })
    .await;
}
