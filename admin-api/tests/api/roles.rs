//! Each role can do exactly what it should: every route of the role table, called with a
//! token of every role, succeeds when the role includes the route's and is refused with a 403
//! naming the required role otherwise, changing nothing.
//!
//! The policy is stated here independently of the table (`expected_role`), so a route given
//! the wrong role fails, and every route needs a fixture here, so a new route fails until it is
//! covered.

use http::{Method, StatusCode};
use modelgw_admin_api::identity::Role;
use serde_json::{Value, json};

use crate::harness::{Harness, endpoint_body, id_of};

/// The policy: `viewer` reads; `operator` also changes endpoints, gateways, keys and
/// runs Azure discovery, import and proposals and resets endpoint health and key usage; `admin` also manages
/// API tokens and data-plane tokens.
fn expected_role(method: &Method, path: &str) -> Role {
    if method == Method::GET {
        Role::Viewer
    } else if path.starts_with("/api/v1/api-tokens")
        || path.starts_with("/api/v1/data-plane-tokens")
    {
        Role::Admin
    } else {
        Role::Operator
    }
}

#[test]
fn the_role_table_is_the_policy() {
    for route in modelgw_admin_api::route_roles() {
        assert_eq!(
            route.role,
            expected_role(&route.method, &route.path),
            "{} {}",
            route.method,
            route.path
        );
    }
}

/// What to send to a route so that it succeeds for a caller allowed to call it: the concrete
/// path, the body, and the status of success. Made fresh per call (as the bootstrap admin),
/// since a successful delete consumes what it deletes.
struct Call {
    path: String,
    body: Option<Value>,
    success: StatusCode,
}

struct World {
    h: Harness,
    n: std::cell::Cell<usize>,
}

impl World {
    fn unique(&self, prefix: &str) -> String {
        self.n.set(self.n.get() + 1);
        format!("{prefix}-{}", self.n.get())
    }

    async fn endpoint(&self) -> String {
        id_of(
            &self
                .h
                .create_endpoint(endpoint_body(&self.unique("e"), "azkey-0123456789abcdef"))
                .await,
        )
    }

    async fn gateway(&self) -> String {
        id_of(&self.h.create_gateway(json!({"name": self.unique("g"), "endpoints": []})).await)
    }

    async fn key(&self, gateway: &str) -> String {
        let path = format!("/api/v1/gateways/{gateway}/keys");
        id_of(
            &self
                .h
                .call(Method::POST, &path, Some(json!({"name": "k"})))
                .await
                .expect(StatusCode::CREATED)
                .json(),
        )
    }

    /// A stored trace's id (traces come from data planes; the store takes them directly).
    async fn trace(&self) -> String {
        // Of a gateway that exists: the retention job deletes the traces of those that do not.
        let gateway = self.gateway().await.parse().expect("gateway id");
        let trace = crate::traces::trace(gateway, chrono::Utc::now().timestamp_millis(), 200);
        let node = modelgw_model::NodeId("dp".into());
        self.h.store.insert_traces(&node, &[trace]).await.expect("insert");
        let page = self
            .h
            .store
            .list_traces(&modelgw_control_plane::store::TraceQuery {
                limit: 1,
                ..Default::default()
            })
            .await
            .expect("list");
        page.traces[0].id.to_string()
    }

    async fn call_for(&self, method: &Method, template: &str) -> Call {
        let ok =
            |path: String, body: Option<Value>, success: StatusCode| Call { path, body, success };
        match (method.as_str(), template) {
            ("GET", "/api/v1/inference-endpoints") => ok(template.into(), None, StatusCode::OK),
            ("POST", "/api/v1/inference-endpoints") => ok(
                template.into(),
                Some(endpoint_body(&self.unique("e"), "azkey-0123456789abcdef")),
                StatusCode::CREATED,
            ),
            ("GET", "/api/v1/inference-endpoints/{id}") => ok(
                format!("/api/v1/inference-endpoints/{}", self.endpoint().await),
                None,
                StatusCode::OK,
            ),
            ("PATCH", "/api/v1/inference-endpoints/{id}") => ok(
                format!("/api/v1/inference-endpoints/{}", self.endpoint().await),
                Some(json!({"region": "westus"})),
                StatusCode::OK,
            ),
            ("DELETE", "/api/v1/inference-endpoints/{id}") => ok(
                format!("/api/v1/inference-endpoints/{}", self.endpoint().await),
                None,
                StatusCode::NO_CONTENT,
            ),
            ("POST", "/api/v1/inference-endpoints/{id}/health:reset") => ok(
                format!("/api/v1/inference-endpoints/{}/health:reset", self.endpoint().await),
                None,
                StatusCode::OK,
            ),
            ("GET", "/api/v1/gateways") => ok(template.into(), None, StatusCode::OK),
            ("POST", "/api/v1/gateways") => ok(
                template.into(),
                Some(json!({"name": self.unique("g"), "endpoints": []})),
                StatusCode::CREATED,
            ),
            ("GET", "/api/v1/gateways/{id}") => {
                ok(format!("/api/v1/gateways/{}", self.gateway().await), None, StatusCode::OK)
            }
            ("PATCH", "/api/v1/gateways/{id}") => ok(
                format!("/api/v1/gateways/{}", self.gateway().await),
                Some(json!({"routing": {"strategy": "fastest"}})),
                StatusCode::OK,
            ),
            ("DELETE", "/api/v1/gateways/{id}") => ok(
                format!("/api/v1/gateways/{}", self.gateway().await),
                None,
                StatusCode::NO_CONTENT,
            ),
            ("GET", "/api/v1/gateways/{id}/keys") => {
                ok(format!("/api/v1/gateways/{}/keys", self.gateway().await), None, StatusCode::OK)
            }
            ("POST", "/api/v1/gateways/{id}/keys") => ok(
                format!("/api/v1/gateways/{}/keys", self.gateway().await),
                Some(json!({"name": "k"})),
                StatusCode::CREATED,
            ),
            ("DELETE", "/api/v1/gateways/{id}/keys/{key_id}") => {
                let gateway = self.gateway().await;
                let key = self.key(&gateway).await;
                ok(format!("/api/v1/gateways/{gateway}/keys/{key}"), None, StatusCode::NO_CONTENT)
            }
            ("GET", "/api/v1/gateways/{id}/keys/{key_id}") => {
                let gateway = self.gateway().await;
                let key = self.key(&gateway).await;
                ok(format!("/api/v1/gateways/{gateway}/keys/{key}"), None, StatusCode::OK)
            }
            ("PATCH", "/api/v1/gateways/{id}/keys/{key_id}") => {
                let gateway = self.gateway().await;
                let key = self.key(&gateway).await;
                let body = json!({"limits": {"per_hour": {"total_tokens": 10000}}});
                ok(format!("/api/v1/gateways/{gateway}/keys/{key}"), Some(body), StatusCode::OK)
            }
            ("GET", "/api/v1/gateways/{id}/keys/{key_id}/usage") => {
                let gateway = self.gateway().await;
                let key = self.key(&gateway).await;
                ok(format!("/api/v1/gateways/{gateway}/keys/{key}/usage"), None, StatusCode::OK)
            }
            ("POST", "/api/v1/gateways/{id}/keys/{key_id}/usage/reset") => {
                let gateway = self.gateway().await;
                let key = self.key(&gateway).await;
                let path = format!("/api/v1/gateways/{gateway}/keys/{key}/usage/reset");
                ok(path, None, StatusCode::OK)
            }
            ("GET", "/api/v1/status") => ok(template.into(), None, StatusCode::OK),
            ("GET", "/api/v1/me") => ok(template.into(), None, StatusCode::OK),
            ("POST", "/api/v1/azure/discoveries") => {
                ok(template.into(), None, StatusCode::ACCEPTED)
            }
            ("GET", "/api/v1/azure/discoveries/{id}") => {
                let started = self
                    .h
                    .call(Method::POST, "/api/v1/azure/discoveries", None)
                    .await
                    .expect(StatusCode::ACCEPTED)
                    .json();
                ok(format!("/api/v1/azure/discoveries/{}", id_of(&started)), None, StatusCode::OK)
            }
            // No discovery found this id: a 422 naming it is what an allowed caller gets.
            ("POST", "/api/v1/azure/imports") => ok(
                template.into(),
                Some(json!({"deployment_ids": ["/subscriptions/s/x/deployments/d"]})),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ("POST", "/api/v1/azure/gateway-proposals") => {
                ok(template.into(), None, StatusCode::OK)
            }
            ("GET", "/api/v1/api-tokens") => ok(template.into(), None, StatusCode::OK),
            ("POST", "/api/v1/api-tokens") => ok(
                template.into(),
                Some(json!({"name": self.unique("t"), "role": "viewer"})),
                StatusCode::CREATED,
            ),
            ("DELETE", "/api/v1/api-tokens/{id}") => {
                let (id, _) = self.h.api_token(&self.unique("t"), "viewer").await;
                ok(format!("/api/v1/api-tokens/{id}"), None, StatusCode::NO_CONTENT)
            }
            ("GET", "/api/v1/data-plane-tokens") => ok(template.into(), None, StatusCode::OK),
            ("POST", "/api/v1/data-plane-tokens") => ok(
                template.into(),
                Some(json!({"name": self.unique("dp").replace('-', "_")})),
                StatusCode::CREATED,
            ),
            ("DELETE", "/api/v1/data-plane-tokens/{id}") => {
                let name = self.unique("dp").replace('-', "_");
                let created = self
                    .h
                    .call(Method::POST, "/api/v1/data-plane-tokens", Some(json!({"name": name})))
                    .await
                    .expect(StatusCode::CREATED)
                    .json();
                ok(
                    format!("/api/v1/data-plane-tokens/{}", id_of(&created)),
                    None,
                    StatusCode::NO_CONTENT,
                )
            }
            ("GET", "/api/v1/audit-log") => ok(template.into(), None, StatusCode::OK),
            ("GET", "/api/v1/stats/gateways") => {
                ok(format!("{template}?minutes=60"), None, StatusCode::OK)
            }
            ("GET", "/api/v1/stats/endpoints") => {
                ok(format!("{template}?gateway_id={}", self.gateway().await), None, StatusCode::OK)
            }
            ("GET", "/api/v1/stats/regions") => ok(template.into(), None, StatusCode::OK),
            ("GET", "/api/v1/traces") => {
                ok(format!("{template}?status=2xx&limit=10"), None, StatusCode::OK)
            }
            ("GET", "/api/v1/traces/{id}") => {
                ok(format!("/api/v1/traces/{}", self.trace().await), None, StatusCode::OK)
            }
            (m, p) => panic!("no fixture for {m} {p}: add one to tests/api/roles.rs"),
        }
    }
}

#[tokio::test]
async fn every_route_with_every_role() {
    let w = World { h: Harness::start().await, n: std::cell::Cell::new(0) };
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let (_, token) = w.h.api_token(&format!("as-{role}"), role.as_str()).await;
        tokens.push((role, token));
    }
    for route in modelgw_admin_api::route_roles() {
        for (role, token) in &tokens {
            let call = w.call_for(&route.method, &route.path).await;
            let before = (w.h.version().await, w.h.audit_log().await.len());
            let reply = w.h.call_as(token, route.method.clone(), &call.path, call.body).await;
            let what =
                format!("{} {} as {role} (requires {})", route.method, route.path, route.role);
            if *role >= route.role {
                assert_eq!(reply.status, call.success, "{what}: {}", reply.text);
            } else {
                assert_eq!(reply.status, StatusCode::FORBIDDEN, "{what}: {}", reply.text);
                assert_eq!(reply.content_type(), "application/problem+json", "{what}");
                let problem = reply.json();
                assert_eq!(problem["type"], "urn:modelgw:problem:forbidden", "{what}");
                assert_eq!(problem["required_role"], route.role.as_str(), "{what}");
                assert!(
                    problem["detail"].as_str().is_some_and(|d| d.contains(route.role.as_str())),
                    "{what}: {problem}"
                );
                let after = (w.h.version().await, w.h.audit_log().await.len());
                assert_eq!(after, before, "{what}: a forbidden call changed something");
            }
        }
    }
}

#[tokio::test]
async fn the_bootstrap_token_is_admin() {
    let h = Harness::start().await;
    h.call(Method::POST, "/api/v1/api-tokens", Some(json!({"name": "t", "role": "admin"})))
        .await
        .expect(StatusCode::CREATED);
}
