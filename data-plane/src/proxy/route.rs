//! What a request asks for: the route from its path and method (through the operations
//! table), the client key from its headers.

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method};

use super::operations::{Lookup, Operation, Scope, Surface, lookup, stateful_surface_enabled};

/// The routes the gateway serves. Paths are the Azure OpenAI surface, unchanged for clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `GET|HEAD /healthz`: the process is up.
    Healthz,
    /// `GET|HEAD /readyz`: a snapshot is applied.
    Readyz,
    /// An operation of the table (`operations.rs`).
    Call(Call<'a>),
    /// Anything else: Azure's 404, from the gateway itself; the reason is logged.
    NotFound(&'static str),
}

/// An inference call: the operation, the surface it came on, the deployment its path names
/// (if any), and the stored object it is about (`responses/{id}…`: the id as the client sent
/// it, `[A-Za-z0-9_-]` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Call<'a> {
    pub operation: Operation,
    pub surface: Surface,
    pub deployment: Option<&'a str>,
    pub object: Option<&'a str>,
}

impl Call<'_> {
    /// Whether the body's `model` names the deployment (`auto` or the gateway), as on
    /// `/openai/v1/{op}` and `/openai/responses`: it is checked, and always rewritten to the
    /// endpoint's deployment.
    #[inline]
    pub(crate) fn model_names_deployment(&self) -> bool {
        self.deployment.is_none()
    }

    /// Whether the upstream request uses the v1 surface.
    #[inline]
    pub(crate) fn is_v1(&self) -> bool {
        self.surface == Surface::V1
    }
}

pub(crate) fn parse_route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let probe = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" if probe => return Route::Healthz,
        "/readyz" if probe => return Route::Readyz,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/openai/") else {
        return Route::NotFound("outside /openai/");
    };
    if rest.split('/').any(is_dot_segment) {
        // Upstream URL parsing would resolve `..` and let a gateway key reach other paths
        // of the upstream resource with the endpoint's credential.
        return Route::NotFound("dot segment");
    }
    let (surface, rest) = match rest.strip_prefix("v1/") {
        Some(rest) => (Surface::V1, rest),
        None => (Surface::Dated, rest),
    };
    let (deployment, scope, rest) = match rest.strip_prefix("deployments/") {
        Some(rest) => match split_deployment(rest) {
            Some((deployment, rest)) => (Some(deployment), Scope::Deployment, rest),
            None => return Route::NotFound("no deployment or operation"),
        },
        None => (None, Scope::Surface, rest),
    };
    match lookup(surface, scope, rest, method) {
        Lookup::Served(operation) => {
            Route::Call(Call { operation, surface, deployment, object: None })
        }
        Lookup::ServedById(operation, id) => {
            Route::Call(Call { operation, surface, deployment, object: Some(id) })
        }
        Lookup::WrongMethod(_) => Route::NotFound("method not served for this operation"),
        // The hook for enabling them per gateway, with pinning, later: off for every gateway.
        Lookup::Stateful(_) if !stateful_surface_enabled() => {
            Route::NotFound("stateful surface, not enabled")
        }
        Lookup::Stateful(_) => Route::NotFound("stateful surface, not implemented"),
        Lookup::Unknown => Route::NotFound("not an operation the gateway serves"),
    }
}

/// Whether a path's 404 waits for the key: under `/openai/` a wrong key gets 401 first, so it
/// learns nothing of which operations the table knows; anything else is 404 at once.
pub(crate) fn authenticates_first(path: &str) -> bool {
    path.starts_with("/openai/")
}

fn split_deployment(rest: &str) -> Option<(&str, &str)> {
    let (deployment, operation) = rest.split_once('/')?;
    (!deployment.is_empty() && !operation.is_empty()).then_some((deployment, operation))
}

fn is_dot_segment(segment: &str) -> bool {
    // Without allocating: this runs for every segment of every request path.
    [".", "..", "%2e", "%2e%2e", ".%2e", "%2e."].iter().any(|dot| segment.eq_ignore_ascii_case(dot))
}

/// The gateway key a client sent: `api-key`, else `Authorization: Bearer <key>`. When both are
/// present `api-key` wins (openai 1.x sends both with the same value).
pub(crate) fn client_key(headers: &HeaderMap) -> Option<&str> {
    let api_key = headers.get("api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(key) = api_key.filter(|k| !k.is_empty()) {
        return Some(key);
    }
    let authorization = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = authorization.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn post(path: &str) -> Route<'_> {
        parse_route(&Method::POST, path)
    }

    fn call(operation: Operation, surface: Surface, deployment: Option<&str>) -> Route<'_> {
        Route::Call(Call { operation, surface, deployment, object: None })
    }

    #[test]
    fn deployment_paths() {
        use Operation::{ChatCompletions, ImageGenerations};
        assert_eq!(
            post("/openai/deployments/auto/chat/completions"),
            call(ChatCompletions, Surface::Dated, Some("auto"))
        );
        assert_eq!(
            post("/openai/deployments/gw/images/generations"),
            call(ImageGenerations, Surface::Dated, Some("gw"))
        );
        assert!(matches!(post("/openai/deployments/gw"), Route::NotFound(_)));
        assert!(matches!(post("/openai/deployments/gw/"), Route::NotFound(_)));
        assert!(matches!(post("/openai/deployments//chat/completions"), Route::NotFound(_)));
        assert!(matches!(post("/openai/deployments/gw/files"), Route::NotFound(_)));
    }

    #[test]
    fn v1_and_dated_surface_paths() {
        use Operation::{AudioTranscriptions, ChatCompletions, Embeddings, Models, Responses};
        assert_eq!(post("/openai/v1/chat/completions"), call(ChatCompletions, Surface::V1, None));
        assert_eq!(post("/openai/v1/responses"), call(Responses, Surface::V1, None));
        assert_eq!(post("/openai/responses"), call(Responses, Surface::Dated, None));
        assert_eq!(
            post("/openai/v1/audio/transcriptions"),
            call(AudioTranscriptions, Surface::V1, None),
            "multipart with `model` in a form part"
        );
        assert_eq!(parse_route(&Method::GET, "/openai/models"), call(Models, Surface::Dated, None));
        assert_eq!(parse_route(&Method::GET, "/openai/v1/models"), call(Models, Surface::V1, None));
        assert_eq!(
            post("/openai/v1/deployments/auto/chat/completions"),
            call(ChatCompletions, Surface::V1, Some("auto"))
        );
        assert!(matches!(post("/openai/v1/"), Route::NotFound(_)));
        assert!(post("/openai/v1/embeddings") == call(Embeddings, Surface::V1, None));
        let Route::Call(c) = post("/openai/v1/embeddings") else { panic!("served") };
        assert!(c.is_v1() && c.model_names_deployment());
        let Route::Call(c) = post("/openai/deployments/a/embeddings") else { panic!("served") };
        assert!(!c.is_v1() && !c.model_names_deployment());
    }

    #[test]
    fn probes_unknown_paths_and_management_surfaces() {
        assert_eq!(parse_route(&Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(parse_route(&Method::HEAD, "/readyz"), Route::Readyz);
        assert!(matches!(parse_route(&Method::POST, "/healthz"), Route::NotFound(_)));
        assert!(matches!(post("/"), Route::NotFound(_)));
        assert!(matches!(post("/v1/chat/completions"), Route::NotFound(_)));
        assert!(matches!(post("/openai/chat/completions"), Route::NotFound(_)));
        for (method, path) in [
            (Method::GET, "/openai/v1/files"),
            (Method::DELETE, "/openai/v1/files/file-1"),
            (Method::GET, "/openai/v1/fine_tuning/jobs"),
            (Method::GET, "/openai/v1/responses/resp.someone_else"),
            (Method::GET, "/openai/deployments/gw/responses/resp_1"),
            (Method::GET, "/openai/v1/vector_stores"),
            (Method::POST, "/openai/v1/batches"),
            (Method::PUT, "/openai/v1/anything/at/all"),
            (Method::GET, "/openai/v1/chat/completions"),
            (Method::GET, "/openai/files?api-version=2024-10-21"),
        ] {
            assert!(matches!(parse_route(&method, path), Route::NotFound(_)), "{method} {path}");
        }
    }

    #[test]
    fn only_paths_under_openai_wait_for_the_key_before_their_404() {
        for path in ["/openai/v1/files", "/openai/deployments/gw", "/openai/x/../y"] {
            assert!(authenticates_first(path), "{path}");
        }
        for path in ["/", "/openai", "/v1/chat/completions", "/metrics", "/OPENAI/v1/files"] {
            assert!(!authenticates_first(path), "{path}");
        }
    }

    #[test]
    fn responses_by_id_carry_the_id_from_the_path() {
        let route = parse_route(&Method::GET, "/openai/v1/responses/resp_mgw1x_y/input_items");
        let Route::Call(call) = route else { panic!("served: {route:?}") };
        assert_eq!(call.operation, Operation::ResponsesInputItems);
        assert_eq!(call.object, Some("resp_mgw1x_y"));
        assert!(call.is_v1());
        let route = parse_route(&Method::DELETE, "/openai/responses/resp_mgw1x_y");
        let Route::Call(call) = route else { panic!("served: {route:?}") };
        assert_eq!((call.operation, call.surface), (Operation::ResponsesDelete, Surface::Dated));
        assert_eq!((call.object, call.deployment), (Some("resp_mgw1x_y"), None));
        let Route::Call(create) = post("/openai/v1/responses") else { panic!("served") };
        assert_eq!(create.object, None);
    }

    #[test]
    fn dot_segments_are_refused() {
        assert!(matches!(post("/openai/deployments/auto/../../keys"), Route::NotFound(_)));
        assert!(matches!(post("/openai/v1/%2E%2e/x"), Route::NotFound(_)));
        assert!(matches!(post("/openai/deployments/./chat/completions"), Route::NotFound(_)));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn key_extraction_prefers_api_key() {
        let both = headers(&[("api-key", "from-api-key"), ("authorization", "Bearer from-bearer")]);
        assert_eq!(client_key(&both), Some("from-api-key"));
        let bearer = headers(&[("authorization", "bearer  tok ")]);
        assert_eq!(client_key(&bearer), Some("tok"));
        let empty_api_key = headers(&[("api-key", " "), ("authorization", "Bearer b")]);
        assert_eq!(client_key(&empty_api_key), Some("b"));
        assert_eq!(client_key(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(client_key(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(client_key(&HeaderMap::new()), None);
    }
}
