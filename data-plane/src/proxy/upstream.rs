//! Building the upstream request for one endpoint: URL, headers, body.

use std::ops::Range;

use bytes::Bytes;
use http::Uri;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderName, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method};
use modelgw_model::Platform;

use super::rewrite::{ModelProbe, insert_model, splice};
use super::route::Route;
use crate::routing_table::{API_KEY, CompiledEndpoint};

/// Request id header Azure echoes back; forwarded so upstream logs correlate with ours.
pub(crate) const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");

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

/// The client's headers as sent upstream: without its credentials, hop-by-hop headers,
/// `host` and `content-length` (both recomputed by the client library), `expect`, and the
/// gateway's own `x-modelgw-*` controls (e.g. `x-modelgw-timeout-ms`), which mean nothing
/// upstream.
pub(crate) fn upstream_headers(client: &HeaderMap, request_id: &HeaderValue) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        let drop = is_hop_by_hop(name)
            || name == HOST
            || name == CONTENT_LENGTH
            || name == EXPECT
            || name == API_KEY
            || name == AUTHORIZATION
            || name.as_str().starts_with("x-modelgw-")
            || listed.contains(name);
        if !drop {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(CLIENT_REQUEST_ID, request_id.clone());
    out
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
    pub route: Route<'a>,
    pub query: Option<&'a str>,
    /// The client's headers and request id, to build an attempt's headers from.
    pub client_headers: &'a HeaderMap,
    pub request_id_header: &'a HeaderValue,
    /// The first attempt's headers, built up front; later attempts (failover) build their own.
    pub prepared: Option<HeaderMap>,
    pub body: Bytes,
    pub model: ModelProbe,
}

impl RequestPlan<'_> {
    /// Headers for the next attempt (before its credential is added): the prepared set the
    /// first time, a fresh one on failover — no copy on the common, single-attempt path.
    pub(crate) fn headers(&mut self) -> HeaderMap {
        self.prepared
            .take()
            .unwrap_or_else(|| upstream_headers(self.client_headers, self.request_id_header))
    }

    /// `{base}/openai/deployments/{dep}/{op}?{query}` or `{base}/openai/v1/{op}?{query}` for
    /// Azure; `{base}/{op}` (query without `api-version`) for OpenAI-compatible APIs.
    ///
    /// Built from the endpoint's pre-split scheme, authority and path prefix: every piece is
    /// already valid in a URI (the client's path and query came in as one, the deployment is
    /// percent-encoded), so nothing is parsed but the final, cheap path-and-query check (which
    /// therefore never fails in practice; the caller still treats a failure as a failed attempt).
    pub(crate) fn url(&self, endpoint: &CompiledEndpoint) -> Result<Uri, http::Error> {
        let operation = self.route.operation();
        let query = self.query.unwrap_or("");
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
                if self.route.is_v1() {
                    target.push_str("/openai/v1/");
                } else {
                    target.push_str("/openai/deployments/");
                    target.push_str(&endpoint.deployment_segment);
                    target.push('/');
                }
                target.push_str(operation);
                if !query.is_empty() {
                    target.push('?');
                    target.push_str(query);
                }
            }
            Platform::OpenaiCompatible => {
                target.push('/');
                target.push_str(operation);
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

    /// The body for `endpoint`: `model` becomes its deployment on v1 paths, for
    /// OpenAI-compatible APIs, and where the client asked for `auto`; otherwise unchanged.
    pub(crate) fn body(&self, endpoint: &CompiledEndpoint) -> Bytes {
        let compatible = endpoint.platform == Platform::OpenaiCompatible;
        match &self.model {
            ModelProbe::Present(field) => {
                let is_auto = field.value.as_deref() == Some("auto");
                if compatible || self.route.is_v1() || is_auto {
                    self.replace(field.span.clone(), &endpoint.deployment_json)
                } else {
                    self.body.clone()
                }
            }
            // OpenAI's deployment-scoped operations (chat, embeddings, audio, images) all take
            // `model`; other v1 operations may reject an unexpected one, so only insert here.
            ModelProbe::Absent if compatible && !self.route.is_v1() => {
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
    use crate::proxy::route::parse_route;
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
        RequestPlan {
            request_id: "test",
            method: Method::POST,
            route: parse_route(&Method::POST, path),
            query,
            client_headers: &EMPTY,
            request_id_header: &REQUEST_ID,
            prepared: None,
            body: Bytes::from_static(body.as_bytes()),
            model: probe_model(body.as_bytes()),
        }
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
        let missing_v1 = plan("/openai/v1/files", None, r#"{"n":1}"#);
        assert_eq!(&missing_v1.body(&compatible)[..], br#"{"n":1}"#);
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_are_stripped() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("api-key", "client-key"),
            ("authorization", "Bearer client-key"),
            ("host", "gw.example"),
            ("content-length", "12"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("x-stainless-lang", "python"),
            ("x-ms-client-request-id", "client-id"),
            ("x-modelgw-timeout-ms", "500"),
        ] {
            client.append(name, HeaderValue::from_static(value));
        }
        let out = upstream_headers(&client, &HeaderValue::from_static("client-id"));
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["content-type", "x-ms-client-request-id", "x-stainless-lang"]);

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
