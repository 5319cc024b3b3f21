//! Every route requires a token that authenticates someone (except the OpenAPI document): the
//! bootstrap admin token, a live API token, or a JWT a configured verifier accepts.

use std::sync::Arc;

use axum::body::Body;
use chrono::{Duration, Utc};
use http::{Method, Request, StatusCode, header};
use modelgw_admin_api::identity::{
    BearerRejected, BearerVerification, BearerVerifier, Principal, PrincipalKind, Role,
};
use modelgw_control_plane::store::{AuditContext, NewApiToken};
use serde_json::json;

use crate::harness::{ADMIN_TOKEN, Harness, Reply, endpoint_body, id_of};

/// `path` with every `{param}` replaced by `id`.
fn concrete(path: &str, id: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { id } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[track_caller]
fn assert_unauthorized(reply: &Reply, what: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {}", reply.text);
    assert_eq!(reply.content_type(), "application/problem+json", "{what}");
    let challenge = reply
        .headers
        .get(header::WWW_AUTHENTICATE)
        .expect("WWW-Authenticate")
        .to_str()
        .expect("ascii");
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(reply.json()["type"], "urn:modelgw:problem:unauthorized", "{what}");
}

#[tokio::test]
async fn every_route_needs_a_valid_token() {
    let h = Harness::start().await;
    let e = id_of(&h.create_endpoint(endpoint_body("eus", "azkey-0123456789abcdef")).await);
    let (revoked_id, revoked) = h.api_token("gone", "admin").await;
    h.call(Method::DELETE, &format!("/api/v1/api-tokens/{revoked_id}"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    let (_, expired) = h
        .store
        .create_api_token(
            NewApiToken {
                name: "old".into(),
                role: "admin".into(),
                expires_at: Some(Utc::now() - Duration::seconds(1)),
            },
            &AuditContext::system("test"),
        )
        .await
        .expect("token");
    let version = h.version().await;
    let lists = h.lists().await;
    let audited = h.audit_log().await.len();

    let mut routes: Vec<(Method, String)> = modelgw_admin_api::route_roles()
        .into_iter()
        .map(|r| (r.method, concrete(&r.path, &e)))
        .collect();
    // Unknown routes and methods too: no route discovery without a token.
    routes.push((Method::GET, "/api/v1/nope".into()));
    routes.push((Method::PUT, format!("/api/v1/gateways/{e}")));
    let credentials: Vec<Option<String>> = vec![
        None,
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some("Bearer wrong".into()),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(ADMIN_TOKEN.into()),
        Some("Bearer ".into()),
        Some(format!("Bearer {}", revoked)),
        Some(format!("Bearer {}", expired.expose())),
        // A JWT, and no verifier configured.
        Some("Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln".into()),
    ];
    for (method, path) in &routes {
        for credential in &credentials {
            let mut request = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(c) = credential {
                request = request.header(header::AUTHORIZATION, c);
            }
            let body = Body::from(json!({"name": "changed", "endpoints": []}).to_string());
            let reply = h.send(request.body(body).expect("request")).await;
            assert_unauthorized(&reply, &format!("{method} {path} with {credential:?}"));
            for secret in [ADMIN_TOKEN, revoked.as_str(), expired.expose()] {
                assert!(!reply.text.contains(secret), "token echoed: {}", reply.text);
            }
        }
    }
    assert_eq!(h.version().await, version, "nothing was written");
    assert_eq!(h.lists().await, lists, "nothing was written");
    assert_eq!(h.audit_log().await.len(), audited, "nothing was audited");
}

#[tokio::test]
async fn a_token_stops_working_when_revoked_or_expired() {
    let h = Harness::start().await;
    let (id, token) = h.api_token("ci", "viewer").await;
    h.call_as(&token, Method::GET, "/api/v1/status", None).await.expect(StatusCode::OK);
    h.call(Method::DELETE, &format!("/api/v1/api-tokens/{id}"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    let reply = h.call_as(&token, Method::GET, "/api/v1/status", None).await;
    assert_unauthorized(&reply, "revoked");

    // Expiry: one in an hour works, one a second ago does not.
    for (name, expires_at, status) in [
        ("later", Utc::now() + Duration::hours(1), StatusCode::OK),
        ("earlier", Utc::now() - Duration::seconds(1), StatusCode::UNAUTHORIZED),
    ] {
        let (_, token) = h
            .store
            .create_api_token(
                NewApiToken {
                    name: name.into(),
                    role: "viewer".into(),
                    expires_at: Some(expires_at),
                },
                &AuditContext::system("test"),
            )
            .await
            .expect("token");
        let reply = h.call_as(token.expose(), Method::GET, "/api/v1/status", None).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.text);
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let h = Harness::start().await;
    let request = Request::builder()
        .uri("/api/v1/status")
        .header(header::AUTHORIZATION, format!("bearer {ADMIN_TOKEN}"))
        .body(Body::empty())
        .expect("request");
    h.send(request).await.expect(StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_document_is_public() {
    let h = Harness::start().await;
    let request =
        Request::builder().uri("/api/v1/openapi.json").body(Body::empty()).expect("request");
    let reply = h.send(request).await.expect(StatusCode::OK);
    assert_eq!(reply.content_type(), "application/json");
    assert_eq!(reply.json(), serde_json::to_value(modelgw_admin_api::openapi()).expect("json"));
}

/// The probes answer without a token; `/readyz` follows the database, `/healthz` does not.
#[tokio::test]
async fn the_probes_are_public_and_readiness_follows_the_database() {
    let h = Harness::start().await;
    let get = |path: &str| Request::builder().uri(path).body(Body::empty()).expect("request");
    assert_eq!(h.send(get("/healthz")).await.expect(StatusCode::OK).text, "ok\n");
    assert_eq!(h.send(get("/readyz")).await.expect(StatusCode::OK).text, "ready\n");
    h.store.close().await;
    let not_ready = h.send(get("/readyz")).await.expect(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.text, "database unavailable\n", "no detail of the database");
    h.send(get("/healthz")).await.expect(StatusCode::OK);
}

/// Accepts one JWT as an OpenID Connect operator; refuses every other.
struct FakeOidc;

const GOOD_JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

impl BearerVerifier for FakeOidc {
    fn verify<'a>(&'a self, token: &'a str) -> BearerVerification<'a> {
        Box::pin(async move {
            if token == GOOD_JWT {
                Ok(Principal {
                    kind: PrincipalKind::Oidc { issuer: "https://login.example".into() },
                    name: "alice".into(),
                    role: Role::Operator,
                })
            } else {
                Err(BearerRejected::invalid("bad signature"))
            }
        })
    }
}

#[tokio::test]
async fn jwts_go_to_the_configured_verifier_and_its_principal_acts_with_its_role() {
    let h = Harness::start_with_verifier(Arc::new(FakeOidc)).await;
    let created = h
        .call_as(
            GOOD_JWT,
            Method::POST,
            "/api/v1/inference-endpoints",
            Some(endpoint_body("eus", "azkey-0123456789abcdef")),
        )
        .await
        .expect(StatusCode::CREATED);
    let log = h.audit_log().await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["actor"], "oidc:alice");
    assert_eq!(log[0]["entity_id"], created.json()["id"]);
    // Its role is operator: tokens are not its to make.
    let reply = h
        .call_as(
            GOOD_JWT,
            Method::POST,
            "/api/v1/api-tokens",
            Some(json!({"name": "x", "role": "viewer"})),
        )
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["required_role"], "admin");
    // A JWT the verifier refuses, and one that is not even shaped like one, get 401.
    let bad = GOOD_JWT.replace("c2ln", "Zm9v");
    assert_unauthorized(&h.call_as(&bad, Method::GET, "/api/v1/status", None).await, "refused JWT");
    // The bootstrap token still works beside it.
    h.get("/api/v1/status").await.expect(StatusCode::OK);
}
