//! The Azure OpenAI surface: routing, api-version, auth, deployments, scripted faults, answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use tracing::Instrument;
use uuid::Uuid;

use crate::fault::Fault;
use crate::multipart::{self, Form};
use crate::quota::{Admission, Cost, Reading};
use crate::responses::{self, FIRST_RESPONSES_API_VERSION};
use crate::server::{Body, BodyError, MockError, full, read_body};
use crate::state::{RecordedRequest, Remaining, StoredResponse};
use crate::wire::{self, Completion, EmbeddingsError, Operation};
use crate::{BearerCheck, Shared, media, state};

const API_KEY: HeaderName = HeaderName::from_static("api-key");
const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");

/// Where a request goes, from its method and path.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    op: Operation,
    /// The deployment named in the path; `None` on deployment-less paths (`/openai/v1/{op}`,
    /// `/openai/responses…`, `/openai/models`): there it is the body's or form's `model`, or the
    /// deployment that created the response the path names.
    path_deployment: Option<String>,
    /// `/openai/v1/...` paths: api-version optional, bearer key accepted.
    v1: bool,
    /// The response id in `responses/{id}…` paths.
    response_id: Option<String>,
}

fn route(method: &Method, path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/openai/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let (v1, segments) = match segments.split_first() {
        Some((&"v1", tail)) => (true, tail),
        _ => (false, segments.as_slice()),
    };
    if let ["deployments", dep, tail @ ..] = segments {
        if dep.is_empty() {
            return None;
        }
        let op = deployment_op(method, tail)?;
        return Some(Route { op, path_deployment: Some((*dep).to_owned()), v1, response_id: None });
    }
    let id = |id: &str| (!id.is_empty()).then(|| id.to_owned());
    let (op, response_id) = match (method, segments) {
        (&Method::POST, ["responses"]) => (Operation::Responses, None),
        (&Method::GET, ["responses", r]) => (Operation::ResponseGet, Some(id(r)?)),
        (&Method::DELETE, ["responses", r]) => (Operation::ResponseDelete, Some(id(r)?)),
        (&Method::POST, ["responses", r, "cancel"]) => (Operation::ResponseCancel, Some(id(r)?)),
        (&Method::GET, ["responses", r, "input_items"]) => {
            (Operation::ResponseInputItems, Some(id(r)?))
        }
        (&Method::GET, ["models"]) => (Operation::Models, None),
        // Only v1 has deployment-less paths for the deployment operations.
        (_, tail) if v1 => (deployment_op(method, tail)?, None),
        _ => return None,
    };
    Some(Route { op, path_deployment: None, v1, response_id })
}

/// The operation of a `…/deployments/{d}/<tail>` path (or a v1 `/openai/v1/<tail>`).
fn deployment_op(method: &Method, tail: &[&str]) -> Option<Operation> {
    if method != Method::POST {
        return None;
    }
    Some(match tail {
        ["chat", "completions"] => Operation::Chat,
        ["completions"] => Operation::Completions,
        ["embeddings"] => Operation::Embeddings,
        ["images", "generations"] => Operation::ImageGenerations,
        ["images", "edits"] => Operation::ImageEdits,
        ["audio", "transcriptions"] => Operation::AudioTranscriptions,
        ["audio", "translations"] => Operation::AudioTranslations,
        ["audio", "speech"] => Operation::AudioSpeech,
        _ => return None,
    })
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Dated paths need a dated api-version (`YYYY-MM-DD` or `YYYY-MM-DD-preview`); v1 paths take
/// none, `v1` or `preview`. Anything else is Azure's 404 "Resource not found".
fn api_version_ok(v1: bool, version: Option<&str>) -> bool {
    match (v1, version) {
        (true, None | Some("v1" | "preview")) => true,
        (true, Some(_)) | (false, None) => false,
        (false, Some(v)) => {
            let date = v.strip_suffix("-preview").unwrap_or(v);
            let b = date.as_bytes();
            b.len() == 10
                && b.iter()
                    .enumerate()
                    .all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
        }
    }
}

/// The Responses API exists on dated paths from `2025-03-01-preview` on; v1 always has it.
fn responses_version_ok(v1: bool, version: Option<&str>) -> bool {
    v1 || version.is_some_and(|v| v.get(..10).is_some_and(|d| d >= FIRST_RESPONSES_API_VERSION))
}

/// Checks the credential; `Err` carries the 401 body. `api-key` wins when both headers are
/// present (what openai 1.x sends); a bearer key is accepted only on v1 paths, as Azure does.
/// With a `bearer` check set, an Entra token it accepts is valid on every path, as Azure takes
/// Entra ID tokens on classic and v1 paths alike.
fn check_auth(
    headers: &HeaderMap,
    key: &str,
    v1: bool,
    bearer: Option<&BearerCheck>,
) -> Result<(), &'static str> {
    if let Some(k) = headers.get(API_KEY) {
        return if k.as_bytes() == key.as_bytes() { Ok(()) } else { Err(wire::INVALID_KEY) };
    }
    if let Some(auth) = headers.get(AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|s| s.strip_prefix("Bearer ").or_else(|| s.strip_prefix("bearer ")));
        if let (Some(check), Some(token)) = (bearer, token)
            && check(token)
        {
            return Ok(());
        }
        return if v1 && token == Some(key) { Ok(()) } else { Err(wire::INVALID_TOKEN) };
    }
    Err(wire::MISSING_KEY)
}

/// What every Azure answer to one request carries in its headers.
struct Answer<'a> {
    shared: &'a Shared,
    apim_request_id: String,
    request_id: String,
    client_request_id: Option<HeaderValue>,
    /// Set once the deployment is known to exist.
    deployment: Option<String>,
    /// The legacy per-minute window's report, used while the region has no quota.
    remaining: Option<Remaining>,
    /// The quota's reading at admission, when the region has a quota: it replaces
    /// `remaining`, in the headers the quota's [`crate::QuotaHeaders`] asks for.
    quota: Option<Reading>,
}

impl Answer<'_> {
    fn headers(&self, headers: &mut HeaderMap) {
        let apim = header_value(&self.apim_request_id);
        headers.insert(
            "x-ms-client-request-id",
            self.client_request_id.clone().unwrap_or_else(|| apim.clone()),
        );
        headers.insert("apim-request-id", apim);
        headers.insert("x-request-id", header_value(&self.request_id));
        headers.insert("x-ms-region", self.shared.region_header.clone());
        headers.insert("azureml-model-session", self.shared.session_header.clone());
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        if let Some(dep) = &self.deployment {
            headers.insert("x-ms-deployment-name", header_value(dep));
        }
        if let Some(reading) = &self.quota {
            for (name, value) in reading.header_pairs() {
                headers.insert(name, header_value(&value));
            }
        } else if let Some(r) = self.remaining {
            headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(r.requests));
            headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from(r.tokens));
            headers.insert("x-ratelimit-limit-requests", HeaderValue::from(state::REQUEST_LIMIT));
            headers.insert("x-ratelimit-limit-tokens", HeaderValue::from(state::TOKEN_LIMIT));
        }
    }

    fn json(&self, status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
        self.with_body(status, "application/json", full(body))
    }

    fn with_body(
        &self,
        status: StatusCode,
        content_type: &'static str,
        body: Body,
    ) -> Response<Body> {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        self.headers(resp.headers_mut());
        resp
    }
}

/// Ids and deployment names are ASCII; a name that is not a header value is reported blank.
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, MockError> {
    let span = tracing::debug_span!(
        "mock_azure_request",
        region = %shared.config.region,
        method = %req.method(),
        path = %req.uri().path(),
        deployment = tracing::field::Empty,
        fault = tracing::field::Empty,
    );
    async move {
        let result = answer(&shared, req).await;
        match &result {
            Ok(resp) => tracing::debug!(status = resp.status().as_u16(), "mock answered"),
            Err(error) => tracing::debug!(%error, "mock dropped the connection"),
        }
        result
    }
    .instrument(span)
    .await
}

async fn answer(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>, MockError> {
    let (parts, body) = req.into_parts();
    let mut ans = Answer {
        shared,
        apim_request_id: Uuid::new_v4().to_string(),
        request_id: Uuid::new_v4().to_string(),
        client_request_id: parts.headers.get(CLIENT_REQUEST_ID).cloned(),
        deployment: None,
        remaining: None,
        quota: None,
    };
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Ok(ans.json(StatusCode::PAYLOAD_TOO_LARGE, wire::BODY_TOO_LARGE));
        }
        Err(BodyError::Broken(e)) => return Err(e),
    };
    let route = route(&parts.method, parts.uri.path());
    let op = route.as_ref().map(|r| r.op);
    // Multipart operations carry a form, the others JSON (or nothing, for GET and DELETE).
    let form = op.filter(|o| o.is_multipart()).map(|_| {
        let content_type =
            parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        multipart::parse(content_type, &body)
    });
    let json: Option<Value> =
        if form.is_some() { None } else { serde_json::from_slice(&body).ok() };
    let response_id = route.as_ref().and_then(|r| r.response_id.clone());
    let stored_deployment = response_id
        .as_deref()
        .and_then(|id| shared.state().responses.get(id).map(|r| r.deployment.clone()));
    let deployment = route.as_ref().and_then(|r| {
        r.path_deployment
            .clone()
            .or_else(|| {
                json.as_ref()
                    .and_then(|j| j.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .or_else(|| {
                form.as_ref()
                    .and_then(|f| f.as_ref().ok())
                    .and_then(|f| f.text("model"))
                    .map(str::to_owned)
            })
            .or_else(|| stored_deployment.clone())
    });
    if let Some(dep) = &deployment {
        tracing::Span::current().record("deployment", tracing::field::display(dep));
    }
    shared.state().record(RecordedRequest::new(&parts, &body, deployment.clone()));
    let admission = admit(shared, &parts, route.as_ref(), deployment.as_deref(), json.as_ref());
    let metered = admission.is_some();

    // A region's baseline distance applies to every answer.
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    // Every answer below leaves this block, so that a metered request answered 2xx is counted
    // once as served, whichever branch answered it.
    let result = async {
        let Some(route) = route else {
            return Ok(ans.json(StatusCode::NOT_FOUND, wire::RESOURCE_NOT_FOUND));
        };
        let api_version = query_param(parts.uri.query(), "api-version");
        let responses_op = route.op == Operation::Responses || route.op.names_a_response();
        if !api_version_ok(route.v1, api_version)
            || (responses_op && !responses_version_ok(route.v1, api_version))
        {
            return Ok(ans.json(StatusCode::NOT_FOUND, wire::RESOURCE_NOT_FOUND));
        }
        let exists = deployment.as_deref().is_some_and(|d| shared.has_deployment(d));
        if let Some(dep) = deployment.as_deref().filter(|_| exists) {
            ans.deployment = Some(dep.to_owned());
            ans.remaining = Some(shared.state().spend(dep, 0, 0));
            ans.quota = match &admission {
                Some(a) => Some(*a.reading()),
                None => shared.state().quota_reading(dep, Instant::now()),
            };
        }
        let bearer = shared.bearer_check();
        if let Err(body) =
            check_auth(&parts.headers, &shared.config.api_key, route.v1, bearer.as_ref())
        {
            return Ok(ans.json(StatusCode::UNAUTHORIZED, body));
        }
        let fixed = shared.fixed_ids.load(std::sync::atomic::Ordering::Relaxed);
        let created = if fixed { 1_736_407_895 } else { chrono::Utc::now().timestamp() };
        if route.op == Operation::Models {
            // The region's catalogue: no deployment, so no deployment's faults.
            let config = &shared.config;
            let body = if route.v1 {
                media::openai_models(&config.model, &config.deployments, created)
            } else {
                media::azure_models(&config.model, &config.deployments, created)
            };
            return Ok(ans.json(StatusCode::OK, body));
        }
        if let Some(id) = response_id.as_deref().filter(|_| stored_deployment.is_none()) {
            return Ok(ans.json(StatusCode::NOT_FOUND, responses::not_found(id)));
        }
        let Some(deployment) = deployment else {
            // Only a deployment-less path without a usable `model` gets here.
            let body = match &form {
                Some(Err(_)) => media::MALFORMED_FORM,
                None if json.is_none() => wire::INVALID_JSON,
                _ => wire::MISSING_MODEL,
            };
            return Ok(ans.json(StatusCode::BAD_REQUEST, body));
        };
        if !exists {
            return Ok(ans.json(StatusCode::NOT_FOUND, wire::DEPLOYMENT_NOT_FOUND));
        }

        // The deployment serves this request: it counts against its quota and meets its faults.
        if let Some(Admission::Throttled { retry_after, .. }) = admission {
            let version = api_version.unwrap_or("v1");
            return Ok(quota_throttled(&ans, route.op, version, retry_after));
        }
        ans.remaining = Some(shared.state().spend(&deployment, 1, 0));
        let fault = shared.state().take_fault(&deployment);
        if let Some(f) = &fault {
            tracing::Span::current().record("fault", tracing::field::display(f.kind()));
        }
        let mut shape = BodyShape::Whole;
        match fault {
            None => {}
            Some(Fault::Reset { .. }) => return Err(MockError::ScriptedReset),
            Some(Fault::ContentFilter { .. }) => {
                return Ok(ans.json(StatusCode::BAD_REQUEST, wire::CONTENT_FILTER));
            }
            Some(Fault::UnboundedEvent { bytes, .. }) => return Ok(unbounded_event(&ans, bytes)),
            Some(Fault::Status { status, retry_after, retry_after_ms, .. }) => {
                let version = api_version.unwrap_or("v1");
                return Ok(status_answer(
                    &ans,
                    route.op,
                    version,
                    status,
                    retry_after,
                    retry_after_ms,
                ));
            }
            Some(Fault::ThrottledByMessage { retry_after_secs, .. }) => {
                let version = api_version.unwrap_or("v1");
                let body = wire::too_many_requests(route.op, version, Some(retry_after_secs));
                return Ok(ans.json(StatusCode::TOO_MANY_REQUESTS, body));
            }
            Some(Fault::Latency { ms, .. }) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Some(Fault::StreamStall { after_chunks, ms, .. }) => {
                shape = BodyShape::Stall { after: after_chunks, pause: Duration::from_millis(ms) };
            }
            Some(Fault::StreamCut { after_chunks, .. }) => {
                shape = BodyShape::Cut { after: after_chunks }
            }
        }

        let ctx = Ctx { shared, deployment: &deployment, created, fixed, shape };
        if let Some(id) = response_id.as_deref() {
            return Ok(stored_response(&ctx, &mut ans, route.op, id, parts.uri.query()));
        }
        if let Some(form) = form {
            let form = match form {
                Ok(form) => form,
                Err(error) => {
                    tracing::debug!(%error, "mock refused a malformed form");
                    return Ok(ans.json(StatusCode::BAD_REQUEST, media::MALFORMED_FORM));
                }
            };
            return Ok(form_answer(&ctx, &ans, route.op, &form));
        }
        let Some(request) = json.filter(Value::is_object) else {
            let body = if serde_json::from_slice::<Value>(&body).is_ok() {
                wire::invalid_request("The request body must be a JSON object.")
            } else {
                wire::INVALID_JSON.to_owned()
            };
            return Ok(ans.json(StatusCode::BAD_REQUEST, body));
        };
        let id = |prefix: &str| if fixed { format!("{prefix}fixed") } else { random_id(prefix) };
        let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
        let include_usage =
            request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
        let model = shared.config.model.as_str();
        let region = shared.config.region.as_str();
        match route.op {
            Operation::Chat => {
                match request.get("messages").and_then(Value::as_array) {
                    None => {
                        let body = wire::invalid_request("'messages' is a required property");
                        return Ok(ans.json(StatusCode::BAD_REQUEST, body));
                    }
                    Some(m) if m.is_empty() => {
                        let body = wire::invalid_request("[] is too short - 'messages'");
                        return Ok(ans.json(StatusCode::BAD_REQUEST, body));
                    }
                    Some(m) => {
                        if let Err(body) = wire::check_tool_messages(m) {
                            return Ok(ans.json(StatusCode::BAD_REQUEST, body));
                        }
                    }
                }
                let c = Completion::new(id("chatcmpl-"), created, model, region, &request);
                ans.remaining = Some(shared.state().spend(&deployment, 0, c.total_tokens()));
                if stream {
                    Ok(sse(&ans, c.chat_sse_payloads(include_usage), shared.stream_gap(), shape))
                } else {
                    Ok(json_shaped(&ans, c.chat_json(), shape))
                }
            }
            Operation::Completions => {
                let c = Completion::new(id("cmpl-"), created, model, region, &request);
                ans.remaining = Some(shared.state().spend(&deployment, 0, c.total_tokens()));
                if stream {
                    Ok(sse(&ans, c.text_sse_payloads(include_usage), shared.stream_gap(), shape))
                } else {
                    Ok(json_shaped(&ans, c.text_json(), shape))
                }
            }
            Operation::Embeddings => match wire::embeddings(model, &request) {
                Ok((body, tokens)) => {
                    ans.remaining = Some(shared.state().spend(&deployment, 0, tokens));
                    Ok(json_shaped(&ans, body, shape))
                }
                Err(EmbeddingsError::MissingInput) => Ok(ans.json(
                    StatusCode::BAD_REQUEST,
                    wire::invalid_request("'input' is a required property"),
                )),
                Err(EmbeddingsError::EmptyInput) => Ok(ans.json(
                    StatusCode::BAD_REQUEST,
                    wire::invalid_request("[] is too short - 'input'"),
                )),
            },
            Operation::Responses => Ok(create_response(&ctx, &mut ans, &request, stream)),
            Operation::ImageGenerations => {
                match media::ImageRequest::from_json(&request, &deployment) {
                    Ok(images) => {
                        let body = images.answer(region, created, &mut || uuid_hex(fixed));
                        Ok(json_shaped(&ans, body, shape))
                    }
                    Err(body) => Ok(ans.json(StatusCode::BAD_REQUEST, body)),
                }
            }
            Operation::AudioSpeech => match media::speech_format(&request) {
                Ok(content_type) => {
                    let chunks = media::speech_chunks(content_type, region)
                        .into_iter()
                        .map(Bytes::from)
                        .collect();
                    Ok(ans.with_body(
                        StatusCode::OK,
                        content_type,
                        pieces(chunks, Duration::ZERO, shape),
                    ))
                }
                Err(body) => Ok(ans.json(StatusCode::BAD_REQUEST, body)),
            },
            // Routed above: multipart forms, stored-response paths, the model list.
            Operation::ImageEdits
            | Operation::AudioTranscriptions
            | Operation::AudioTranslations
            | Operation::ResponseGet
            | Operation::ResponseDelete
            | Operation::ResponseCancel
            | Operation::ResponseInputItems
            | Operation::Models => Ok(ans.json(StatusCode::NOT_FOUND, wire::RESOURCE_NOT_FOUND)),
        }
    }
    .await;
    if metered && result.as_ref().is_ok_and(|r| r.status().is_success()) {
        shared.state().count_served();
    }
    result
}

/// The quota's verdict on a request, at its arrival (before any latency, as Azure admits a
/// request before the model works on it): `None` unless the region has a quota and this is an
/// inference request Azure would admit at all — a known route and api-version, an existing
/// deployment, a valid credential.
fn admit(
    shared: &Shared,
    parts: &http::request::Parts,
    route: Option<&Route>,
    deployment: Option<&str>,
    json: Option<&Value>,
) -> Option<Admission> {
    let route = route.filter(|r| crate::quota::is_metered(r.op))?;
    let deployment = deployment.filter(|d| shared.has_deployment(d))?;
    let api_version = query_param(parts.uri.query(), "api-version");
    let version_ok = api_version_ok(route.v1, api_version)
        && (route.op != Operation::Responses || responses_version_ok(route.v1, api_version));
    let bearer = shared.bearer_check();
    let auth = check_auth(&parts.headers, &shared.config.api_key, route.v1, bearer.as_ref());
    if !version_ok || auth.is_err() {
        return None;
    }
    let cost = Cost::of_request(json);
    let admission = shared.state().admit(deployment, cost, Instant::now())?;
    if let Admission::Throttled { retry_after, .. } = &admission {
        tracing::debug!(
            deployment,
            tokens = cost.tokens,
            retry_after_ms = retry_after.as_millis(),
            "mock quota throttled a request"
        );
    }
    Some(admission)
}

/// The quota's 429: Azure's body saying when to retry, `retry-after` (whole seconds, rounded
/// up) and `retry-after-ms`; the quota headers come with every answer.
fn quota_throttled(
    ans: &Answer<'_>,
    op: Operation,
    api_version: &str,
    retry_after: Duration,
) -> Response<Body> {
    let ms = u64::try_from(retry_after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1);
    let secs = ms.div_ceil(1000);
    let body = wire::too_many_requests(op, api_version, Some(secs));
    let mut resp = ans.json(StatusCode::TOO_MANY_REQUESTS, body);
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    resp.headers_mut().insert("retry-after-ms", HeaderValue::from(ms));
    resp
}

/// What the answers after the fault step share.
struct Ctx<'a> {
    shared: &'a Shared,
    deployment: &'a str,
    created: i64,
    fixed: bool,
    shape: BodyShape,
}

/// `POST responses`: answers (JSON, or named SSE events with `stream`) and stores the response
/// unless `store` is false. A `previous_response_id` this region does not hold is a 400.
fn create_response(
    ctx: &Ctx<'_>,
    ans: &mut Answer<'_>,
    request: &Value,
    stream: bool,
) -> Response<Body> {
    let shared = ctx.shared;
    if !responses::has_input(request) {
        return ans.json(StatusCode::BAD_REQUEST, responses::MISSING_INPUT);
    }
    if let Some(previous) = request.get("previous_response_id").and_then(Value::as_str)
        && shared.state().responses.get(previous).is_none()
    {
        tracing::debug!(previous, "mock does not hold the previous response");
        return ans.json(StatusCode::BAD_REQUEST, responses::previous_not_found(previous));
    }
    let fixed = ctx.fixed;
    let mut id = |prefix: &str| if fixed { format!("{prefix}fixed") } else { random_hex(prefix) };
    let created = responses::Created::new(
        request,
        &shared.config.region,
        &shared.config.model,
        ctx.created,
        &mut id,
    );
    let background = request.get("background").and_then(Value::as_bool) == Some(true) && !stream;
    let completed = created.object("completed");
    let tokens = completed.pointer("/usage/total_tokens").and_then(Value::as_u64).unwrap_or(0);
    ans.remaining = Some(shared.state().spend(ctx.deployment, 0, tokens));
    let answered = if background { created.object("queued") } else { completed.clone() };
    if request.get("store").and_then(Value::as_bool) != Some(false) {
        let stored = StoredResponse {
            deployment: ctx.deployment.to_owned(),
            response: answered.clone(),
            input_items: responses::input_items(request, &mut id),
            background,
            pending: background.then_some(completed),
        };
        tracing::debug!(response_id = %created.id, "mock stored a response");
        shared.state().responses.insert(created.id.clone(), stored);
    }
    if stream {
        let frames = created
            .events()
            .into_iter()
            .map(|(kind, data)| Bytes::from(format!("event: {kind}\ndata: {data}\n\n")))
            .collect();
        return sse_frames(ans, frames, shared.stream_gap(), ctx.shape);
    }
    json_shaped(ans, answered.to_string(), ctx.shape)
}

/// `GET`/`DELETE responses/{id}`, `POST …/cancel`, `GET …/input_items` on a response this
/// region holds.
fn stored_response(
    ctx: &Ctx<'_>,
    ans: &mut Answer<'_>,
    op: Operation,
    id: &str,
    query: Option<&str>,
) -> Response<Body> {
    let mut state = ctx.shared.state();
    if op == Operation::ResponseDelete {
        drop(state.responses.remove(id));
        return json_shaped(ans, responses::deleted(id), ctx.shape);
    }
    let Some(stored) = state.responses.get_mut(id) else {
        // Deleted between the lookup and now.
        return ans.json(StatusCode::NOT_FOUND, responses::not_found(id));
    };
    let body = match op {
        Operation::ResponseGet => {
            if let Some(done) = stored.pending.take() {
                stored.response = done;
            }
            stored.response.to_string()
        }
        Operation::ResponseCancel => {
            if !stored.background {
                return ans.json(StatusCode::BAD_REQUEST, responses::CANCEL_NOT_BACKGROUND);
            }
            if stored.pending.take().is_some() {
                stored.response["status"] = Value::from("cancelled");
            }
            stored.response.to_string()
        }
        _ => responses::item_page(
            &stored.input_items,
            query_param(query, "order"),
            query_param(query, "limit"),
            query_param(query, "after"),
        ),
    };
    drop(state);
    json_shaped(ans, body, ctx.shape)
}

/// The multipart operations: image edits, transcriptions, translations.
fn form_answer(ctx: &Ctx<'_>, ans: &Answer<'_>, op: Operation, form: &Form) -> Response<Body> {
    let region = ctx.shared.config.region.as_str();
    let (content_type, body) = match op {
        Operation::ImageEdits => match media::ImageRequest::from_form(form, ctx.deployment) {
            Ok(images) => {
                let fixed = ctx.fixed;
                ("application/json", images.answer(region, ctx.created, &mut || uuid_hex(fixed)))
            }
            Err(body) => return ans.json(StatusCode::BAD_REQUEST, body),
        },
        Operation::AudioTranscriptions | Operation::AudioTranslations => {
            let task = if op == Operation::AudioTranslations {
                media::AudioTask::Translate
            } else {
                media::AudioTask::Transcribe
            };
            match media::audio_text(form, task, region) {
                Ok(a) => (a.content_type, a.body),
                Err(body) => return ans.json(StatusCode::BAD_REQUEST, body),
            }
        }
        _ => return ans.json(StatusCode::NOT_FOUND, wire::RESOURCE_NOT_FOUND),
    };
    shaped(ans, content_type, Bytes::from(body), ctx.shape)
}

/// A scripted status with Azure's body for it and the scripted retry hints.
fn status_answer(
    ans: &Answer<'_>,
    op: Operation,
    api_version: &str,
    status: u16,
    retry_after: Option<u64>,
    retry_after_ms: Option<u64>,
) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match status.as_u16() {
        429 => {
            let secs = retry_after.or_else(|| retry_after_ms.map(|ms| ms.div_ceil(1000)));
            wire::too_many_requests(op, api_version, secs)
        }
        500 => wire::server_error(&ans.apim_request_id),
        503 => wire::overloaded(&ans.apim_request_id),
        401 => wire::INVALID_KEY.to_owned(),
        404 => wire::DEPLOYMENT_NOT_FOUND.to_owned(),
        _ => wire::generic_error(status),
    };
    let mut resp = ans.json(status, body);
    if let Some(secs) = retry_after {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(ms) = retry_after_ms {
        resp.headers_mut().insert("retry-after-ms", HeaderValue::from(ms));
    }
    resp
}

/// Pause before a scripted cut so frames sent before it reach the socket: hyper flushes when
/// the body is pending; 50 ms covers a loaded CI machine and is invisible next to a test's
/// timeouts.
const CUT_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// How a successful body is delivered.
#[derive(Clone, Copy, Debug)]
enum BodyShape {
    Whole,
    /// Pause before piece number `after`.
    Stall {
        after: u32,
        pause: Duration,
    },
    /// Abort the connection instead of sending piece number `after`.
    Cut {
        after: u32,
    },
}

/// A JSON answer with `Content-Length`, shaped by a stall or a cut (see [`shaped`]).
fn json_shaped(ans: &Answer<'_>, body: String, shape: BodyShape) -> Response<Body> {
    shaped(ans, "application/json", Bytes::from(body), shape)
}

/// A 200 answer with `Content-Length`; a stall holds the body back after the headers, a cut
/// sends half of it and aborts.
fn shaped(
    ans: &Answer<'_>,
    content_type: &'static str,
    bytes: Bytes,
    shape: BodyShape,
) -> Response<Body> {
    let len = bytes.len();
    let body = match shape {
        BodyShape::Whole => return ans.with_body(StatusCode::OK, content_type, full(bytes)),
        BodyShape::Stall { pause, .. } => {
            pieces(vec![bytes], Duration::ZERO, BodyShape::Stall { after: 0, pause })
        }
        BodyShape::Cut { .. } => {
            let half = bytes.slice(..len / 2);
            pieces(vec![half, bytes.slice(len / 2..)], Duration::ZERO, BodyShape::Cut { after: 1 })
        }
    };
    let mut resp = ans.with_body(StatusCode::OK, content_type, body);
    resp.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// A chunked `text/event-stream` answer, one `data:` frame per body chunk, `gap` apart.
fn sse(ans: &Answer<'_>, payloads: Vec<String>, gap: Duration, shape: BodyShape) -> Response<Body> {
    let frames = payloads.into_iter().map(|p| Bytes::from(format!("data: {p}\n\n"))).collect();
    sse_frames(ans, frames, gap, shape)
}

/// A chunked `text/event-stream` answer of ready-made frames, one per body chunk, `gap` apart.
fn sse_frames(
    ans: &Answer<'_>,
    frames: Vec<Bytes>,
    gap: Duration,
    shape: BodyShape,
) -> Response<Body> {
    let mut resp = ans.with_body(
        StatusCode::OK,
        "text/event-stream; charset=utf-8",
        pieces(frames, gap, shape),
    );
    resp.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Size of each chunk of [`Fault::UnboundedEvent`]'s event.
const UNBOUNDED_CHUNK: usize = 64 * 1024;

/// Azure's first SSE frame, then `bytes` bytes of one `data:` line that never ends.
fn unbounded_event(ans: &Answer<'_>, bytes: u64) -> Response<Body> {
    let first = Bytes::from(format!("data: {}\n\n", wire::FIRST_SSE_FRAME));
    let filler = Bytes::from(vec![b'x'; UNBOUNDED_CHUNK]);
    let s = stream::unfold((0u64, true), move |(sent, head)| {
        let first = first.clone();
        let filler = filler.clone();
        async move {
            if head {
                return Some((Ok(Frame::data(first)), (0, false)));
            }
            if sent >= bytes {
                return None;
            }
            let chunk = if sent == 0 {
                let mut start = b"data: ".to_vec();
                start.extend_from_slice(&filler[6..]);
                Bytes::from(start)
            } else {
                filler.slice(
                    ..usize::try_from(bytes - sent).unwrap_or(UNBOUNDED_CHUNK).min(UNBOUNDED_CHUNK),
                )
            };
            let len = chunk.len() as u64;
            Some((Ok(Frame::data(chunk)), (sent + len, false)))
        }
    });
    let mut resp = ans.with_body(
        StatusCode::OK,
        "text/event-stream; charset=utf-8",
        StreamBody::new(s).boxed_unsync(),
    );
    resp.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Streams `frames` with `gap` between them, applying a stall or a cut. Everything happens
/// inside the body stream, so a client that goes away cancels pending pauses.
fn pieces(frames: Vec<Bytes>, gap: Duration, shape: BodyShape) -> Body {
    let (stall, cut) = match shape {
        BodyShape::Whole => (None, None),
        BodyShape::Stall { after, pause } => (Some((after as usize, pause)), None),
        BodyShape::Cut { after } => (None, Some(after as usize)),
    };
    let s = stream::unfold((0usize, frames, false), move |(i, frames, done)| async move {
        if done {
            return None;
        }
        if cut == Some(i) {
            // hyper drops its unflushed write buffer on a body error; pausing first (returning
            // Pending) lets it flush the frames already yielded, so the client sees exactly `i`.
            tokio::time::sleep(CUT_FLUSH_DELAY).await;
            return Some((Err(MockError::ScriptedCut), (i, frames, true)));
        }
        if let Some((at, pause)) = stall
            && at == i
        {
            tokio::time::sleep(pause).await;
        }
        let frame = frames.get(i)?.clone();
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        Some((Ok(Frame::data(frame)), (i + 1, frames, false)))
    });
    StreamBody::new(s).boxed_unsync()
}

/// An id like OpenAI's Responses ids: the prefix and 48 random hex digits.
fn random_hex(prefix: &str) -> String {
    let hex = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    format!("{prefix}{}", &hex[..48])
}

/// 32 random hex digits (or a fixed string), for blob names.
fn uuid_hex(fixed: bool) -> String {
    if fixed { "fixed".to_owned() } else { Uuid::new_v4().simple().to_string() }
}

/// An id like Azure's (`chatcmpl-` + 29 alphanumerics).
fn random_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::from(prefix);
    let mut n = Uuid::new_v4().as_u128() ^ (Uuid::new_v4().as_u128() << 7);
    for _ in 0..29 {
        if n == 0 {
            n = Uuid::new_v4().as_u128();
        }
        out.push(char::from(ALPHABET[(n % 62) as usize]));
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let post = Method::POST;
        let dated = route(&post, "/openai/deployments/d1/chat/completions").expect("chat");
        assert_eq!(
            dated,
            Route {
                op: Operation::Chat,
                path_deployment: Some("d1".into()),
                v1: false,
                response_id: None
            }
        );
        assert_eq!(
            route(&post, "/openai/deployments/d1/embeddings").map(|r| r.op),
            Some(Operation::Embeddings)
        );
        assert_eq!(
            route(&post, "/openai/deployments/d1/completions").map(|r| r.op),
            Some(Operation::Completions)
        );
        let v1 = route(&post, "/openai/v1/chat/completions").expect("v1 chat");
        assert_eq!(
            v1,
            Route { op: Operation::Chat, path_deployment: None, v1: true, response_id: None }
        );
        let v1d = route(&post, "/openai/v1/deployments/d/embeddings").expect("v1 deployment");
        assert_eq!(
            v1d,
            Route {
                op: Operation::Embeddings,
                path_deployment: Some("d".into()),
                v1: true,
                response_id: None
            }
        );
        assert_eq!(route(&post, "/openai/chat/completions"), None);
        assert_eq!(route(&post, "/openai/deployments//chat/completions"), None);
        assert_eq!(route(&post, "/openai/deployments/d/chat/completions/"), None);
        assert_eq!(route(&post, "/v1/chat/completions"), None);
        assert_eq!(route(&Method::GET, "/openai/deployments/d/chat/completions"), None);
    }

    #[test]
    fn routes_of_the_wider_surface() {
        let op = |m: Method, p: &str| route(&m, p).map(|r| r.op);
        for v1 in ["", "v1/"] {
            let p = |tail: &str| format!("/openai/{v1}{tail}");
            assert_eq!(op(Method::POST, &p("responses")), Some(Operation::Responses));
            let get = route(&Method::GET, &p("responses/resp_1")).expect("retrieve");
            assert_eq!(get.op, Operation::ResponseGet);
            assert_eq!(get.response_id.as_deref(), Some("resp_1"));
            assert_eq!(get.v1, !v1.is_empty());
            assert_eq!(op(Method::DELETE, &p("responses/r")), Some(Operation::ResponseDelete));
            assert_eq!(op(Method::POST, &p("responses/r/cancel")), Some(Operation::ResponseCancel));
            assert_eq!(
                op(Method::GET, &p("responses/r/input_items")),
                Some(Operation::ResponseInputItems)
            );
            assert_eq!(op(Method::GET, &p("models")), Some(Operation::Models));
            assert_eq!(op(Method::GET, &p("responses/")), None);
            assert_eq!(op(Method::POST, &p("models")), None);
            for (tail, expected) in [
                ("images/generations", Operation::ImageGenerations),
                ("images/edits", Operation::ImageEdits),
                ("audio/transcriptions", Operation::AudioTranscriptions),
                ("audio/translations", Operation::AudioTranslations),
                ("audio/speech", Operation::AudioSpeech),
            ] {
                assert_eq!(op(Method::POST, &p(&format!("deployments/d/{tail}"))), Some(expected));
            }
        }
        // Only v1 serves the deployment operations without a deployment in the path.
        assert_eq!(op(Method::POST, "/openai/v1/audio/speech"), Some(Operation::AudioSpeech));
        assert_eq!(op(Method::POST, "/openai/audio/speech"), None);
        assert!(responses_version_ok(false, Some("2025-03-01-preview")));
        assert!(responses_version_ok(false, Some("2025-04-01-preview")));
        assert!(!responses_version_ok(false, Some("2024-10-21")));
        assert!(responses_version_ok(true, None));
    }

    #[test]
    fn api_versions() {
        assert!(api_version_ok(false, Some("2024-10-21")));
        assert!(api_version_ok(false, Some("2025-04-01-preview")));
        assert!(!api_version_ok(false, None));
        assert!(!api_version_ok(false, Some("latest")));
        assert!(api_version_ok(true, None));
        assert!(api_version_ok(true, Some("preview")));
        assert!(!api_version_ok(true, Some("2024-10-21")));
        assert_eq!(
            query_param(Some("a=1&api-version=2024-10-21"), "api-version"),
            Some("2024-10-21")
        );
        assert_eq!(query_param(Some("api-version"), "api-version"), Some(""));
        assert_eq!(query_param(None, "api-version"), None);
    }

    #[test]
    fn auth_precedence() {
        let mut h = HeaderMap::new();
        assert_eq!(check_auth(&h, "k", true, None), Err(wire::MISSING_KEY));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        assert_eq!(check_auth(&h, "k", true, None), Ok(()));
        assert_eq!(check_auth(&h, "k", false, None), Err(wire::INVALID_TOKEN));
        h.insert(API_KEY, HeaderValue::from_static("wrong"));
        assert_eq!(check_auth(&h, "k", true, None), Err(wire::INVALID_KEY));
        h.insert(API_KEY, HeaderValue::from_static("k"));
        assert_eq!(check_auth(&h, "k", false, None), Ok(()));
    }

    #[test]
    fn an_accepted_bearer_token_is_valid_on_classic_paths_and_others_are_not() {
        let check: BearerCheck = Arc::new(|token: &str| token == "entra-token");
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer entra-token"));
        assert_eq!(check_auth(&h, "k", false, Some(&check)), Ok(()));
        assert_eq!(check_auth(&h, "k", false, None), Err(wire::INVALID_TOKEN));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer expired"));
        assert_eq!(check_auth(&h, "k", false, Some(&check)), Err(wire::INVALID_TOKEN));
    }

    #[test]
    fn ids_look_like_azure_ids() {
        let id = random_id("chatcmpl-");
        assert_eq!(id.len(), "chatcmpl-".len() + 29);
        assert!(id["chatcmpl-".len()..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(id, random_id("chatcmpl-"));
    }
}
