//! The rest of the inference surface through the request path (issue #16), over real HTTP:
//! the model list the gateway answers itself, 401 before any 404 under `/openai/`, multipart
//! uploads whose form `model` is read, rewritten and re-sent identically on failover, a
//! streamed Responses create relayed intact with its usage counted, and a large binary speech
//! answer streamed past the buffering cap.
//!
//! The upstreams that must speak audio, images and Responses are small recording hyper
//! servers here (the mock regions serve chat, completions and embeddings): each records what
//! it received, byte for byte, and answers as the test scripts it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use modelgw_data_plane::metrics::OPERATIONS;
use modelgw_data_plane::{DataPlaneConfig, apply_leases};
use modelgw_mock_openai::wire;
use modelgw_model::keys::{KeyLimits, LeaseGrant, Leases, Measure, Usage, Window, WindowLimits};
use modelgw_model::traces::TraceSettings;
use modelgw_model::{Platform, RoutingPolicy};
use serde_json::{Value, json};
use support::{
    API_VERSION, CLIENT_KEY, GATEWAY, Region, TestGateway, fast_config, header, region, unmocked,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How long any one step may take before the test fails (instead of hanging).
const STEP: Duration = Duration::from_secs(10);

type UpstreamBody = UnsyncBoxBody<Bytes, Infallible>;
type Answer = Arc<dyn Fn() -> Response<UpstreamBody> + Send + Sync>;

/// One request as a recording upstream received it.
#[derive(Clone, Debug)]
struct Recorded {
    path_and_query: String,
    content_type: Option<String>,
    api_key: Option<String>,
    body: Bytes,
}

/// A loopback HTTP/1.1 server that records every request and answers each with `answer`.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    async fn start(answer: Answer) -> Result<Upstream> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (answer, record) = (Arc::clone(&answer), Arc::clone(&record));
                let service = service_fn(move |request: Request<Incoming>| {
                    let (answer, record) = (Arc::clone(&answer), Arc::clone(&record));
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let header = |name: &str| {
                            parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
                        };
                        record.lock().unwrap().push(Recorded {
                            path_and_query: parts.uri.path_and_query().unwrap().to_string(),
                            content_type: header("content-type"),
                            api_key: header("api-key"),
                            body,
                        });
                        Ok::<_, Infallible>(answer())
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Upstream { addr, seen })
    }

    /// A region named `name` (deployment `gpt-4o-{name}`) served by this upstream.
    fn region(&self, name: &str) -> Region {
        unmocked(name, format!("http://{}", self.addr))
    }

    fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}

fn full(bytes: impl Into<Bytes>) -> UpstreamBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// Always `status` with `content_type` and `body`.
fn answering(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let body = body.into();
    Arc::new(move || {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(full(body.clone()))
            .unwrap()
    })
}

/// Azure's 503 (the mock's wire body).
fn overloaded() -> Answer {
    answering(503, "application/json", wire::overloaded("req-0001"))
}

const TRANSCRIPT: &[u8] = br#"{"text":"hello from the second region"}"#;

const BOUNDARY: &str = "modelgw-test-boundary-7MA4YWxkTrZu0gW";

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// An upload as the SDKs write it: a binary file (every byte value, line ends and
/// delimiter-like bytes included), the `model` part, and another field.
fn upload(model: &str) -> Vec<u8> {
    let mut audio: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    audio.extend_from_slice(b"\r\n--not-the-boundary\r\nname=\"model\"\r\n\r\n");
    let mut body = Vec::new();
    let mut part = |head: &str, content: &[u8]| {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n{head}\r\n\r\n").as_bytes());
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    };
    part(
        "Content-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"\r\nContent-Type: audio/wav",
        &audio,
    );
    part("Content-Disposition: form-data; name=\"model\"", model.as_bytes());
    part("Content-Disposition: form-data; name=\"response_format\"", b"json");
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// A gateway over `first` (priority 0, so always tried first) and `second`.
async fn two_regions(first: &Upstream, second: &Upstream) -> Result<TestGateway> {
    let (eus, wus) = (first.region("eus"), second.region("wus"));
    support::gateway(&[(&eus, 0, 1), (&wus, 1, 1)], RoutingPolicy::default(), fast_config()).await
}

async fn post_form(gw: &TestGateway, path: &str, body: Vec<u8>) -> Result<reqwest::Response> {
    let request = gw
        .http
        .post(format!("{}{path}", gw.base))
        .header("api-key", CLIENT_KEY)
        .header("content-type", multipart_type())
        .body(body);
    Ok(tokio::time::timeout(STEP, request.send()).await??)
}

/// A multipart upload on a deployment path: the first region answers 503, the second gets
/// the very bytes and content type (boundary) the client sent, and the client its answer.
#[tokio::test]
async fn a_multipart_upload_fails_over_with_identical_bytes() -> Result<()> {
    let first = Upstream::start(overloaded()).await?;
    let second = Upstream::start(answering(200, "application/json", TRANSCRIPT)).await?;
    let gw = two_regions(&first, &second).await?;
    let sent = upload("whisper");
    let path = format!("/openai/deployments/{GATEWAY}/audio/transcriptions?{API_VERSION}");
    let response = post_form(&gw, &path, sent.clone()).await?;

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelgw-endpoint"), "wus");
    let attempts = header(&response, "x-modelgw-attempts").to_owned();
    assert!(attempts.starts_with("eus:server_error:"), "{attempts}");
    assert_eq!(response.bytes().await?, TRANSCRIPT, "the second region's answer");
    for (upstream, deployment) in [(&first, "gpt-4o-eus"), (&second, "gpt-4o-wus")] {
        let seen = upstream.seen();
        assert_eq!(seen.len(), 1, "{deployment}");
        let got = &seen[0];
        assert_eq!(
            got.path_and_query,
            format!("/openai/deployments/{deployment}/audio/transcriptions?{API_VERSION}")
        );
        assert_eq!(got.content_type.as_deref(), Some(multipart_type().as_str()));
        assert!(got.body == sent, "{deployment} got the client's bytes, unchanged");
        assert!(
            got.api_key
                .as_deref()
                .is_some_and(|k| k.contains(deployment.trim_start_matches("gpt-4o-")))
        );
    }
    Ok(())
}

/// On `/openai/v1/…` the form's `model` names the deployment: each region gets the form with
/// its own deployment in the `model` part and every other byte as the client sent it.
#[tokio::test]
async fn v1_forms_carry_each_regions_deployment_in_the_model_part_and_nothing_else_changes()
-> Result<()> {
    for operation in ["audio/transcriptions", "audio/translations", "images/edits"] {
        let first = Upstream::start(overloaded()).await?;
        let second = Upstream::start(answering(200, "application/json", TRANSCRIPT)).await?;
        let gw = two_regions(&first, &second).await?;
        // The v1 surface's `deployments/{d}/` form too: its upstream path has no deployment.
        for (path, model) in [
            (format!("/openai/v1/{operation}"), GATEWAY),
            (format!("/openai/v1/{operation}"), "auto"),
            (format!("/openai/v1/deployments/auto/{operation}"), "whisper"),
        ] {
            let response = post_form(&gw, &path, upload(model)).await?;
            assert_eq!(response.status(), 200, "{path} as {model}");
            assert_eq!(response.bytes().await?, TRANSCRIPT);
        }
        // The first region cools down after its 503: later requests go to the second.
        let (first_seen, second_seen) = (first.seen(), second.seen());
        assert_eq!((first_seen.len(), second_seen.len()), (1, 3), "{operation}");
        for (got, deployment) in [
            (&first_seen[0], "gpt-4o-eus"),
            (&second_seen[0], "gpt-4o-wus"),
            (&second_seen[1], "gpt-4o-wus"),
            (&second_seen[2], "gpt-4o-wus"),
        ] {
            assert_eq!(got.path_and_query, format!("/openai/v1/{operation}"));
            assert_eq!(got.content_type.as_deref(), Some(multipart_type().as_str()));
            assert!(
                got.body == upload(deployment),
                "{operation}: only the model part became {deployment}"
            );
        }
    }
    Ok(())
}

/// A form the gateway cannot read exactly as an upstream would is a 400 in Azure's shape, on
/// v1 a `model` that is not the gateway's a 404 — before any upstream.
#[tokio::test]
async fn forms_are_read_strictly_before_any_upstream() -> Result<()> {
    let upstream = Upstream::start(answering(200, "application/json", TRANSCRIPT)).await?;
    let eus = upstream.region("eus");
    let gw = support::gateway(&[(&eus, 0, 1)], RoutingPolicy::default(), fast_config()).await?;
    let path = "/openai/v1/audio/transcriptions";
    let good = String::from_utf8_lossy(&upload(GATEWAY)).into_owned();
    let two_models = good.replacen(
        "name=\"response_format\"\r\n\r\njson",
        "name=\"model\"\r\n\r\no1-expensive",
        1,
    );
    let hidden = good.replacen("filename=\"speech.wav\"", "filename=\"x\\\"; name=\"model\"", 1);
    for (what, body) in [
        ("a preamble", format!("preamble\r\n{good}")),
        ("bytes after the close", format!("{good}trailing")),
        ("two model parts", two_models),
        ("a name hidden in a filename", hidden),
        ("no closing delimiter", good[..good.len() - 10].to_owned()),
    ] {
        let response = post_form(&gw, path, body.into_bytes()).await?;
        assert_eq!(response.status(), 400, "{what}");
        let error: Value = response.json().await?;
        assert_eq!(error["error"]["code"], "400", "{what}: Azure's shape");
    }
    let json_body = gw
        .http
        .post(format!("{}{path}", gw.base))
        .header("api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body(r#"{"model":"chat"}"#)
        .send()
        .await?;
    assert_eq!(json_body.status(), 400, "a JSON body where the operation takes a form");
    let other_model = post_form(&gw, path, upload("o1-expensive")).await?;
    assert_eq!(other_model.status(), 404);
    assert_eq!(other_model.json::<Value>().await?["error"]["code"], "DeploymentNotFound");
    assert!(upstream.seen().is_empty(), "the upstream received nothing");

    // On a deployment path the form is read as strictly (an OpenAI-compatible endpoint routes
    // by its `model`); a model it names is kept for Azure, `auto` becomes the deployment.
    let deployment_path = format!("/openai/deployments/auto/audio/transcriptions?{API_VERSION}");
    let odd = format!("preamble\r\n{good}");
    let response = post_form(&gw, &deployment_path, odd.into_bytes()).await?;
    assert_eq!(response.status(), 400);
    assert!(upstream.seen().is_empty(), "the upstream received nothing");
    for (model, sent) in [("whisper", "whisper"), ("auto", "gpt-4o-eus")] {
        let response = post_form(&gw, &deployment_path, upload(model)).await?;
        assert_eq!(response.status(), 200);
        assert!(upstream.seen().pop().unwrap().body == upload(sent), "{model} became {sent}");
    }
    Ok(())
}

/// An OpenAI-compatible endpoint routes by the form's `model`: it gets its own deployment
/// there whatever the client wrote, on a deployment path too, so a key cannot reach another
/// model of the account behind it.
#[tokio::test]
async fn an_openai_compatible_endpoint_gets_its_deployment_in_the_form_on_every_path() -> Result<()>
{
    let upstream = Upstream::start(answering(200, "application/json", TRANSCRIPT)).await?;
    let vllm = upstream.region("vllm");
    let gw = support::start(fast_config()).await?;
    let mut snapshot = support::snapshot(1, &[(&vllm, 0, 1)], RoutingPolicy::default())?;
    snapshot.endpoints[0].platform = Platform::OpenaiCompatible;
    gw.install(snapshot)?;
    for path in [
        format!("/openai/deployments/{GATEWAY}/audio/transcriptions?{API_VERSION}"),
        "/openai/v1/audio/transcriptions".to_owned(),
    ] {
        let model = if path.contains("/v1/") { GATEWAY } else { "gpt-4o-transcribe" };
        let response = post_form(&gw, &path, upload(model)).await?;
        assert_eq!(response.status(), 200, "{path}");
        let got = upstream.seen().pop().unwrap();
        assert_eq!(got.path_and_query, "/audio/transcriptions");
        assert_eq!(got.content_type.as_deref(), Some(multipart_type().as_str()));
        assert!(got.body == upload("gpt-4o-vllm"), "{path}: the endpoint's deployment");
    }
    Ok(())
}

/// The config of a gateway whose metrics a test reads.
fn with_metrics() -> DataPlaneConfig {
    DataPlaneConfig { metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))), ..fast_config() }
}

/// `GET /openai/models` (Azure's shape) and `GET /openai/v1/models` (OpenAI's) list `auto`
/// and the gateway; `…/models/{id}` describes either; no upstream is asked.
#[tokio::test]
async fn models_are_listed_by_the_gateway_itself() -> Result<()> {
    let eus = region("eus").await?;
    let gw = support::gateway(&[(&eus, 0, 1)], RoutingPolicy::default(), with_metrics()).await?;
    let get = |path: String, bearer: bool| {
        let request = gw.http.get(format!("{}{path}", gw.base));
        if bearer { request.bearer_auth(CLIENT_KEY) } else { request.header("api-key", CLIENT_KEY) }
    };

    let dated = get(format!("/openai/models?{API_VERSION}"), false).send().await?;
    assert_eq!(dated.status(), 200);
    assert_eq!(header(&dated, "content-type"), "application/json");
    let dated: Value = dated.json().await?;
    assert_eq!(dated["object"], "list");
    let ids: Vec<&str> =
        dated["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["auto", GATEWAY]);
    for model in dated["data"].as_array().unwrap() {
        for field in [
            "object",
            "created",
            "owned_by",
            "created_at",
            "status",
            "capabilities",
            "lifecycle_status",
        ] {
            assert!(model.get(field).is_some(), "{field} in {model}");
        }
        assert_eq!(model["status"], "succeeded");
    }

    let v1 = get("/openai/v1/models".to_owned(), true).send().await?;
    assert_eq!(v1.status(), 200);
    let v1: Value = v1.json().await?;
    assert_eq!(
        v1,
        json!({"object": "list", "data": [
            {"id": "auto", "object": "model", "created": v1["data"][0]["created"], "owned_by": "model-gateway"},
            {"id": GATEWAY, "object": "model", "created": v1["data"][0]["created"], "owned_by": "model-gateway"},
        ]})
    );
    assert!(v1["data"][0]["created"].as_u64().unwrap() > 1_700_000_000, "a Unix time");

    let one = get(format!("/openai/v1/models/{GATEWAY}"), false).send().await?;
    assert_eq!(one.json::<Value>().await?, v1["data"][1]);
    let one = get(format!("/openai/models/auto?{API_VERSION}"), false).send().await?;
    assert_eq!(one.json::<Value>().await?, dated["data"][0]);
    let other = get("/openai/v1/models/gpt-4o".to_owned(), false).send().await?;
    assert_eq!(other.status(), 404);
    assert_eq!(other.json::<Value>().await?["error"]["code"], "DeploymentNotFound");

    let wrong =
        gw.http.get(format!("{}/openai/v1/models", gw.base)).bearer_auth("nope").send().await?;
    assert_eq!(wrong.status(), 401);
    assert!(eus.mock().requests().is_empty(), "no upstream was asked");
    let models = [("gateway", GATEWAY), ("reason", "models"), ("status", "200")];
    assert_eq!(gw.metric("modelgw_local_responses_total", &models).await, 4.0);
    Ok(())
}

/// The paths of every operation of the table on every surface it is served on, with its
/// method; then the paths of operations the gateway knows but does not serve (stored
/// responses, files, a model by id, something else under `/openai/`).
fn known_operations() -> Vec<(&'static str, String)> {
    // (label, method, path below the surface, served below `deployments/{d}/`)
    let table: [(&str, &str, &str, bool); 14] = [
        ("chat_completions", "POST", "chat/completions", true),
        ("completions", "POST", "completions", true),
        ("embeddings", "POST", "embeddings", true),
        ("responses", "POST", "responses", false),
        ("image_generations", "POST", "images/generations", true),
        ("image_edits", "POST", "images/edits", true),
        ("audio_transcriptions", "POST", "audio/transcriptions", true),
        ("audio_translations", "POST", "audio/translations", true),
        ("audio_speech", "POST", "audio/speech", true),
        ("models", "GET", "models", false),
        ("responses_retrieve", "GET", "responses/resp_0123", false),
        ("responses_delete", "DELETE", "responses/resp_0123", false),
        ("responses_cancel", "POST", "responses/resp_0123/cancel", false),
        ("responses_input_items", "GET", "responses/resp_0123/input_items", false),
    ];
    let labels: Vec<&str> = table.iter().map(|(label, ..)| *label).collect();
    assert_eq!(labels, OPERATIONS, "every operation of the gateway is listed here");
    let mut paths = Vec::new();
    for (_, method, path, scoped) in table {
        paths.push((method, format!("/openai/v1/{path}")));
        if scoped {
            paths.push((method, format!("/openai/deployments/{GATEWAY}/{path}?{API_VERSION}")));
            paths.push((method, format!("/openai/deployments/auto/{path}?{API_VERSION}")));
            paths.push((method, format!("/openai/v1/deployments/{GATEWAY}/{path}")));
        } else {
            paths.push((method, format!("/openai/{path}?{API_VERSION}")));
        }
    }
    for (method, path) in [
        ("GET", "/openai/v1/responses/resp_0123"),
        ("DELETE", "/openai/v1/responses/resp_0123"),
        ("POST", "/openai/v1/responses/resp_0123/cancel"),
        ("GET", "/openai/v1/responses/resp_0123/input_items"),
        ("GET", "/openai/responses/resp_0123?api-version=2025-04-01-preview"),
        ("GET", "/openai/v1/chat/completions/chatcmpl-1"),
        ("GET", "/openai/v1/files"),
        ("POST", "/openai/files?api-version=2024-10-21"),
        ("GET", "/openai/v1/files/file-abc/content"),
        ("GET", "/openai/v1/models/chat"),
        ("GET", "/openai/models/auto?api-version=2024-10-21"),
        ("POST", "/openai/v1/batches"),
        ("GET", "/openai/v1/anything/at/all"),
        ("GET", "/openai/v1/chat/completions"),
    ] {
        paths.push((method, path.to_owned()));
    }
    paths
}

/// A wrong key — in `api-key`, as a bearer token, or none — gets 401 on every operation the
/// gateway knows, served or not, counted as a failed authentication; no upstream is asked.
/// Outside `/openai/` it is still 404 at once.
#[tokio::test]
async fn a_wrong_key_gets_401_on_every_known_operation() -> Result<()> {
    let eus = region("eus").await?;
    let gw = support::gateway(&[(&eus, 0, 1)], RoutingPolicy::default(), with_metrics()).await?;
    let mut refused = 0.0;
    for (method, path) in known_operations() {
        for key in [Some("api-key"), Some("bearer"), None] {
            let mut request = gw
                .http
                .request(method.parse()?, format!("{}{path}", gw.base))
                .header("content-type", "application/json");
            request = match key {
                Some("api-key") => request.header("api-key", "mgw-wrong-key-0001"),
                Some(_) => request.bearer_auth("mgw-wrong-key-0002"),
                None => request,
            };
            if method == "POST" {
                request = request.body(r#"{"model":"chat"}"#);
            }
            let response = request.send().await?;
            assert_eq!(response.status(), 401, "{method} {path} with {key:?}");
            let error: Value = response.json().await?;
            assert_eq!(error["error"]["code"], "401", "{method} {path}: Azure's shape");
            refused += 1.0;
        }
    }
    for path in ["/v1/chat/completions", "/openai", "/deployments/chat/chat/completions"] {
        let response =
            gw.http.post(format!("{}{path}", gw.base)).header("api-key", "nope").send().await?;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.text().await?, wire::RESOURCE_NOT_FOUND);
    }
    assert!(eus.mock().requests().is_empty(), "no upstream was asked");
    assert_eq!(gw.metric("modelgw_failed_authentications_total", &[]).await, refused);

    // With the right key, what the table does not serve is Azure's 404, still from the gateway.
    let response = gw
        .http
        .get(format!("{}/openai/v1/files", gw.base))
        .header("api-key", CLIENT_KEY)
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await?, wire::RESOURCE_NOT_FOUND);
    assert!(eus.mock().requests().is_empty());
    Ok(())
}

/// A Responses stream as OpenAI sends it: named events, `response.completed` with usage.
const RESPONSES_STREAM: &[u8] = b"event: response.created\n\
data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"usage\":null}}\n\n\
event: response.output_text.delta\n\
data: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hel\"}\n\n\
event: response.output_text.delta\n\
data: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"lo\"}\n\n\
event: response.output_text.done\n\
data: {\"type\":\"response.output_text.done\",\"sequence_number\":3,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"text\":\"Hello\"}\n\n\
event: response.completed\n\
data: {\"type\":\"response.completed\",\"sequence_number\":4,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"usage\":{\"input_tokens\":7,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":3,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":10}}}\n\n";

/// A streamed Responses create (dated and v1) reaches the client byte for byte, with the
/// body's `model` rewritten upstream and nothing added to it; its usage from
/// `response.completed` is counted by the metrics, charged to the key's limits and recorded in
/// the request's trace.
#[tokio::test]
async fn a_streamed_responses_create_is_relayed_intact_and_its_usage_counted() -> Result<()> {
    let upstream = Upstream::start(answering(200, "text/event-stream", RESPONSES_STREAM)).await?;
    let eus = upstream.region("eus");
    let gw = support::start(with_metrics()).await?;
    let mut snapshot = support::snapshot(1, &[(&eus, 0, 1)], RoutingPolicy::default())?;
    snapshot.gateways[0].traces = TraceSettings { enabled: true, ..Default::default() };
    let mut limits = KeyLimits::default();
    limits.window_mut(Window::Hour).set(Measure::TotalTokens, Some(100_000));
    snapshot.gateways[0].keys[0].limits = limits;
    let key = snapshot.gateways[0].keys[0].id;
    gw.install(snapshot)?;
    let now = unix_ms();
    if Window::Hour.start_of(now) + Window::Hour.len_ms() - now < 10_000 {
        // Both requests in one window: wait for the next one.
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    let mut granted = WindowLimits::default();
    granted.set(Measure::TotalTokens, Some(100_000));
    let grant = LeaseGrant {
        key_id: key,
        window: Window::Hour,
        window_start_unix_ms: Window::Hour.start_of(unix_ms()),
        granted,
        fleet_used: Usage::default(),
        own_used: Usage::default(),
        ceiling: WindowLimits::default(),
    };
    let leases =
        Leases { grants: vec![grant], valid_for: Duration::from_secs(60), skipped: vec![] };
    assert_eq!(apply_leases(gw.store.key_limits(), &leases).ignored, 0);

    for path in ["/openai/v1/responses", "/openai/responses?api-version=2025-04-01-preview"] {
        let body = json!({"model": GATEWAY, "input": "Say hello", "stream": true});
        let response = gw.post(path, &body).send().await?;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        // Relayed intact but for the response id, which the gateway pins to the endpoint
        // that created it (`resp_1` → `resp_mgw1<tag><mac>_1`, ARCHITECTURE.md "Pinned
        // stateful calls").
        let relayed = String::from_utf8(response.bytes().await?.to_vec())?;
        let start = relayed.find("resp_mgw1").expect("a pinned id");
        let pinned = &relayed[start..start + relayed[start..].find('"').expect("quoted")];
        assert!(pinned.ends_with("_1") && pinned.len() == "resp_mgw1".len() + 24 + 2, "{pinned}");
        assert_eq!(
            relayed.replace(pinned, "resp_1").as_bytes(),
            RESPONSES_STREAM,
            "{path}: relayed intact"
        );
        let got = upstream.seen().pop().unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&got.body)?,
            json!({"model": "gpt-4o-eus", "input": "Say hello", "stream": true}),
            "the deployment in `model`, no stream_options added"
        );
    }
    let labels = |kind| [("gateway", GATEWAY), ("endpoint", "eus"), ("gen_ai_token_type", kind)];
    assert_eq!(gw.metric("gen_ai_client_token_usage_sum", &labels("input")).await, 14.0);
    assert_eq!(gw.metric("gen_ai_client_token_usage_sum", &labels("output")).await, 6.0);
    let ok = [("gateway", GATEWAY), ("operation", "responses"), ("status_class", "2xx")];
    assert_eq!(gw.metric("modelgw_requests_total", &ok).await, 2.0);

    let mut traces = Vec::new();
    let deadline = tokio::time::Instant::now() + STEP;
    while traces.len() < 2 {
        match gw.traces.next_batch() {
            Some(batch) => traces.extend(batch.traces),
            None => {
                assert!(tokio::time::Instant::now() < deadline, "{traces:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    for trace in &traces {
        assert_eq!(
            (trace.operation.as_str(), trace.status, trace.stream),
            ("responses", 200, true)
        );
        assert_eq!((trace.prompt_tokens, trace.completion_tokens), (Some(7), Some(3)));
        assert!(trace.ttft_ms.is_some(), "the first output_text delta is the first token");
    }

    let charged = loop {
        let usage = gw.store.key_limits().usage(key, Window::Hour).expect("a known key");
        if usage.charged.requests == 2 && usage.reserved.is_zero() {
            break usage.charged;
        }
        assert!(tokio::time::Instant::now() < deadline, "{usage:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (prompt, completion) = (charged.prompt_tokens, charged.completion_tokens);
    assert_eq!((prompt, completion, charged.total_tokens), (14, 6, 20), "charged the usage");
    Ok(())
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A binary speech answer larger than the buffering cap streams through: the client has its
/// head and the first bytes while the upstream still holds the rest back.
#[tokio::test]
async fn a_large_speech_answer_streams_through_past_the_buffer_cap() -> Result<()> {
    const CAP: usize = 64 * 1024;
    const CHUNK: usize = 16 * 1024;
    let audio: Bytes = (0..8 * CAP).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>().into();
    let gate = Arc::new(Notify::new());
    let answer: Answer = {
        let (audio, gate) = (audio.clone(), Arc::clone(&gate));
        Arc::new(move || {
            let half = audio.len() / 2;
            let chunks = |range: std::ops::Range<usize>| {
                let audio = audio.clone();
                futures::stream::iter(range.step_by(CHUNK).map(move |at| {
                    Ok::<_, Infallible>(Frame::data(audio.slice(at..(at + CHUNK).min(audio.len()))))
                }))
            };
            let gate = Arc::clone(&gate);
            let rest = chunks(half..audio.len());
            let held = futures::stream::once(async move {
                gate.notified().await;
                rest
            })
            .flatten();
            let body = StreamBody::new(chunks(0..half).chain(held)).boxed_unsync();
            Response::builder().status(200).header("content-type", "audio/mpeg").body(body).unwrap()
        })
    };
    let upstream = Upstream::start(answer).await?;
    let eus = upstream.region("eus");
    let config = DataPlaneConfig { max_buffered_response_bytes: CAP, ..fast_config() };
    let gw = support::gateway(&[(&eus, 0, 1)], RoutingPolicy::default(), config).await?;
    let body = json!({"model": GATEWAY, "input": "Hello", "voice": "alloy"});
    let response = tokio::time::timeout(STEP, gw.post("/openai/v1/audio/speech", &body).send())
        .await
        .expect("the head arrives while the upstream holds back half the audio")?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "audio/mpeg");
    let mut stream = response.bytes_stream();
    let mut received = Vec::with_capacity(audio.len());
    while received.len() < audio.len() / 2 {
        let chunk = tokio::time::timeout(STEP, stream.next())
            .await
            .expect("the first half arrives before the upstream sends the rest")
            .expect("more bytes")?;
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received.len(), audio.len() / 2, "nothing of the held-back half yet");
    gate.notify_one();
    while let Some(chunk) = tokio::time::timeout(STEP, stream.next()).await? {
        received.extend_from_slice(&chunk?);
    }
    assert!(received == audio, "every byte, in order");
    Ok(())
}
