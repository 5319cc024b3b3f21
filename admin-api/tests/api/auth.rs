//! Every route requires the admin token (except the OpenAPI document).

use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use serde_json::json;

use crate::harness::{ADMIN_TOKEN, Harness, endpoint_body, id_of};

#[tokio::test]
async fn every_route_needs_the_admin_token() {
    let h = Harness::start().await;
    let e = id_of(&h.create_endpoint(endpoint_body("eus", "azkey-0123456789abcdef")).await);
    let g = id_of(
        &h.create_gateway(json!({"name": "gpt-4o", "endpoints": [{"endpoint_id": e}]})).await,
    );
    let k = id_of(
        &h.call(Method::POST, &format!("/api/v1/gateways/{g}/keys"), Some(json!({"name": "k"})))
            .await
            .expect(StatusCode::CREATED)
            .json(),
    );
    let version = h.version().await;
    let lists = h.lists().await;

    let routes: Vec<(Method, String)> = vec![
        (Method::POST, "/api/v1/inference-endpoints".into()),
        (Method::GET, "/api/v1/inference-endpoints".into()),
        (Method::GET, format!("/api/v1/inference-endpoints/{e}")),
        (Method::PATCH, format!("/api/v1/inference-endpoints/{e}")),
        (Method::DELETE, format!("/api/v1/inference-endpoints/{e}?force=true")),
        (Method::POST, "/api/v1/gateways".into()),
        (Method::GET, "/api/v1/gateways".into()),
        (Method::GET, format!("/api/v1/gateways/{g}")),
        (Method::PATCH, format!("/api/v1/gateways/{g}")),
        (Method::DELETE, format!("/api/v1/gateways/{g}")),
        (Method::POST, format!("/api/v1/gateways/{g}/keys")),
        (Method::GET, format!("/api/v1/gateways/{g}/keys")),
        (Method::DELETE, format!("/api/v1/gateways/{g}/keys/{k}")),
        (Method::GET, "/api/v1/status".into()),
        // Unknown routes and methods too: no route discovery without the token.
        (Method::GET, "/api/v1/nope".into()),
        (Method::PUT, format!("/api/v1/gateways/{g}")),
    ];
    let credentials: [Option<String>; 6] = [
        None,
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some("Bearer wrong".into()),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(ADMIN_TOKEN.into()),
        Some("Bearer ".into()),
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
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {credential:?}"
            );
            assert_eq!(reply.content_type(), "application/problem+json");
            let challenge = reply
                .headers
                .get(header::WWW_AUTHENTICATE)
                .expect("WWW-Authenticate")
                .to_str()
                .expect("ascii");
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            assert_eq!(reply.json()["type"], "urn:modelgw:problem:unauthorized");
            assert!(!reply.text.contains(ADMIN_TOKEN), "token echoed: {}", reply.text);
        }
    }
    assert_eq!(h.version().await, version, "nothing was written");
    assert_eq!(h.lists().await, lists, "nothing was written");
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
