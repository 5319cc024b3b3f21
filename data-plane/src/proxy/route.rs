//! What a request asks for: the route from its path, the client key from its headers.

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method};

/// The routes the gateway serves. Paths are the Azure OpenAI surface, unchanged for clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `GET|HEAD /healthz`: the process is up.
    Healthz,
    /// `GET|HEAD /readyz`: a snapshot is applied.
    Readyz,
    /// `/openai/deployments/{deployment}/{operation}` (dated API versions).
    Deployment {
        deployment: &'a str,
        operation: &'a str,
    },
    /// `/openai/v1/{operation}`: the deployment is the body's `model`.
    V1 {
        operation: &'a str,
    },
    /// `/openai/v1/deployments/{deployment}/{operation}`: what `AzureOpenAI(base_url=…/openai/v1/)`
    /// sends; served like v1 upstream.
    V1Deployment {
        deployment: &'a str,
        operation: &'a str,
    },
    NotFound,
}

impl<'a> Route<'a> {
    /// The deployment named in the path, if the route has one.
    pub(crate) fn deployment(&self) -> Option<&'a str> {
        match *self {
            Route::Deployment { deployment, .. } | Route::V1Deployment { deployment, .. } => {
                Some(deployment)
            }
            _ => None,
        }
    }

    pub(crate) fn operation(&self) -> &'a str {
        match *self {
            Route::Deployment { operation, .. }
            | Route::V1 { operation }
            | Route::V1Deployment { operation, .. } => operation,
            _ => "",
        }
    }

    /// Whether the upstream request uses the v1 surface (and so `model` = deployment).
    pub(crate) fn is_v1(&self) -> bool {
        matches!(self, Route::V1 { .. } | Route::V1Deployment { .. })
    }
}

pub(crate) fn parse_route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let probe = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" if probe => return Route::Healthz,
        "/readyz" if probe => return Route::Readyz,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/openai/") else { return Route::NotFound };
    if rest.split('/').any(is_dot_segment) {
        // Upstream URL parsing would resolve `..` and let a gateway key reach other paths
        // of the upstream resource with the endpoint's credential.
        return Route::NotFound;
    }
    if let Some(rest) = rest.strip_prefix("deployments/") {
        match split_deployment(rest) {
            Some((deployment, operation)) => Route::Deployment { deployment, operation },
            None => Route::NotFound,
        }
    } else if let Some(rest) = rest.strip_prefix("v1/") {
        if let Some(rest) = rest.strip_prefix("deployments/") {
            match split_deployment(rest) {
                Some((deployment, operation)) => Route::V1Deployment { deployment, operation },
                None => Route::NotFound,
            }
        } else if rest.is_empty() {
            Route::NotFound
        } else {
            Route::V1 { operation: rest }
        }
    } else {
        Route::NotFound
    }
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

    #[test]
    fn deployment_paths() {
        assert_eq!(
            post("/openai/deployments/auto/chat/completions"),
            Route::Deployment { deployment: "auto", operation: "chat/completions" }
        );
        assert_eq!(
            post("/openai/deployments/gw/images/generations"),
            Route::Deployment { deployment: "gw", operation: "images/generations" }
        );
        assert_eq!(post("/openai/deployments/gw"), Route::NotFound);
        assert_eq!(post("/openai/deployments/gw/"), Route::NotFound);
        assert_eq!(post("/openai/deployments//chat/completions"), Route::NotFound);
    }

    #[test]
    fn v1_paths() {
        assert_eq!(
            post("/openai/v1/chat/completions"),
            Route::V1 { operation: "chat/completions" }
        );
        assert_eq!(post("/openai/v1/responses"), Route::V1 { operation: "responses" });
        assert_eq!(
            post("/openai/v1/deployments/auto/chat/completions"),
            Route::V1Deployment { deployment: "auto", operation: "chat/completions" }
        );
        assert_eq!(post("/openai/v1/"), Route::NotFound);
        assert!(post("/openai/v1/embeddings").is_v1());
        assert!(!post("/openai/deployments/a/embeddings").is_v1());
    }

    #[test]
    fn probes_and_unknown_paths() {
        assert_eq!(parse_route(&Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(parse_route(&Method::HEAD, "/readyz"), Route::Readyz);
        assert_eq!(parse_route(&Method::POST, "/healthz"), Route::NotFound);
        assert_eq!(post("/"), Route::NotFound);
        assert_eq!(post("/openai/responses"), Route::NotFound);
        assert_eq!(post("/v1/chat/completions"), Route::NotFound);
    }

    #[test]
    fn dot_segments_are_refused() {
        assert_eq!(post("/openai/deployments/auto/../../keys"), Route::NotFound);
        assert_eq!(post("/openai/v1/%2E%2e/x"), Route::NotFound);
        assert_eq!(post("/openai/deployments/./chat/completions"), Route::NotFound);
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
