//! `GET /openai/models?api-version=…` and `GET /openai/v1/models` (and `…/models/{id}`),
//! answered by the gateway itself after authentication: the deployments a key may name are
//! the gateway's name and `auto`, whatever the endpoints behind it serve, so the list is theirs
//! and no upstream is asked (an upstream's list would name its own deployments, which a key
//! cannot call).
//!
//! The bytes are built once per gateway and routing table, by the first request that needs them
//! ([`ModelsAnswer::new`] only keeps the name and the creation time: a snapshot of 1,000
//! gateways compiled 1,000 JSON documents that hardly anyone reads — 14 % of a 10,000-endpoint
//! apply, BENCHMARKS.md); every later request only picks them. The dated surface gets Azure's list
//! shape (`status`, `capabilities`, `lifecycle_status`, `created_at`), the v1 surface OpenAI's
//! (`created`, `owned_by`); both carry `id`, `object`, `created` and `owned_by`, the fields the
//! SDKs' `Model` type requires.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use modelgw_model::GatewayId;
use serde_json::{Value, json};

use super::operations::Surface;
use super::{BoxError, ProxyBody};

/// What `owned_by` says: the gateway, not a model vendor, answers for these names.
const OWNED_BY: &str = "model-gateway";

/// The two names a key may put in `model` or the deployment path, besides each other.
const AUTO: &str = "auto";

/// A gateway's model list and its two model objects, per surface: built on first use.
#[derive(Debug, Clone)]
pub(crate) struct ModelsAnswer {
    /// The gateway's name (`auto` is the other one).
    name: String,
    /// When the gateway was created, unix seconds.
    created: u64,
    built: OnceLock<Built>,
}

/// The answers, ready to send.
#[derive(Debug, Clone)]
struct Built {
    dated_list: Bytes,
    v1_list: Bytes,
    /// `[auto, gateway]` on the dated surface.
    dated_models: [Bytes; 2],
    /// `[auto, gateway]` on the v1 surface.
    v1_models: [Bytes; 2],
}

impl ModelsAnswer {
    /// The answers of gateway `name`; `created` is when the gateway was created (its id is a
    /// UUIDv7), so the list does not change between snapshots.
    pub(crate) fn new(name: &str, id: GatewayId) -> Self {
        let created = id.0.get_timestamp().map_or(0, |timestamp| timestamp.to_unix().0);
        ModelsAnswer { name: name.to_owned(), created, built: OnceLock::new() }
    }

    fn built(&self) -> &Built {
        self.built.get_or_init(|| {
            let names = [AUTO, self.name.as_str()];
            let dated = names.map(|id| azure_model(id, self.created));
            let v1 = names.map(|id| openai_model(id, self.created));
            let list = |data: &[Value; 2]| bytes(&json!({ "object": "list", "data": data }));
            Built {
                dated_list: list(&dated),
                v1_list: list(&v1),
                dated_models: dated.each_ref().map(bytes),
                v1_models: v1.each_ref().map(bytes),
            }
        })
    }

    /// The list for `surface`.
    pub(super) fn list(&self, surface: Surface) -> Response<ProxyBody> {
        let built = self.built();
        match surface {
            Surface::Dated => ok(&built.dated_list),
            Surface::V1 => ok(&built.v1_list),
        }
    }

    /// `GET /openai/models/{id}` or `/openai/v1/models/{id}` (a path the operations table does
    /// not serve, so the caller asks here once the key is known); `None` for any other path.
    pub(super) fn model(&self, method: &Method, path: &str) -> Option<ModelById> {
        if method != Method::GET {
            return None;
        }
        let rest = path.strip_prefix("/openai/")?;
        let (surface, rest) = match rest.strip_prefix("v1/") {
            Some(rest) => (Surface::V1, rest),
            None => (Surface::Dated, rest),
        };
        let id = rest.strip_prefix("models/").filter(|id| !id.is_empty() && !id.contains('/'))?;
        let index = if id == AUTO {
            0
        } else if id == self.name {
            1
        } else {
            return Some(ModelById::Unknown);
        };
        let built = self.built();
        let models = match surface {
            Surface::Dated => &built.dated_models,
            Surface::V1 => &built.v1_models,
        };
        Some(ModelById::Found(ok(&models[index])))
    }
}

/// What `GET …/models/{id}` finds.
pub(super) enum ModelById {
    /// `auto` or the gateway: its model object.
    Found(Response<ProxyBody>),
    /// Any other id: not a name the key may use.
    Unknown,
}

/// Azure's model object (`GET /openai/models`), with OpenAI's `created` and `owned_by` too.
/// Its capabilities are what the gateway forwards; whether the deployment behind an endpoint
/// serves an operation is that endpoint's answer.
fn azure_model(id: &str, created: u64) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": created,
        "created_at": created,
        "owned_by": OWNED_BY,
        "status": "succeeded",
        "capabilities": {
            "fine_tune": false,
            "inference": true,
            "completion": true,
            "chat_completion": true,
            "embeddings": true,
        },
        "lifecycle_status": "generally-available",
    })
}

/// OpenAI's model object (`GET /v1/models`).
fn openai_model(id: &str, created: u64) -> Value {
    json!({ "id": id, "object": "model", "created": created, "owned_by": OWNED_BY })
}

fn bytes(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// A 200 with JSON `body` (a cheap clone of the precomputed bytes).
fn ok(body: &Bytes) -> Response<ProxyBody> {
    let body = Full::new(body.clone()).map_err(|never| -> BoxError { match never {} }).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json_of(response: Response<ProxyBody>) -> Value {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&body).expect("json")
    }

    #[tokio::test]
    async fn lists_auto_and_the_gateway_in_each_surfaces_shape() {
        let id = GatewayId::new();
        let answer = ModelsAnswer::new("chat", id);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();

        let dated = json_of(answer.list(Surface::Dated)).await;
        assert_eq!(dated["object"], "list");
        let ids: Vec<&str> = dated["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, ["auto", "chat"]);
        for model in dated["data"].as_array().expect("data") {
            assert_eq!(model["object"], "model");
            assert_eq!(model["status"], "succeeded");
            assert_eq!(model["lifecycle_status"], "generally-available");
            assert_eq!(model["capabilities"]["chat_completion"], true);
            assert_eq!(model["owned_by"], OWNED_BY);
            let created = model["created_at"].as_u64().expect("created_at");
            assert!(created.abs_diff(now) < 5, "the gateway's creation time: {created} vs {now}");
            assert_eq!(model["created"], model["created_at"]);
        }

        let v1 = json_of(answer.list(Surface::V1)).await;
        assert_eq!(v1["object"], "list");
        let chat = &v1["data"][1];
        assert_eq!(chat["id"], "chat");
        let mut keys: Vec<&String> = chat.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["created", "id", "object", "owned_by"], "OpenAI's model object");
    }

    #[tokio::test]
    async fn one_model_by_id_on_either_surface() {
        let answer = ModelsAnswer::new("chat", GatewayId::new());
        let get = Method::GET;
        let found = |path: &str| match answer.model(&get, path) {
            Some(ModelById::Found(response)) => response,
            Some(ModelById::Unknown) => panic!("{path}: unknown"),
            None => panic!("{path}: not a model path"),
        };
        assert_eq!(json_of(found("/openai/models/chat")).await["status"], "succeeded");
        assert_eq!(json_of(found("/openai/v1/models/auto")).await["id"], "auto");
        assert!(json_of(found("/openai/v1/models/chat")).await.get("status").is_none());
        assert!(matches!(answer.model(&get, "/openai/v1/models/gpt-4o"), Some(ModelById::Unknown)));
        assert!(answer.model(&get, "/openai/v1/models/").is_none());
        assert!(answer.model(&get, "/openai/v1/models/chat/x").is_none());
        assert!(answer.model(&get, "/openai/v1/files/chat").is_none());
        assert!(answer.model(&Method::DELETE, "/openai/v1/models/chat").is_none());
    }
}
