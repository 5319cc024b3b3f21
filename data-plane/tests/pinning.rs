//! Pinned stateful calls (issue #16): the real proxy in process in front of three recording
//! upstreams that speak the Responses API and hold their responses like Azure resources do
//! (each knows only the responses it created). Follow-ups — `previous_response_id`, retrieve,
//! delete, cancel, input items — reach the region that created the response, from another
//! data plane too; ids the gateway did not mint are refused before any upstream is asked; the
//! endpoint holding a response failing is said so, never answered by another region.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod support;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use modelgw_model::{
    GatewayId, GatewayKey, GatewayKeyId, PinKey, RoutingPolicy, Snapshot, gateway_key_hash,
};
use serde_json::{Value, json};
use support::{CLIENT_KEY, Region, TestGateway, fast_config, header, snapshot, start, unmocked};

/// The key of a second gateway, `other`, over the same regions.
const OTHER_KEY: &str = "mgw-test-other-key-0002";

// ---- a recording upstream that holds its responses ----

/// What an upstream received.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    /// Path and query.
    target: String,
    body: String,
}

#[derive(Default)]
struct Held {
    seen: Vec<Seen>,
    /// Response id → the `previous_response_id` it continued.
    responses: HashMap<String, Option<String>>,
    created: u32,
    /// Answer every request with this status (an outage).
    failing: Option<u16>,
}

/// One region: an HTTP/1 server on loopback answering the Responses API.
struct Upstream {
    name: String,
    held: Arc<Mutex<Held>>,
    region: Region,
    server: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

type UpstreamBody = BoxBody<Bytes, Infallible>;

impl Upstream {
    async fn start(name: &str) -> Result<Upstream> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let region = unmocked(name, format!("http://{}", listener.local_addr()?));
        let held = Arc::new(Mutex::new(Held::default()));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (state, tasks, label) = (Arc::clone(&held), Arc::clone(&connections), name.to_owned());
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, label) = (Arc::clone(&state), label.clone());
                let service =
                    service_fn(move |request| answer(label.clone(), Arc::clone(&state), request));
                let connection = tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                tasks.lock().unwrap().push(connection);
            }
        });
        Ok(Upstream { name: name.to_owned(), held, region, server, connections })
    }

    fn seen(&self) -> Vec<Seen> {
        self.held.lock().unwrap().seen.clone()
    }

    fn fail_with(&self, status: Option<u16>) {
        self.held.lock().unwrap().failing = status;
    }

    /// Stops listening and drops every open connection: the region is down.
    fn stop(&self) {
        self.server.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json_answer(status: u16, body: &Value) -> Response<UpstreamBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn not_found(id: &str) -> Response<UpstreamBody> {
    json_answer(
        404,
        &json!({"error": {"message": format!("Response with id '{id}' not found."),
            "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

fn response_object(id: &str, previous: Option<&str>, status: &str, model: &Value) -> Value {
    json!({
        "id": id, "object": "response", "created_at": 1_741_476_542, "status": status,
        "model": model, "previous_response_id": previous,
        "output": [{"id": format!("msg_{id}"), "type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello from the region.", "annotations": []}]}],
        "metadata": {"note": "resp_not_an_id"},
        "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}
    })
}

async fn answer(
    name: String,
    held: Arc<Mutex<Held>>,
    request: Request<Incoming>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let method = request.method().clone();
    let target = request.uri().path_and_query().map(|pq| pq.to_string()).unwrap_or_default();
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut held = held.lock().unwrap();
    held.seen.push(Seen { method: method.clone(), target, body: body.clone() });
    if let Some(status) = held.failing {
        let error = json!({"error": {"code": "ServiceUnavailable", "message": "down"}});
        return Ok(json_answer(status, &error));
    }
    let rest = path.strip_prefix("/openai/v1/").or_else(|| path.strip_prefix("/openai/"));
    let rest = rest.unwrap_or_default();
    if rest == "responses" && method == Method::POST {
        let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let previous = request["previous_response_id"].as_str();
        if let Some(previous) = previous
            && !held.responses.contains_key(previous)
        {
            // What a region answers for a response another region holds.
            return Ok(json_answer(
                400,
                &json!({"error": {"message": format!("Previous response with id '{previous}' not found."),
                    "type": "invalid_request_error", "param": "previous_response_id",
                    "code": "previous_response_not_found"}}),
            ));
        }
        held.created += 1;
        let id = format!("resp_{name}{}", held.created);
        held.responses.insert(id.clone(), previous.map(str::to_owned));
        let done = response_object(&id, previous, "completed", &request["model"]);
        if request["stream"] != json!(true) {
            return Ok(json_answer(200, &done));
        }
        let created = response_object(&id, previous, "in_progress", &request["model"]);
        let events = [
            (
                "response.created",
                json!({"type": "response.created", "sequence_number": 0, "response": created}),
            ),
            (
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "sequence_number": 1,
                "item_id": format!("msg_{id}"), "output_index": 0, "content_index": 0, "delta": "Hello"}),
            ),
            (
                "response.completed",
                json!({"type": "response.completed", "sequence_number": 2, "response": done}),
            ),
        ];
        let text: String = events
            .iter()
            .map(|(event, data)| format!("event: {event}\ndata: {data}\n\n"))
            .collect();
        // Frames cut inside every occurrence of the id: the gateway must pin it anyway.
        let mut cuts: Vec<usize> = text.match_indices(&id).map(|(at, _)| at + 3).collect();
        cuts.push(text.len());
        let mut frames = Vec::new();
        let mut start = 0;
        for cut in cuts {
            frames.push(Ok::<_, Infallible>(Frame::data(Bytes::from(text[start..cut].to_owned()))));
            start = cut;
        }
        let body = StreamBody::new(futures::stream::iter(frames)).boxed();
        return Ok(Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap());
    }
    let Some(by_id) = rest.strip_prefix("responses/") else {
        return Ok(json_answer(
            404,
            &json!({"error": {"code": "404", "message": "Resource not found"}}),
        ));
    };
    let (id, action) = by_id.split_once('/').unwrap_or((by_id, ""));
    let Some(previous) = held.responses.get(id).cloned() else { return Ok(not_found(id)) };
    let model = json!("gpt-4o");
    Ok(match (&method, action) {
        (&Method::GET, "") => {
            json_answer(200, &response_object(id, previous.as_deref(), "completed", &model))
        }
        (&Method::DELETE, "") => {
            held.responses.remove(id);
            json_answer(200, &json!({"id": id, "object": "response.deleted", "deleted": true}))
        }
        (&Method::POST, "cancel") => {
            json_answer(200, &response_object(id, previous.as_deref(), "cancelled", &model))
        }
        (&Method::GET, "input_items") => json_answer(
            200,
            &json!({"object": "list", "data": [{"id": "msg_in", "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "hi"}]}],
                "first_id": "msg_in", "last_id": "msg_in", "has_more": false}),
        ),
        _ => json_answer(404, &json!({"error": {"code": "404", "message": "Resource not found"}})),
    })
}

// ---- the gateway side ----

async fn regions() -> Result<[Upstream; 3]> {
    Ok([
        Upstream::start("eus").await?,
        Upstream::start("swc").await?,
        Upstream::start("jpe").await?,
    ])
}

/// Gateway `chat` over the three regions, equal weights.
fn three_regions(version: u64, up: &[Upstream; 3]) -> Snapshot {
    let members = [(&up[0].region, 0, 1), (&up[1].region, 0, 1), (&up[2].region, 0, 1)];
    snapshot(version, &members, RoutingPolicy::default()).unwrap()
}

/// A data plane serving `snapshot`.
async fn data_plane(snapshot: Snapshot) -> TestGateway {
    let gw = start(fast_config()).await.unwrap();
    gw.install(snapshot).unwrap();
    gw
}

/// What the client got: status, serving endpoint, body.
struct Got {
    status: u16,
    by: String,
    body: Value,
}

async fn got(response: reqwest::Response) -> Got {
    let status = response.status().as_u16();
    let by = header(&response, "x-modelgw-endpoint").to_owned();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Got { status, by, body }
}

async fn create(gw: &TestGateway, key: &str, previous: Option<&str>) -> Got {
    let mut body = json!({"model": "auto", "input": "Say hello"});
    if let Some(previous) = previous {
        body["previous_response_id"] = json!(previous);
    }
    let request = gw
        .http
        .post(format!("{}/openai/v1/responses", gw.base))
        .header("api-key", key)
        .header("content-type", "application/json")
        .body(body.to_string());
    got(request.send().await.unwrap()).await
}

async fn by_id(gw: &TestGateway, method: Method, path: &str) -> Got {
    let request =
        gw.http.request(method, format!("{}{path}", gw.base)).header("api-key", CLIENT_KEY);
    got(request.send().await.unwrap()).await
}

fn requests(up: &[Upstream; 3]) -> usize {
    up.iter().map(|u| u.seen().len()).sum()
}

fn upstream_of(up: &[Upstream; 3], name: &str) -> usize {
    up.iter().position(|u| u.name == name).expect("a region")
}

// ---- the scenarios ----

#[tokio::test]
async fn follow_ups_from_another_data_plane_reach_the_creating_region_20_of_20() {
    let up = regions().await.unwrap();
    let first = data_plane(three_regions(1, &up)).await;
    let second = data_plane(three_regions(1, &up)).await;

    let mut created = Vec::new();
    for _ in 0..20 {
        let answer = create(&first, CLIENT_KEY, None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let id = answer.body["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("resp_mgw1"), "the client sees a pinned id: {id}");
        assert_eq!(answer.body["metadata"]["note"], "resp_not_an_id", "other strings are kept");
        created.push((id, answer.by));
    }
    let spread: HashSet<&str> = created.iter().map(|(_, by)| by.as_str()).collect();
    assert!(spread.len() >= 2, "plain creates are spread over the regions: {spread:?}");

    for (id, by) in &created {
        let holder = upstream_of(&up, by);
        let before: Vec<usize> = up.iter().map(|u| u.seen().len()).collect();

        // A continuation, sent to the other data plane.
        let next = create(&second, CLIENT_KEY, Some(id)).await;
        assert_eq!(next.status, 200, "{}", next.body);
        assert_eq!(&next.by, by, "the continuation reached the region holding {id}");
        assert_eq!(next.body["previous_response_id"], json!(id), "the echo is the client's id");
        let sent = up[holder].seen().last().cloned().unwrap();
        let sent: Value = serde_json::from_str(&sent.body).unwrap();
        let upstream_id = sent["previous_response_id"].as_str().unwrap();
        assert!(upstream_id.starts_with(&format!("resp_{by}")), "the upstream's own id went up");
        assert_eq!(sent["model"], format!("gpt-4o-{by}"), "model rewritten as usual");

        // Retrieve it on both surfaces, from the other data plane.
        let got = by_id(&second, Method::GET, &format!("/openai/v1/responses/{id}")).await;
        assert_eq!((got.status, got.by.as_str()), (200, by.as_str()), "{}", got.body);
        assert_eq!(got.body["id"], json!(id));
        let dated = format!("/openai/responses/{id}?api-version=2025-04-01-preview");
        let got = by_id(&second, Method::GET, &dated).await;
        assert_eq!((got.status, got.body["id"].clone()), (200, json!(id)));
        let target = up[holder].seen().last().unwrap().target.clone();
        assert_eq!(
            target,
            format!("/openai/responses/{upstream_id}?api-version=2025-04-01-preview"),
            "the upstream path carries the upstream's id"
        );

        // Nothing reached another region.
        for (i, u) in up.iter().enumerate() {
            let expected = before[i] + if i == holder { 3 } else { 0 };
            assert_eq!(u.seen().len(), expected, "{} saw {:?}", u.name, u.seen().last());
        }
    }

    // Input items, cancel and delete of one of them.
    let (id, by) = &created[0];
    let items = by_id(&first, Method::GET, &format!("/openai/v1/responses/{id}/input_items")).await;
    assert_eq!((items.status, items.by.as_str()), (200, by.as_str()));
    assert_eq!(items.body["data"][0]["id"], "msg_in");
    let cancelled = by_id(&first, Method::POST, &format!("/openai/v1/responses/{id}/cancel")).await;
    assert_eq!((cancelled.status, cancelled.body["status"].clone()), (200, json!("cancelled")));
    assert_eq!(cancelled.body["id"], json!(id));
    let deleted = by_id(&second, Method::DELETE, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let sent = up[upstream_of(&up, by)].seen().last().cloned().unwrap();
    assert_eq!(sent.method, Method::DELETE);
    assert!(sent.target.starts_with(&format!("/openai/v1/responses/resp_{by}")), "{sent:?}");
    assert_eq!(deleted.body, json!({"id": id, "object": "response.deleted", "deleted": true}));
    // Now gone from its region: the region's own 404 passes through.
    let again = by_id(&second, Method::GET, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!((again.status, again.by.as_str()), (404, by.as_str()));
}

#[tokio::test]
async fn a_streamed_create_gets_pinned_ids_in_every_event() {
    let up = regions().await.unwrap();
    let gw = data_plane(three_regions(1, &up)).await;
    let body = json!({"model": "auto", "input": "Say hello", "stream": true});
    let response = gw.post("/openai/v1/responses", &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let by = header(&response, "x-modelgw-endpoint").to_owned();
    let text = response.text().await.unwrap();
    assert!(!text.contains(&format!("\"resp_{by}")), "no upstream id reaches the client: {text}");
    let events: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["response.created", "response.output_text.delta", "response.completed"]);
    let id = events[0]["response"]["id"].as_str().unwrap();
    assert!(id.starts_with("resp_mgw1"), "{id}");
    assert_eq!(events[2]["response"]["id"], json!(id));
    assert_eq!(events[2]["response"]["usage"]["output_tokens"], 3, "usage passes on intact");
    // The streamed id works as a follow-up.
    let got = by_id(&gw, Method::GET, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!((got.status, got.by), (200, by));
}

#[tokio::test]
async fn ids_the_gateway_did_not_mint_are_refused_before_any_upstream() {
    let up = regions().await.unwrap();
    let gw = data_plane(three_regions(1, &up)).await;
    let made = create(&gw, CLIENT_KEY, None).await;
    let pinned = made.body["id"].as_str().unwrap().to_owned();
    let raw = format!("resp_{}1", made.by);
    let before = requests(&up);

    // A raw upstream id, an altered pinned id, a made-up one in the pinned format.
    let mut altered = pinned.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'1' { b'2' } else { b'1' };
    let altered = String::from_utf8(altered).unwrap();
    let forged = format!("resp_mgw1{}{}_{}1", "0".repeat(8), "0".repeat(16), made.by);
    for id in [&raw, &altered, &forged] {
        for (method, path) in [
            (Method::GET, format!("/openai/v1/responses/{id}")),
            (Method::DELETE, format!("/openai/v1/responses/{id}")),
            (Method::POST, format!("/openai/v1/responses/{id}/cancel")),
            (Method::GET, format!("/openai/v1/responses/{id}/input_items")),
            (Method::GET, format!("/openai/responses/{id}?api-version=2025-04-01-preview")),
        ] {
            let got = by_id(&gw, method.clone(), &path).await;
            assert_eq!(got.status, 404, "{method} {path}: {}", got.body);
            assert_eq!(got.body["error"]["code"], "NotFound", "{}", got.body);
            assert!(got.by.is_empty(), "answered by the gateway itself");
        }
        let next = create(&gw, CLIENT_KEY, Some(id)).await;
        assert_eq!(next.status, 400, "{}", next.body);
        assert_eq!(next.body["error"]["code"], "previous_response_not_found");
        assert_eq!(next.body["error"]["param"], "previous_response_id");
    }
    // Not an id at all: the path is not an operation.
    let got = by_id(&gw, Method::GET, "/openai/v1/responses/resp.1%2F..").await;
    assert_eq!(got.status, 404);
    let body = json!({"model": "auto", "input": "x", "previous_response_id": 7});
    let got = got_of(gw.post("/openai/v1/responses", &body)).await;
    assert_eq!(
        (got.status, got.body["error"]["param"].clone()),
        (400, json!("previous_response_id"))
    );
    let twice = format!(
        r#"{{"model":"auto","input":"x","previous_response_id":"{pinned}","previous_response_id":"{raw}"}}"#
    );
    let request = gw
        .http
        .post(format!("{}/openai/v1/responses", gw.base))
        .header("api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body(twice);
    assert_eq!(got_of(request).await.status, 400, "a duplicate previous_response_id is refused");
    assert_eq!(requests(&up), before, "no upstream saw any of it");

    // The real one still works, and a wrong key is refused before anything else.
    assert_eq!(
        by_id(&gw, Method::GET, &format!("/openai/v1/responses/{pinned}")).await.status,
        200
    );
    let wrong = gw
        .http
        .get(format!("{}/openai/v1/responses/{pinned}", gw.base))
        .header("api-key", "not-a-key");
    assert_eq!(wrong.send().await.unwrap().status(), 401);
}

async fn got_of(request: reqwest::RequestBuilder) -> Got {
    got(request.send().await.unwrap()).await
}

#[tokio::test]
async fn another_gateways_key_cannot_use_the_id() {
    let up = regions().await.unwrap();
    let mut snapshot = three_regions(1, &up);
    let mut other = snapshot.gateways[0].clone();
    other.id = GatewayId::new();
    other.name = "other".to_owned();
    other.keys = vec![GatewayKey::new(GatewayKeyId::new(), gateway_key_hash(OTHER_KEY), "other")];
    other.pin_key = PinKey::new([0x6b; 32]);
    snapshot.gateways.push(other);
    let gw = data_plane(snapshot).await;

    let made = create(&gw, CLIENT_KEY, None).await;
    assert_eq!(made.status, 200);
    let id = made.body["id"].as_str().unwrap();
    let theirs = create(&gw, OTHER_KEY, None).await;
    assert_ne!(theirs.body["id"], made.body["id"], "each gateway mints its own ids");
    let before = requests(&up);
    let retrieve =
        gw.http.get(format!("{}/openai/v1/responses/{id}", gw.base)).header("api-key", OTHER_KEY);
    let got = got_of(retrieve).await;
    assert_eq!((got.status, got.body["error"]["code"].clone()), (404, json!("NotFound")));
    let next = create(&gw, OTHER_KEY, Some(id)).await;
    assert_eq!(next.status, 400, "{}", next.body);
    assert_eq!(requests(&up), before, "refused without asking the region");
    // Through its own gateway it works.
    assert_eq!(by_id(&gw, Method::GET, &format!("/openai/v1/responses/{id}")).await.status, 200);
}

#[tokio::test]
async fn the_holding_region_failing_is_said_so_and_no_other_region_is_asked() {
    let up = regions().await.unwrap();
    let gw = data_plane(three_regions(1, &up)).await;
    let made = create(&gw, CLIENT_KEY, None).await;
    let id = made.body["id"].as_str().unwrap().to_owned();
    let holder = upstream_of(&up, &made.by);
    let others = |up: &[Upstream; 3]| -> usize {
        up.iter().enumerate().filter(|(i, _)| *i != holder).map(|(_, u)| u.seen().len()).sum()
    };
    let before = others(&up);

    up[holder].fail_with(Some(503));
    let got = by_id(&gw, Method::GET, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!(got.status, 503, "{}", got.body);
    assert_eq!(got.body["error"]["code"], "PinnedEndpointUnavailable");
    let message = got.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&made.by) && message.contains(&id), "{message}");
    let next = create(&gw, CLIENT_KEY, Some(&id)).await;
    assert_eq!(
        (next.status, next.body["error"]["code"].clone()),
        (503, json!("PinnedEndpointUnavailable"))
    );
    assert_eq!(others(&up), before, "no other region was asked");

    // Plain traffic fails over meanwhile; the pinned call is tried as soon as the region is
    // back, although its health still says it is cooling down.
    let plain = create(&gw, CLIENT_KEY, None).await;
    assert_eq!(plain.status, 200);
    assert_ne!(plain.by, made.by);
    up[holder].fail_with(None);
    let got = by_id(&gw, Method::GET, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!((got.status, got.by.as_str()), (200, made.by.as_str()), "{}", got.body);

    // The region down altogether.
    up[holder].stop();
    let got = by_id(&gw, Method::GET, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!(
        (got.status, got.body["error"]["code"].clone()),
        (503, json!("PinnedEndpointUnavailable"))
    );
}

#[tokio::test]
async fn a_response_whose_region_left_the_gateway_is_said_to_be_gone() {
    let up = regions().await.unwrap();
    let gw = data_plane(three_regions(1, &up)).await;
    let made = create(&gw, CLIENT_KEY, None).await;
    let id = made.body["id"].as_str().unwrap().to_owned();
    let holder = upstream_of(&up, &made.by);

    // Disabled in the gateway.
    let mut disabled = three_regions(2, &up);
    disabled.gateways[0].members[holder].enabled = false;
    gw.install(disabled).unwrap();
    let before = requests(&up);
    let got = by_id(&gw, Method::GET, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!(got.status, 404, "{}", got.body);
    let message = got.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no longer part of gateway 'chat'"), "{message}");
    assert!(message.contains(&made.by), "names the endpoint: {message}");
    let next = create(&gw, CLIENT_KEY, Some(&id)).await;
    assert_eq!(
        (next.status, next.body["error"]["code"].clone()),
        (400, json!("previous_response_not_found"))
    );

    // No member any more (the endpoint still configured).
    let mut removed = three_regions(3, &up);
    removed.gateways[0].members.remove(holder);
    gw.install(removed).unwrap();
    let got = by_id(&gw, Method::GET, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!(got.status, 404);
    assert!(got.body["error"]["message"].as_str().unwrap().contains("no longer part of gateway"));
    assert_eq!(requests(&up), before, "nothing sent upstream");

    // Back as a member: the same id works again (the id names the endpoint, not a state).
    gw.install(three_regions(4, &up)).unwrap();
    let got = by_id(&gw, Method::GET, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!((got.status, got.by), (200, made.by));
}

#[tokio::test]
async fn an_answer_too_large_to_read_ahead_is_pinned_as_it_is_relayed() {
    let up = regions().await.unwrap();
    // Every answer is over the read-ahead cap: relayed in chunks, its length unknown ahead.
    let config =
        modelgw_data_plane::DataPlaneConfig { max_buffered_response_bytes: 16, ..fast_config() };
    let gw = start(config).await.unwrap();
    gw.install(three_regions(1, &up)).unwrap();
    let made = create(&gw, CLIENT_KEY, None).await;
    assert_eq!(made.status, 200, "{}", made.body);
    let id = made.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("resp_mgw1"), "{id}");
    let next = create(&gw, CLIENT_KEY, Some(&id)).await;
    assert_eq!((next.status, next.by.as_str()), (200, made.by.as_str()), "{}", next.body);
    assert_eq!(next.body["previous_response_id"], json!(id));
    let got = by_id(&gw, Method::GET, &format!("/openai/v1/responses/{id}")).await;
    assert_eq!((got.status, got.body["id"].clone()), (200, json!(id)));
}
