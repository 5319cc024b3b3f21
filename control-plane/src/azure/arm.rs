//! A minimal Azure Resource Manager client over reqwest (the `azure_mgmt_*` crates are on an
//! incompatible azure_core, and cannot share a build with `azure_identity` 1.x): bearer token from the resolved
//! credential, `nextLink` paging, and bounded retries on 429 honouring `Retry-After`.
//!
//! Never logs or returns the bearer token or an account key; errors carry the request path (no
//! query) and ARM's `{code, message}`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use modelgw_model::Secret;
use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

/// Token scope for Azure Resource Manager.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// Environment variable overriding the ARM base URL (sovereign clouds, tests).
pub const ARM_ENDPOINT_ENV: &str = "MODELGW_ARM_ENDPOINT";
/// Public-cloud ARM.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// api-version for `Microsoft.Resources/subscriptions` (azure-wire.md §3).
pub const SUBSCRIPTIONS_API_VERSION: &str = "2022-12-01";
/// api-version for `Microsoft.CognitiveServices`: the newest documented stable one.
pub const COGNITIVE_SERVICES_API_VERSION: &str = "2025-06-01";

/// The ARM base URL from `MODELGW_ARM_ENDPOINT` (through `lookup`), else the public cloud.
pub fn arm_endpoint_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Url, url::ParseError> {
    let value = lookup(ARM_ENDPOINT_ENV).filter(|v| !v.trim().is_empty());
    Url::parse(value.as_deref().unwrap_or(DEFAULT_ARM_ENDPOINT))
}

/// Limits of one [`ArmClient`]; every field says why its default is what it is.
#[derive(Clone, Debug)]
pub struct ArmClientOptions {
    /// 429 answers retried per request before giving up. ARM's token bucket refills 25 reads/s,
    /// so a few waits of `Retry-After` always suffice unless something else hammers the
    /// subscription, in which case failing that one scope is better than stalling discovery.
    pub max_throttle_retries: u32,
    /// Longest `Retry-After` obeyed. A longer one (ARM can ask for minutes after sustained
    /// abuse) fails the scope at once instead of holding a discovery run for that long.
    pub max_retry_after: Duration,
    /// Wait after a 429 without `Retry-After`: ARM's documented minimum back-off window.
    pub default_retry_after: Duration,
    /// Whole-request timeout. ARM list calls answer in well under a second; 30 s covers a slow
    /// region without letting a dead connection hang discovery.
    pub request_timeout: Duration,
    /// Pages followed per list before assuming a `nextLink` loop. 1000 pages of ARM's 100-1000
    /// items each is far beyond any real tenant.
    pub max_pages: usize,
}

impl Default for ArmClientOptions {
    fn default() -> Self {
        Self {
            max_throttle_retries: 3,
            max_retry_after: Duration::from_secs(60),
            default_retry_after: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_pages: 1000,
        }
    }
}

/// Why an ARM call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArmError {
    #[error("no token for Azure Resource Manager: {0}")]
    Token(String),
    #[error("{method} {path}: {status} {code}: {message}")]
    Status { method: String, path: String, status: u16, code: String, message: String },
    #[error("{method} {path}: still throttled (429) after {retries} retries")]
    Throttled { method: String, path: String, retries: u32 },
    #[error(
        "{method} {path}: throttled (429) with Retry-After {retry_after:?}, above the {limit:?} this client waits"
    )]
    RetryAfterTooLong { method: String, path: String, retry_after: Duration, limit: Duration },
    #[error("{method} {path}: {message}")]
    Transport { method: String, path: String, message: String },
    #[error("{method} {path}: unexpected response body: {message}")]
    Decode { method: String, path: String, message: String },
    #[error(
        "nextLink leaves the ARM endpoint ({origin}); not followed so the token is not sent there"
    )]
    ForeignNextLink { origin: String },
    #[error("{path}: more than {limit} pages; assuming a nextLink loop")]
    TooManyPages { path: String, limit: usize },
    #[error("invalid ARM URL: {0}")]
    Url(String),
}

impl ArmError {
    /// The HTTP status ARM answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ArmError::Status { status, .. } => Some(*status),
            ArmError::Throttled { .. } | ArmError::RetryAfterTooLong { .. } => Some(429),
            _ => None,
        }
    }

    /// ARM's error code (`AuthorizationFailed`, …), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            ArmError::Status { code, .. } => Some(code),
            _ => None,
        }
    }

    /// ARM's error message, if any.
    pub fn arm_message(&self) -> Option<&str> {
        match self {
            ArmError::Status { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// A subscription as `GET /subscriptions` lists it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmSubscription {
    pub subscription_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
}

/// A Cognitive Services account.
#[derive(Clone, Debug, Deserialize)]
pub struct ArmAccount {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub properties: ArmAccountProperties,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmAccountProperties {
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub endpoints: HashMap<String, String>,
    #[serde(default)]
    pub provisioning_state: Option<String>,
}

/// A model deployment.
#[derive(Clone, Debug, Deserialize)]
pub struct ArmDeployment {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub sku: Option<ArmSku>,
    #[serde(default)]
    pub properties: ArmDeploymentProperties,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ArmSku {
    pub name: String,
    #[serde(default)]
    pub capacity: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmDeploymentProperties {
    #[serde(default)]
    pub model: Option<ArmModel>,
    #[serde(default)]
    pub version_upgrade_option: Option<String>,
    #[serde(default)]
    pub provisioning_state: Option<String>,
    #[serde(default)]
    pub rate_limits: Vec<ArmRateLimit>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ArmModel {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// One of a deployment's `rateLimits` (ARM types `renewalPeriod` and `count` as numbers).
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmRateLimit {
    #[serde(default)]
    pub key: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub renewal_period: Option<f64>,
    #[serde(default)]
    pub count: Option<f64>,
}

/// An account's two keys.
#[derive(Clone, Debug)]
pub struct AccountKeys {
    pub key1: Secret,
    pub key2: Secret,
}

#[derive(Deserialize)]
struct KeysWire {
    key1: String,
    key2: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(default)]
    next_link: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Calls ARM with tokens from one credential. Cheap to clone.
#[derive(Clone)]
pub struct ArmClient {
    http: reqwest::Client,
    base: Url,
    credential: Arc<dyn TokenCredential>,
    options: ArmClientOptions,
}

impl fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmClient")
            .field("base", &self.base.as_str())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ArmClient {
    /// `base` is the ARM endpoint (e.g. [`DEFAULT_ARM_ENDPOINT`]). Needs the process's rustls
    /// crypto provider installed, like every reqwest client here.
    pub fn new(
        base: Url,
        credential: Arc<dyn TokenCredential>,
        options: ArmClientOptions,
    ) -> Result<Self, ArmError> {
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            // ARM does not redirect reads; a redirect would carry the bearer token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ArmError::Url(format!("building the HTTP client: {e}")))?;
        Ok(Self { http, base, credential, options })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `GET /subscriptions`, all pages.
    pub async fn list_subscriptions(&self) -> Result<Vec<ArmSubscription>, ArmError> {
        self.list(&format!("/subscriptions?api-version={SUBSCRIPTIONS_API_VERSION}")).await
    }

    /// Every Cognitive Services account of a subscription, whatever its kind.
    pub async fn list_accounts(&self, subscription_id: &str) -> Result<Vec<ArmAccount>, ArmError> {
        self.list(&format!(
            "/subscriptions/{subscription_id}/providers/Microsoft.CognitiveServices/accounts?api-version={COGNITIVE_SERVICES_API_VERSION}"
        ))
        .await
    }

    /// The deployments of the account with ARM id `account_id`.
    pub async fn list_deployments(&self, account_id: &str) -> Result<Vec<ArmDeployment>, ArmError> {
        let account_id = account_id.trim_end_matches('/');
        self.list(&format!("{account_id}/deployments?api-version={COGNITIVE_SERVICES_API_VERSION}"))
            .await
    }

    /// `POST {account}/listKeys`.
    pub async fn list_keys(&self, account_id: &str) -> Result<AccountKeys, ArmError> {
        let account_id = account_id.trim_end_matches('/');
        let url = self
            .url(&format!("{account_id}/listKeys?api-version={COGNITIVE_SERVICES_API_VERSION}"))?;
        // serde's message could quote a key if the shape were odd; say only what was expected.
        let keys: KeysWire = self.call(Method::POST, url).await.map_err(|e| match e {
            ArmError::Decode { method, path, .. } => {
                ArmError::Decode { method, path, message: "expected {key1, key2}".to_owned() }
            }
            other => other,
        })?;
        Ok(AccountKeys { key1: Secret::new(keys.key1), key2: Secret::new(keys.key2) })
    }

    /// Every item of a list, following `nextLink` verbatim while it stays on the ARM origin.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<Vec<T>, ArmError> {
        let mut url = self.url(path_and_query)?;
        let mut items = Vec::new();
        for _ in 0..self.options.max_pages {
            let page: Page<T> = self.call(Method::GET, url).await?;
            items.extend(page.value);
            match page.next_link.filter(|l| !l.is_empty()) {
                None => return Ok(items),
                Some(link) => {
                    let next = Url::parse(&link).map_err(|e| ArmError::Url(e.to_string()))?;
                    if next.origin() != self.base.origin() {
                        return Err(ArmError::ForeignNextLink {
                            origin: next.origin().ascii_serialization(),
                        });
                    }
                    url = next;
                }
            }
        }
        Err(ArmError::TooManyPages {
            path: path_only(path_and_query),
            limit: self.options.max_pages,
        })
    }

    fn url(&self, path_and_query: &str) -> Result<Url, ArmError> {
        let base = self.base.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path_and_query}")).map_err(|e| ArmError::Url(e.to_string()))
    }

    /// Sends one request (retrying 429s) and decodes a success body.
    #[tracing::instrument(name = "azure.arm.request", skip_all, fields(method = %method, path = %url.path()))]
    async fn call<T: DeserializeOwned>(&self, method: Method, url: Url) -> Result<T, ArmError> {
        let path = url.path().to_owned();
        let method_name = method.as_str().to_owned();
        let mut throttled = 0u32;
        loop {
            let token = self
                .credential
                .get_token(&[ARM_SCOPE], None)
                .await
                .map_err(|e| ArmError::Token(e.to_string()))?;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.token.secret())
                .header(header::ACCEPT, "application/json");
            if method == Method::POST {
                request = request.header(header::CONTENT_LENGTH, 0);
            }
            let response = request.send().await.map_err(|e| ArmError::Transport {
                method: method_name.clone(),
                path: path.clone(),
                message: transport_message(&e),
            })?;
            let status = response.status();
            tracing::debug!(method = %method_name, %path, status = status.as_u16(), "arm response");
            if status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after =
                    retry_after(response.headers()).unwrap_or(self.options.default_retry_after);
                if retry_after > self.options.max_retry_after {
                    return Err(ArmError::RetryAfterTooLong {
                        method: method_name,
                        path,
                        retry_after,
                        limit: self.options.max_retry_after,
                    });
                }
                if throttled >= self.options.max_throttle_retries {
                    return Err(ArmError::Throttled {
                        method: method_name,
                        path,
                        retries: throttled,
                    });
                }
                throttled += 1;
                tracing::warn!(method = %method_name, %path, retry_after_ms = retry_after.as_millis() as u64, attempt = throttled, "arm throttled the request; waiting Retry-After");
                tokio::time::sleep(retry_after).await;
                continue;
            }
            let body = response.bytes().await.map_err(|e| ArmError::Transport {
                method: method_name.clone(),
                path: path.clone(),
                message: transport_message(&e),
            })?;
            if !status.is_success() {
                let envelope: ErrorEnvelope = serde_json::from_slice(&body).unwrap_or_default();
                let code = if envelope.error.code.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_owned()
                } else {
                    envelope.error.code
                };
                return Err(ArmError::Status {
                    method: method_name,
                    path,
                    status: status.as_u16(),
                    code,
                    message: envelope.error.message,
                });
            }
            return serde_json::from_slice(&body).map_err(|e| ArmError::Decode {
                method: method_name,
                path,
                message: e.to_string(),
            });
        }
    }
}

/// reqwest's error text names the URL; keep only what failed, without the query string.
fn transport_message(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let source = std::error::Error::source(error).map(|s| format!(": {s}")).unwrap_or_default();
    format!("{kind}{source}")
}

fn path_only(path_and_query: &str) -> String {
    path_and_query.split('?').next().unwrap_or_default().to_owned()
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = header::HeaderMap::new();
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            header::RETRY_AFTER,
            header::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn endpoint_defaults_to_public_cloud() {
        let url = arm_endpoint_from_lookup(|_| None).expect("default parses");
        assert_eq!(url.as_str(), "https://management.azure.com/");
        let url = arm_endpoint_from_lookup(|_| Some("http://127.0.0.1:9".into())).expect("parses");
        assert_eq!(url.port(), Some(9));
    }
}
