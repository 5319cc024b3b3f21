//! Building the upstream request for one endpoint: URL, headers, body.
//!
//! Request headers go upstream by allowlist ([`forwarding`]): what Azure OpenAI and the
//! SDKs use, nothing else — no cookie, no proxy or platform header (`Metadata`,
//! `Ocp-Apim-*`, `X-Forwarded-*` unless configured), never the client's credential. The query
//! string loses every gateway credential ([`upstream_query`]). Responses keep Azure's headers.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use http::Uri;
use http::header::{
    ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, CONNECTION, CONTENT_TYPE, HeaderName,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, USER_AGENT,
};
use http::{HeaderMap, HeaderValue, Method};
use modelgw_model::Platform;

use super::operations::BodyKind;
use super::rewrite::{ModelProbe, insert_model, splice};
use super::route::Call;
use super::trace_context::RequestTrace;
use crate::routing_table::CompiledEndpoint;

/// Request id header Azure echoes back; forwarded so upstream logs correlate with ours.
pub(crate) const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");

/// Request headers forwarded upstream by exact name, besides the standard `accept`,
/// `accept-encoding`, `accept-language`, `content-type` and `user-agent` (matched by their
/// interned names). `x-ms-client-request-id` is always set by the gateway itself.
pub(crate) const FORWARDED_HEADERS: [&str; 4] =
    ["traceparent", "tracestate", "x-ms-useragent", "idempotency-key"];

/// Families forwarded by prefix: the SDKs' `x-stainless-*` (language, version, retry count,
/// timeouts) and OpenAI's `openai-*` (`openai-beta`), but for [`IDENTITY_HEADERS`].
pub(crate) const FORWARDED_PREFIXES: [&str; 2] = ["x-stainless-", "openai-"];

/// Client-address headers, forwarded only with `MODELGW_FORWARD_CLIENT_ADDRESS_HEADERS`
/// (they are whatever the client wrote unless a trusted proxy in front rewrites them).
pub(crate) const CLIENT_ADDRESS_HEADERS: [&str; 4] =
    ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded"];

/// Headers of the `openai-*` family that name the account the upstream bills
/// (`openai-organization`, `openai-project`): never forwarded. The endpoint's key decides
/// which organisation and project pay — on an OpenAI endpoint whose key reaches several, a
/// client naming another would otherwise bill it (and Azure ignores them).
pub(crate) const IDENTITY_HEADERS: [&str; 2] = ["openai-organization", "openai-project"];

/// Query parameters that carry a credential (compared case-insensitively, percent-decoded):
/// never sent upstream, whatever their value. A parameter whose value is the client's own
/// gateway key is dropped too.
pub(crate) const CREDENTIAL_PARAMS: [&str; 9] = [
    "api-key",
    "api_key",
    "apikey",
    "key",
    "subscription-key",
    "ocp-apim-subscription-key",
    "access_token",
    "token",
    "code",
];

/// What the allowlist makes of one client request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forwarding {
    Dropped,
    Forwarded,
}

/// Whether a client request header goes upstream; see [`FORWARDED_HEADERS`].
#[inline]
pub(crate) fn forwarding(name: &HeaderName, client_address_headers: bool) -> Forwarding {
    if name == CONTENT_TYPE
        || name == ACCEPT
        || name == USER_AGENT
        || name == ACCEPT_ENCODING
        || name == ACCEPT_LANGUAGE
    {
        return Forwarding::Forwarded;
    }
    let name = name.as_str();
    if FORWARDED_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
        // The identity headers are of the `openai-*` family: checked only here.
        return if IDENTITY_HEADERS.contains(&name) {
            Forwarding::Dropped
        } else {
            Forwarding::Forwarded
        };
    }
    if FORWARDED_HEADERS.contains(&name)
        || (client_address_headers && CLIENT_ADDRESS_HEADERS.contains(&name))
    {
        Forwarding::Forwarded
    } else {
        Forwarding::Dropped
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the de-facto `keep-alive`/`proxy-connection`):
/// they describe one connection and must not cross the proxy in either direction.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Header names listed in `Connection:` are hop-by-hop too. Connection options that are not
/// header names in use (`close`, `keep-alive`: removed as hop-by-hop anyway) are skipped
/// without building a `HeaderName`.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive")
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// The client's headers as sent upstream: the allowlisted ones ([`forwarding`]) that the
/// client's `Connection` header does not declare hop-by-hop, plus the request id.
pub(crate) fn upstream_headers(
    client: &HeaderMap,
    request_id: &HeaderValue,
    client_address_headers: bool,
) -> HeaderMap {
    let listed =
        if client.contains_key(CONNECTION) { connection_listed(client) } else { Vec::new() };
    let mut out = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        if forwarding(name, client_address_headers) == Forwarding::Forwarded
            && !listed.contains(name)
        {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(CLIENT_REQUEST_ID, request_id.clone());
    out
}

/// The client's query string as sent upstream: without credential parameters
/// ([`CREDENTIAL_PARAMS`]) and without any parameter whose value is the client's gateway key.
/// Borrowed (no copy) when nothing is removed, the common case (`api-version=…` alone).
pub(crate) fn upstream_query<'a>(
    query: Option<&'a str>,
    client_key: Option<&str>,
) -> Option<Cow<'a, str>> {
    let query = query.filter(|q| !q.is_empty())?;
    // The common case, one `api-version` pair whose value needs no decoding: kept unless the
    // value is the client's key, without the general pass below.
    if let Some(version) = query.strip_prefix("api-version=")
        && !version.bytes().any(|b| matches!(b, b'&' | b'%' | b'+'))
    {
        let is_key = client_key.is_some_and(|key| !key.is_empty() && version == key);
        return (!is_key).then_some(Cow::Borrowed(query));
    }
    filtered_query(query, client_key)
}

/// [`upstream_query`]'s general pass over every pair of a non-empty query.
pub(crate) fn filtered_query<'a>(query: &'a str, client_key: Option<&str>) -> Option<Cow<'a, str>> {
    let keep = |pair: &str| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name);
        if CREDENTIAL_PARAMS.iter().any(|c| name.eq_ignore_ascii_case(c)) {
            return false;
        }
        !client_key.is_some_and(|key| !key.is_empty() && percent_decode(value) == key)
    };
    if query.split('&').all(keep) {
        return Some(Cow::Borrowed(query));
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !pair.is_empty() && keep(pair)).collect();
    (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
}

/// `%XX` decoded (and `+` as a space, as forms encode it); invalid escapes are kept as they
/// are. Borrowed when there is nothing to decode.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The upstream's headers as sent to the client, without hop-by-hop headers.
pub(crate) fn downstream_headers(mut upstream: HeaderMap) -> HeaderMap {
    // Usually nothing (HTTP/2) or just `connection: keep-alive` (HTTP/1.1): no allocation then.
    if upstream.contains_key(CONNECTION) {
        for name in connection_listed(&upstream) {
            upstream.remove(name);
        }
    }
    while let Some(name) = upstream.keys().find(|n| is_hop_by_hop(n)).cloned() {
        upstream.remove(name);
    }
    upstream
}

/// Everything about the client's request that does not depend on the endpoint, prepared once.
pub(crate) struct RequestPlan<'a> {
    /// The request's id, named in every line logged about it.
    pub request_id: &'a str,
    pub method: Method,
    pub call: Call<'a>,
    /// The query as sent upstream (credentials removed); see [`upstream_query`].
    pub query: Option<Cow<'a, str>>,
    /// The client's headers and request id, to build an attempt's headers from.
    pub client_headers: &'a HeaderMap,
    pub request_id_header: &'a HeaderValue,
    /// Whether client-address headers are forwarded (`MODELGW_FORWARD_CLIENT_ADDRESS_HEADERS`).
    pub client_address_headers: bool,
    /// The first attempt's headers, built up front; later attempts (failover) build their own.
    pub prepared: Option<HeaderMap>,
    /// Whether the request carries something of the client's that an upstream may authorise
    /// by (an identity header, query parameters besides `api-version`): a 401/403 is then not
    /// proof that the endpoint's credential is bad.
    pub client_scoped_auth: bool,
    pub body: Bytes,
    pub model: ModelProbe,
    /// The gateway added `stream_options.include_usage` to `body`: what the client did not
    /// ask for is taken out of the stream again.
    pub strip_usage: bool,
    /// When the request arrived (durations and time to first token count from here).
    pub started: std::time::Instant,
    /// The request's spans when tracing is on: each attempt's `traceparent` comes from them.
    pub trace: Option<&'a mut RequestTrace>,
    /// What the key's limits admitted; charged when the answer ends (`None`: a key without a
    /// chain).
    pub charge: Option<crate::limits::Ticket>,
    /// A call about a stored response: the one member that may answer it, and the response's
    /// upstream id (`None`: any member may).
    pub pinned: Option<super::pinning::Pinned>,
    /// What the request costs an endpoint's quota, and the gateway's rules for reading it.
    pub demand: crate::health::Demand,
}

impl RequestPlan<'_> {
    /// Headers for the next attempt (before its credential is added): the prepared set the
    /// first time, a fresh one on failover — no copy on the common, single-attempt path.
    pub(crate) fn headers(&mut self) -> HeaderMap {
        let mut headers = self.prepared.take().unwrap_or_else(|| {
            upstream_headers(
                self.client_headers,
                self.request_id_header,
                self.client_address_headers,
            )
        });
        if let Some(trace) = &self.trace {
            trace.inject(&mut headers);
        }
        headers
    }

    /// `{base}/openai/deployments/{dep}/{op}?{query}`, `{base}/openai/{op}?{query}` (dated
    /// operations without a deployment) or `{base}/openai/v1/{op}?{query}` for Azure;
    /// `{base}/{op}` (query without `api-version`) for OpenAI-compatible APIs. `{op}` is the
    /// operation's path from the operations table, never the client's.
    ///
    /// Built from the endpoint's pre-split scheme, authority and path prefix: every piece is
    /// already valid in a URI (the client's query came in as one, the deployment is
    /// percent-encoded), so nothing is parsed but the final, cheap path-and-query check (which
    /// therefore never fails in practice; the caller still treats a failure as a failed attempt).
    pub(crate) fn url(&self, endpoint: &CompiledEndpoint) -> Result<Uri, http::Error> {
        let operation = self.call.operation.path();
        let query = self.query.as_deref().unwrap_or("");
        let mut target = String::with_capacity(
            endpoint.path_prefix.len()
                + endpoint.deployment_segment.len()
                + operation.len()
                + query.len()
                + 24,
        );
        target.push_str(&endpoint.path_prefix);
        match endpoint.platform {
            Platform::AzureOpenai => {
                if self.call.is_v1() {
                    target.push_str("/openai/v1/");
                } else if self.call.deployment.is_some() {
                    target.push_str("/openai/deployments/");
                    target.push_str(&endpoint.deployment_segment);
                    target.push('/');
                } else {
                    target.push_str("/openai/");
                }
                target.push_str(operation);
                self.push_object(&mut target);
                if !query.is_empty() {
                    target.push('?');
                    target.push_str(query);
                }
            }
            Platform::OpenaiCompatible => {
                target.push('/');
                target.push_str(operation);
                self.push_object(&mut target);
                let mut first = true;
                for pair in query.split('&') {
                    let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                    if pair.is_empty() || key == "api-version" {
                        continue;
                    }
                    target.push(if first { '?' } else { '&' });
                    target.push_str(pair);
                    first = false;
                }
            }
        }
        Uri::builder()
            .scheme(endpoint.scheme.clone())
            .authority(endpoint.authority.clone())
            .path_and_query(target)
            .build()
    }

    /// `/{id}{suffix}` of an operation on a stored response: the upstream's id (`[A-Za-z0-9_-]`,
    /// so nothing to encode), never the client's.
    fn push_object(&self, target: &mut String) {
        if let (Some(suffix), Some(pinned)) = (self.call.operation.object_suffix(), &self.pinned) {
            target.push('/');
            target.push_str(&pinned.upstream_id);
            target.push_str(suffix);
        }
    }

    /// The body for `endpoint`: `model` (a JSON member, or a form's `model` part) becomes its
    /// deployment where it names the deployment (v1, `/openai/responses`), for
    /// OpenAI-compatible APIs (which route by it; inserted into JSON when absent), and where
    /// the client asked for `auto`; otherwise unchanged.
    pub(crate) fn body(&self, endpoint: &CompiledEndpoint) -> Bytes {
        let compatible = endpoint.platform == Platform::OpenaiCompatible;
        match &self.model {
            ModelProbe::Present(field) => {
                let is_auto = field.value.as_deref() == Some("auto");
                let rewrite = compatible
                    || self.call.is_v1()
                    || self.call.model_names_deployment()
                    || is_auto;
                match field.replacement(endpoint) {
                    Some(value) if rewrite => self.replace(field.span.clone(), value),
                    _ => self.body.clone(),
                }
            }
            ModelProbe::Absent if compatible && self.call.operation.body() == BodyKind::Json => {
                insert_model(&self.body, &endpoint.deployment_json)
            }
            _ => self.body.clone(),
        }
    }

    fn replace(&self, span: Range<usize>, value: &[u8]) -> Bytes {
        if &self.body[span.clone()] == value {
            return self.body.clone();
        }
        splice(&self.body, span, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::rewrite::probe_model;
    use crate::proxy::route::{Route, parse_route};
    use crate::routing_table::RoutingTable;
    use crate::routing_table::tests::{endpoint, gateway, member};
    use modelgw_model::{ConfigVersion, Snapshot};
    use std::sync::Arc;

    fn compiled(platform: Platform, deployment: &str) -> Arc<CompiledEndpoint> {
        compiled_at(platform, deployment, "https://res.openai.azure.com/")
    }

    fn compiled_at(platform: Platform, deployment: &str, base: &str) -> Arc<CompiledEndpoint> {
        let mut e = endpoint("e", platform, deployment);
        e.base_url = url::Url::parse(base).expect("base url");
        let snapshot = Snapshot {
            version: ConfigVersion(1),
            gateways: vec![gateway("gw", "k", vec![member(&e, true, 0, 1)])],
            endpoints: vec![e],
        };
        let table = RoutingTable::compile(&snapshot).expect("compiles");
        Arc::clone(&table.gateways()[0].groups[0].members[0].endpoint)
    }

    static EMPTY: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
    static REQUEST_ID: HeaderValue = HeaderValue::from_static("test");

    fn plan<'a>(path: &'a str, query: Option<&'a str>, body: &'static str) -> RequestPlan<'a> {
        let Route::Call(call) = parse_route(&Method::POST, path) else {
            panic!("{path} is not an operation")
        };
        RequestPlan {
            request_id: "test",
            method: Method::POST,
            call,
            query: upstream_query(query, None),
            client_headers: &EMPTY,
            request_id_header: &REQUEST_ID,
            client_address_headers: false,
            prepared: None,
            client_scoped_auth: false,
            body: Bytes::from_static(body.as_bytes()),
            model: probe_model(body.as_bytes()).expect("one JSON object"),
            strip_usage: false,
            started: std::time::Instant::now(),
            trace: None,
            charge: None,
            pinned: None,
            demand: crate::health::Demand::default(),
        }
    }

    #[test]
    fn calls_on_a_stored_response_name_the_upstream_id_never_the_clients() {
        let azure = compiled(Platform::AzureOpenai, "dep");
        let compatible = compiled_at(Platform::OpenaiCompatible, "llama", "http://vllm:8000/v1");
        let pinned = crate::proxy::pinning::Pinned {
            group: 0,
            member: 0,
            upstream_id: "resp_up1".to_owned(),
            client_id: "resp_mgw1pinned_up1".to_owned(),
        };
        let mut v1 = plan("/openai/v1/responses/resp_mgw1pinned_up1/cancel", None, "{}");
        v1.pinned = Some(pinned.clone());
        assert_eq!(
            v1.url(&azure).expect("uri").to_string(),
            "https://res.openai.azure.com/openai/v1/responses/resp_up1/cancel"
        );
        assert_eq!(
            v1.url(&compatible).expect("uri").to_string(),
            "http://vllm:8000/v1/responses/resp_up1/cancel"
        );
        let mut dated = plan(
            "/openai/responses/resp_mgw1pinned_up1/cancel",
            Some("api-version=2025-04-01-preview"),
            "{}",
        );
        dated.pinned = Some(pinned);
        assert_eq!(
            dated.url(&azure).expect("uri").to_string(),
            "https://res.openai.azure.com/openai/responses/resp_up1/cancel?api-version=2025-04-01-preview"
        );
        // A create pinned by its previous_response_id keeps the create's path.
        let mut create = plan("/openai/v1/responses", None, r#"{"model":"gw"}"#);
        create.pinned = v1.pinned.clone();
        assert_eq!(
            create.url(&azure).expect("uri").to_string(),
            "https://res.openai.azure.com/openai/v1/responses"
        );
    }

    #[test]
    fn azure_urls_keep_the_query_and_swap_the_deployment() {
        let azure = compiled(Platform::AzureOpenai, "gpt 4o");
        let p =
            plan("/openai/deployments/auto/chat/completions", Some("api-version=2024-10-21"), "{}");
        assert_eq!(
            p.url(&azure).expect("uri").to_string(),
            "https://res.openai.azure.com/openai/deployments/gpt%204o/chat/completions?api-version=2024-10-21"
        );
        let p = plan("/openai/v1/chat/completions", None, "{}");
        assert_eq!(
            p.url(&azure).expect("uri").to_string(),
            "https://res.openai.azure.com/openai/v1/chat/completions"
        );
        let p = plan("/openai/v1/deployments/gw/embeddings", Some("api-version=preview"), "{}");
        assert_eq!(
            p.url(&azure).expect("uri").to_string(),
            "https://res.openai.azure.com/openai/v1/embeddings?api-version=preview"
        );
    }

    #[test]
    fn openai_compatible_urls_drop_api_version() {
        let compatible = compiled(Platform::OpenaiCompatible, "llama");
        let p = plan(
            "/openai/deployments/auto/chat/completions",
            Some("api-version=2024-10-21&x=1"),
            "{}",
        );
        assert_eq!(
            p.url(&compatible).expect("uri").to_string(),
            "https://res.openai.azure.com/chat/completions?x=1"
        );
        let p = plan("/openai/v1/embeddings", Some("api-version=preview"), "{}");
        assert_eq!(
            p.url(&compatible).expect("uri").to_string(),
            "https://res.openai.azure.com/embeddings"
        );
    }

    #[test]
    fn base_paths_ports_and_ipv6_hosts_survive_into_the_upstream_uri() {
        let p = plan(
            "/openai/deployments/auto/chat/completions",
            Some("api-version=2024-10-21&x=a%20b"),
            "{}",
        );
        let vllm = compiled_at(Platform::OpenaiCompatible, "llama", "http://10.0.0.7:8000/v1/");
        assert_eq!(
            p.url(&vllm).expect("uri").to_string(),
            "http://10.0.0.7:8000/v1/chat/completions?x=a%20b"
        );
        let apim = compiled_at(Platform::AzureOpenai, "dep", "https://apim.example.com/aoai");
        assert_eq!(
            p.url(&apim).expect("uri").to_string(),
            "https://apim.example.com/aoai/openai/deployments/dep/chat/completions?api-version=2024-10-21&x=a%20b"
        );
        let v6 = compiled_at(Platform::AzureOpenai, "dep", "http://[::1]:9000");
        let uri = p.url(&v6).expect("uri");
        assert_eq!(uri.authority().map(|a| a.as_str()), Some("[::1]:9000"));
        assert_eq!(uri.path(), "/openai/deployments/dep/chat/completions");
    }

    #[test]
    fn model_rewrite_rules() {
        let azure = compiled(Platform::AzureOpenai, "dep-eus");
        let compatible = compiled(Platform::OpenaiCompatible, "llama");
        let deployment_path = "/openai/deployments/gw/chat/completions";

        let named = plan(deployment_path, None, r#"{"model":"gpt-4o"}"#);
        assert_eq!(&named.body(&azure)[..], br#"{"model":"gpt-4o"}"#, "kept on deployment paths");
        assert_eq!(&named.body(&compatible)[..], br#"{"model":"llama"}"#);

        let auto = plan(deployment_path, None, r#"{"model":"auto"}"#);
        assert_eq!(&auto.body(&azure)[..], br#"{"model":"dep-eus"}"#);

        let v1 = plan("/openai/v1/chat/completions", None, r#"{"model":"gw","n":1}"#);
        assert_eq!(&v1.body(&azure)[..], br#"{"model":"dep-eus","n":1}"#);

        let missing = plan(deployment_path, None, r#"{"n":1}"#);
        assert_eq!(&missing.body(&azure)[..], br#"{"n":1}"#);
        assert_eq!(&missing.body(&compatible)[..], br#"{"model":"llama","n":1}"#);
        let missing_v1 = plan("/openai/v1/embeddings", None, r#"{"n":1}"#);
        assert_eq!(&missing_v1.body(&azure)[..], br#"{"n":1}"#);
        assert_eq!(&missing_v1.body(&compatible)[..], br#"{"model":"llama","n":1}"#);

        let responses = plan("/openai/responses", None, r#"{"model":"gw"}"#);
        assert_eq!(&responses.body(&azure)[..], br#"{"model":"dep-eus"}"#);
    }

    #[test]
    fn only_allowlisted_headers_go_upstream() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("api-key", "client-key"),
            ("authorization", "Bearer client-key"),
            ("host", "gw.example"),
            ("content-length", "12"),
            ("connection", "keep-alive, x-stainless-drop"),
            ("x-stainless-drop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("user-agent", "AzureOpenAI/Python 1.109.1"),
            ("x-stainless-lang", "python"),
            ("openai-organization", "org-1"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("x-ms-client-request-id", "client-id"),
            ("x-modelgw-timeout-ms", "500"),
            ("cookie", "session=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("ocp-apim-subscription-key", "k"),
            ("metadata", "true"),
            ("x-custom", "1"),
        ] {
            client.append(name, HeaderValue::from_static(value));
        }
        let out = upstream_headers(&client, &HeaderValue::from_static("client-id"), false);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "accept",
                "content-type",
                "traceparent",
                "user-agent",
                "x-ms-client-request-id",
                "x-stainless-lang"
            ]
        );
        let with_address = upstream_headers(&client, &HeaderValue::from_static("id"), true);
        assert_eq!(
            with_address.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"10.0.0.1"[..])
        );
    }

    #[test]
    fn credentials_leave_the_query() {
        let q = |query: &'static str, key: Option<&str>| {
            upstream_query(Some(query), key).map(|q| q.into_owned())
        };
        assert!(matches!(
            upstream_query(Some("api-version=2024-10-21"), Some("k")),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(
            q("api-version=2024-10-21&api-key=mgw-1", None).as_deref(),
            Some("api-version=2024-10-21")
        );
        assert_eq!(q("API-KEY=x&api-version=v", None).as_deref(), Some("api-version=v"));
        assert_eq!(q("api%2Dkey=x&api-version=v", None).as_deref(), Some("api-version=v"));
        assert_eq!(
            q("api-version=v&mine=mgw-secret", Some("mgw-secret")).as_deref(),
            Some("api-version=v")
        );
        assert_eq!(q("x=mgw%2Dsecret", Some("mgw-secret")), None);
        assert_eq!(q("subscription-key=1", None), None);
        assert_eq!(q("api-version=mgw-secret", Some("mgw-secret")), None, "the key as a version");
        assert_eq!(q("api-version=mgw%2Dsecret", Some("mgw-secret")), None);
        assert_eq!(q("api-version=v", Some("")).as_deref(), Some("api-version=v"));
        assert_eq!(upstream_query(None, None), None);
        assert_eq!(upstream_query(Some(""), None), None);
    }

    #[test]
    fn hop_by_hop_headers_leave_answers() {
        let mut upstream = HeaderMap::new();
        upstream.insert("connection", HeaderValue::from_static("close, x-hop"));
        upstream.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        upstream.insert("x-hop", HeaderValue::from_static("1"));
        upstream.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        upstream.insert("x-ratelimit-remaining-tokens", HeaderValue::from_static("9"));
        let down = downstream_headers(upstream);
        assert_eq!(down.len(), 1, "{down:?}");
        assert!(down.contains_key("x-ratelimit-remaining-tokens"));

        let mut clean = HeaderMap::new();
        clean.insert("content-type", HeaderValue::from_static("application/json"));
        clean.insert("apim-request-id", HeaderValue::from_static("abc"));
        assert_eq!(downstream_headers(clean.clone()), clean, "nothing hop-by-hop: unchanged");
    }
}
