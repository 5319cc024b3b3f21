//! Azure Resource Manager, the part discovery uses (azure-wire.md §3): list subscriptions, list
//! Cognitive Services accounts, list deployments, `listKeys`; bearer-token auth against the
//! [`TokenMock`]; paging through absolute `nextLink`s; scripted 429s and 403s.
//!
//! Checks run in ARM's order as far as it is observable: authentication (401), api-version
//! (400), throttling (429), authorization (403), then the resource (404).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::inventory::{Account, Inventory, Subscription};
use crate::server::{self, Handler, Server};
use crate::token::{TokenCheck, TokenMock};

/// The ARM audience a token must be for.
pub const ARM_AUDIENCE: &str = "https://management.azure.com";

/// api-versions accepted for `Microsoft.Resources/subscriptions`.
pub const SUBSCRIPTION_API_VERSIONS: &[&str] = &["2016-06-01", "2020-01-01", "2022-12-01"];
/// api-versions accepted for `Microsoft.CognitiveServices`.
pub const COGNITIVE_API_VERSIONS: &[&str] =
    &["2023-05-01", "2024-10-01", "2025-06-01", "2025-09-01"];

/// The RBAC actions each call needs; what a scripted 403 names.
pub mod actions {
    pub const SUBSCRIPTIONS_READ: &str = "Microsoft.Resources/subscriptions/read";
    pub const ACCOUNTS_READ: &str = "Microsoft.CognitiveServices/accounts/read";
    pub const DEPLOYMENTS_READ: &str = "Microsoft.CognitiveServices/accounts/deployments/read";
    pub const LIST_KEYS: &str = "Microsoft.CognitiveServices/accounts/listKeys/action";
}

/// Object id of the principal the mock says it saw, used in 403 and 429 texts.
const PRINCIPAL_OBJECT_ID: &str = "38edb639-0000-4000-8000-0000000000aa";

/// How the mock authenticates callers.
#[derive(Clone)]
pub enum ArmAuth {
    /// Tokens the token mock issued for [`ARM_AUDIENCE`] and not yet expired.
    TokensFrom(TokenMock),
    /// Exactly this token.
    Static(String),
}

/// One request the ARM mock received.
#[derive(Clone, Debug)]
pub struct ArmRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    pub at: Instant,
}

/// Builds an [`ArmMock`].
pub struct ArmMockBuilder {
    inventory: Inventory,
    auth: ArmAuth,
    subscriptions_page_size: usize,
    accounts_page_size: usize,
    deployments_page_size: usize,
}

impl ArmMockBuilder {
    /// Deployments per page; more than this and the reply carries a `nextLink`.
    pub fn deployments_page_size(mut self, size: usize) -> Self {
        self.deployments_page_size = size.max(1);
        self
    }

    pub fn accounts_page_size(mut self, size: usize) -> Self {
        self.accounts_page_size = size.max(1);
        self
    }

    pub fn subscriptions_page_size(mut self, size: usize) -> Self {
        self.subscriptions_page_size = size.max(1);
        self
    }

    pub async fn start(self) -> std::io::Result<ArmMock> {
        let tenant = match &self.auth {
            ArmAuth::TokensFrom(tokens) => tokens.tenant().to_owned(),
            ArmAuth::Static(_) => "31c75423-0000-4000-8000-000000000000".to_owned(),
        };
        let state = Arc::new(ArmState {
            inventory: self.inventory,
            auth: self.auth,
            tenant,
            subscriptions_page_size: self.subscriptions_page_size,
            accounts_page_size: self.accounts_page_size,
            deployments_page_size: self.deployments_page_size,
            base_url: Mutex::new(String::new()),
            script: Mutex::new(Script::default()),
        });
        let server = Server::start(state.clone()).await?;
        *state.base_url.lock().unwrap_or_else(PoisonError::into_inner) = server.base_url();
        Ok(ArmMock { state, server: Arc::new(server) })
    }
}

/// A running ARM mock. Cheap to clone; clones share the server, script and records.
#[derive(Clone)]
pub struct ArmMock {
    state: Arc<ArmState>,
    server: Arc<Server>,
}

impl fmt::Debug for ArmMock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmMock").field("addr", &self.server.addr).finish_non_exhaustive()
    }
}

impl ArmMock {
    /// Nothing pages unless a page size is set.
    pub fn builder(inventory: Inventory, auth: ArmAuth) -> ArmMockBuilder {
        ArmMockBuilder {
            inventory,
            auth,
            subscriptions_page_size: usize::MAX,
            accounts_page_size: usize::MAX,
            deployments_page_size: usize::MAX,
        }
    }

    /// `http://127.0.0.1:PORT`, the value for `MODELGW_ARM_ENDPOINT`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn inventory(&self) -> &Inventory {
        &self.state.inventory
    }

    /// The next request to `path` (exact, case-insensitive, no query) answers 429 with
    /// `Retry-After: retry_after_secs`. Scripting twice makes two 429s.
    pub fn throttle_once(&self, path: &str, retry_after_secs: u64) {
        self.state.script().throttles.push((path.to_ascii_lowercase(), retry_after_secs));
    }

    /// Requests needing `action` at or under `scope` answer 403 `AuthorizationFailed`.
    pub fn forbid(&self, scope: &str, action: &str) {
        self.state.script().forbidden.push((scope.to_ascii_lowercase(), action.to_owned()));
    }

    /// Regenerates `key1` of the account with ARM id `account_id` (as Azure's
    /// `regenerateKey` does) and returns the new value; later `listKeys` calls return it.
    pub fn rotate_key(&self, account_id: &str) -> String {
        let key1 = uuid::Uuid::new_v4().simple().to_string();
        let mut script = self.state.script();
        let lower = account_id.to_ascii_lowercase();
        let key2 = match script.rotated_keys.get(&lower) {
            Some((_, key2)) => key2.clone(),
            None => self
                .state
                .inventory
                .subscriptions
                .iter()
                .flat_map(|s| s.accounts.iter().map(move |a| (a.id(&s.id), a)))
                .find(|(id, _)| id.eq_ignore_ascii_case(account_id))
                .map(|(_, a)| a.key2.clone())
                .unwrap_or_default(),
        };
        script.rotated_keys.insert(lower, (key1.clone(), key2));
        key1
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<ArmRequest> {
        self.state.script().requests.clone()
    }

    /// Requests to `path` (exact, case-insensitive, no query).
    pub fn calls(&self, path: &str) -> usize {
        self.state.script().requests.iter().filter(|r| r.path.eq_ignore_ascii_case(path)).count()
    }

    /// Requests answered with `status`.
    pub fn count_status(&self, status: u16) -> usize {
        self.state.script().requests.iter().filter(|r| r.status == status).count()
    }

    pub fn stop(&self) {
        self.server.stop();
    }
}

#[derive(Default)]
struct Script {
    throttles: Vec<(String, u64)>,
    forbidden: Vec<(String, String)>,
    requests: Vec<ArmRequest>,
    /// Keys set by [`ArmMock::rotate_key`], by lowercase account id: `(key1, key2)`.
    rotated_keys: HashMap<String, (String, String)>,
}

struct ArmState {
    inventory: Inventory,
    auth: ArmAuth,
    tenant: String,
    subscriptions_page_size: usize,
    accounts_page_size: usize,
    deployments_page_size: usize,
    base_url: Mutex<String>,
    script: Mutex<Script>,
}

/// What a request asks for, once routed.
enum Route<'a> {
    Subscriptions,
    Accounts { sub: &'a str, rg: Option<&'a str> },
    Deployments { sub: &'a str, rg: &'a str, account: &'a str },
    ListKeys { sub: &'a str, rg: &'a str, account: &'a str },
}

impl Route<'_> {
    fn action(&self) -> &'static str {
        match self {
            Route::Subscriptions => actions::SUBSCRIPTIONS_READ,
            Route::Accounts { .. } => actions::ACCOUNTS_READ,
            Route::Deployments { .. } => actions::DEPLOYMENTS_READ,
            Route::ListKeys { .. } => actions::LIST_KEYS,
        }
    }

    fn api_versions(&self) -> &'static [&'static str] {
        match self {
            Route::Subscriptions => SUBSCRIPTION_API_VERSIONS,
            _ => COGNITIVE_API_VERSIONS,
        }
    }

    /// The ARM scope the call is authorized against.
    fn scope(&self) -> String {
        let account_scope = |sub: &str, rg: &str, account: &str| {
            format!(
                "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/accounts/{account}"
            )
        };
        match self {
            Route::Subscriptions => "/".to_owned(),
            Route::Accounts { sub, rg: None } => format!("/subscriptions/{sub}"),
            Route::Accounts { sub, rg: Some(rg) } => {
                format!("/subscriptions/{sub}/resourceGroups/{rg}")
            }
            Route::Deployments { sub, rg, account } | Route::ListKeys { sub, rg, account } => {
                account_scope(sub, rg, account)
            }
        }
    }

    fn subscription(&self) -> Option<&str> {
        match self {
            Route::Subscriptions => None,
            Route::Accounts { sub, .. }
            | Route::Deployments { sub, .. }
            | Route::ListKeys { sub, .. } => Some(sub),
        }
    }
}

fn route<'a>(method: &Method, path: &'a str) -> Option<Route<'a>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is = |i: usize, s: &str| segments.get(i).is_some_and(|seg| seg.eq_ignore_ascii_case(s));
    let get = *method == Method::GET;
    match segments.len() {
        1 if get && is(0, "subscriptions") => Some(Route::Subscriptions),
        5 if get
            && is(0, "subscriptions")
            && is(2, "providers")
            && is(3, "Microsoft.CognitiveServices")
            && is(4, "accounts") =>
        {
            Some(Route::Accounts { sub: segments[1], rg: None })
        }
        7 if get
            && is(0, "subscriptions")
            && is(2, "resourceGroups")
            && is(4, "providers")
            && is(5, "Microsoft.CognitiveServices")
            && is(6, "accounts") =>
        {
            Some(Route::Accounts { sub: segments[1], rg: Some(segments[3]) })
        }
        9 if is(0, "subscriptions")
            && is(2, "resourceGroups")
            && is(4, "providers")
            && is(5, "Microsoft.CognitiveServices")
            && is(6, "accounts") =>
        {
            let (sub, rg, account) = (segments[1], segments[3], segments[7]);
            if get && is(8, "deployments") {
                Some(Route::Deployments { sub, rg, account })
            } else if *method == Method::POST && is(8, "listKeys") {
                Some(Route::ListKeys { sub, rg, account })
            } else {
                None
            }
        }
        _ => None,
    }
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    server::json(status, &json!({"error": {"code": code, "message": message}}))
}

impl ArmState {
    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn base_url(&self) -> String {
        self.base_url.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// `Some(401 answer)` when the caller is not authenticated.
    fn authenticate(&self, head: &Parts) -> Option<Response<Full<Bytes>>> {
        let Some(value) = head.headers.get(http::header::AUTHORIZATION) else {
            return Some(unauthorized(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                &self.tenant,
            ));
        };
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        let invalid = || {
            unauthorized("InvalidAuthenticationToken", "The access token is invalid.", &self.tenant)
        };
        match &self.auth {
            ArmAuth::Static(expected) if token == expected => None,
            ArmAuth::Static(_) => Some(invalid()),
            ArmAuth::TokensFrom(tokens) => match tokens.check(token) {
                TokenCheck::Valid { audience } if audience.eq_ignore_ascii_case(ARM_AUDIENCE) => {
                    None
                }
                TokenCheck::Valid { audience } => Some(unauthorized(
                    "InvalidAuthenticationToken",
                    &format!(
                        "The access token has been obtained for wrong audience or resource '{audience}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.azure.com/'."
                    ),
                    &self.tenant,
                )),
                TokenCheck::Expired => Some(unauthorized(
                    "ExpiredAuthenticationToken",
                    "The access token expiry UTC time is earlier than current UTC time.",
                    &self.tenant,
                )),
                TokenCheck::Unknown => Some(invalid()),
            },
        }
    }

    fn answer(&self, head: &Parts) -> Response<Full<Bytes>> {
        if let Some(response) = self.authenticate(head) {
            return response;
        }
        let path = head.uri.path();
        let Some(route) = route(&head.method, path) else {
            return arm_error(
                StatusCode::NOT_FOUND,
                "InvalidResourceType",
                &format!("The resource type could not be found for the path '{path}'."),
            );
        };
        let query = server::query_pairs(head);
        match server::query_param(&query, "api-version") {
            None => {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                );
            }
            Some(v) if !route.api_versions().contains(&v.as_str()) => {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidApiVersionParameter",
                    &format!(
                        "The api-version '{v}' is invalid. The supported versions are '{}'.",
                        route.api_versions().join(",")
                    ),
                );
            }
            Some(_) => {}
        }
        if let Some(retry_after) = self.take_throttle(path) {
            let message = format!(
                "Number of 'read' requests for subscription '{}' actor '{PRINCIPAL_OBJECT_ID}' exceeded. Please try after '{retry_after}' seconds after the last request.",
                route.subscription().unwrap_or("(tenant)")
            );
            let mut response =
                arm_error(StatusCode::TOO_MANY_REQUESTS, "SubscriptionRequestsThrottled", &message);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            return response;
        }
        let scope = route.scope();
        if self.is_forbidden(&scope, route.action()) {
            let message = format!(
                "The client 'app@contoso.com' with object id '{PRINCIPAL_OBJECT_ID}' does not have authorization to perform action '{}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
                route.action()
            );
            return arm_error(StatusCode::FORBIDDEN, "AuthorizationFailed", &message);
        }
        let skip = server::query_param(&query, "$skiptoken")
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0);
        let api_version = server::query_param(&query, "api-version").unwrap_or_default();
        match route {
            Route::Subscriptions => {
                let items: Vec<Value> =
                    self.inventory.subscriptions.iter().map(|s| s.to_json(&self.tenant)).collect();
                self.page(path, &api_version, items, skip, self.subscriptions_page_size)
            }
            Route::Accounts { sub, rg } => {
                let Some(subscription) = self.inventory.find_subscription(sub) else {
                    return subscription_not_found(sub);
                };
                let items: Vec<Value> = subscription
                    .accounts
                    .iter()
                    .filter(|a| rg.is_none_or(|rg| a.resource_group.eq_ignore_ascii_case(rg)))
                    .map(|a| a.to_json(&subscription.id))
                    .collect();
                self.page(path, &api_version, items, skip, self.accounts_page_size)
            }
            Route::Deployments { sub, rg, account } => match self.find_account(sub, rg, account) {
                Err(response) => *response,
                Ok((subscription, account)) => {
                    let id = account.id(&subscription.id);
                    let items: Vec<Value> =
                        account.deployments.iter().map(|d| d.to_json(&id)).collect();
                    self.page(path, &api_version, items, skip, self.deployments_page_size)
                }
            },
            Route::ListKeys { sub, rg, account } => match self.find_account(sub, rg, account) {
                Err(response) => *response,
                Ok((subscription, account)) => {
                    let rotated = self
                        .script()
                        .rotated_keys
                        .get(&account.id(&subscription.id).to_ascii_lowercase())
                        .cloned();
                    let (key1, key2) =
                        rotated.unwrap_or_else(|| (account.key1.clone(), account.key2.clone()));
                    server::json(StatusCode::OK, &json!({"key1": key1, "key2": key2}))
                }
            },
        }
    }

    fn find_account(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<(&Subscription, &Account), Box<Response<Full<Bytes>>>> {
        let subscription = self
            .inventory
            .find_subscription(sub)
            .ok_or_else(|| Box::new(subscription_not_found(sub)))?;
        subscription
            .accounts
            .iter()
            .find(|a| a.resource_group.eq_ignore_ascii_case(rg) && a.name.eq_ignore_ascii_case(name))
            .map(|a| (subscription, a))
            .ok_or_else(|| {
                Box::new(arm_error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    &format!("The Resource 'Microsoft.CognitiveServices/accounts/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"),
                ))
            })
    }

    /// One page of `items`, with an absolute `nextLink` when more remain.
    fn page(
        &self,
        path: &str,
        api_version: &str,
        items: Vec<Value>,
        skip: usize,
        size: usize,
    ) -> Response<Full<Bytes>> {
        let end = skip.saturating_add(size).min(items.len());
        let value: Vec<Value> = items.get(skip..end).map(<[Value]>::to_vec).unwrap_or_default();
        let mut body = json!({"value": value});
        if end < items.len() {
            body["nextLink"] = json!(format!(
                "{}{path}?api-version={api_version}&$skiptoken={end}",
                self.base_url()
            ));
        }
        server::json(StatusCode::OK, &body)
    }

    fn take_throttle(&self, path: &str) -> Option<u64> {
        let mut script = self.script();
        let index = script.throttles.iter().position(|(p, _)| p.eq_ignore_ascii_case(path))?;
        Some(script.throttles.remove(index).1)
    }

    fn is_forbidden(&self, scope: &str, action: &str) -> bool {
        let scope = scope.to_ascii_lowercase();
        self.script().forbidden.iter().any(|(rule_scope, rule_action)| {
            rule_action.eq_ignore_ascii_case(action)
                && (scope == *rule_scope
                    || rule_scope == "/"
                    || scope.starts_with(&format!("{}/", rule_scope.trim_end_matches('/'))))
        })
    }
}

fn subscription_not_found(sub: &str) -> Response<Full<Bytes>> {
    arm_error(
        StatusCode::NOT_FOUND,
        "SubscriptionNotFound",
        &format!("The subscription '{sub}' could not be found."),
    )
}

fn unauthorized(code: &str, message: &str, tenant: &str) -> Response<Full<Bytes>> {
    let mut response = arm_error(StatusCode::UNAUTHORIZED, code, message);
    if let Ok(value) = HeaderValue::from_str(&format!(
        "Bearer authorization_uri=\"https://login.windows.net/{tenant}\", error=\"invalid_token\", error_description=\"The access token is invalid.\""
    )) {
        response.headers_mut().insert(http::header::WWW_AUTHENTICATE, value);
    }
    response
}

impl Handler for ArmState {
    fn handle(&self, head: &Parts, _body: &[u8]) -> Response<Full<Bytes>> {
        let mut response = self.answer(head);
        let request_id = uuid::Uuid::new_v4().to_string();
        let headers = response.headers_mut();
        for name in ["x-ms-request-id", "x-ms-correlation-request-id"] {
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                headers.insert(name, value);
            }
        }
        if let Ok(value) = HeaderValue::from_str(&format!(
            "EASTUS:{}:{request_id}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        )) {
            headers.insert("x-ms-routing-request-id", value);
        }
        headers.insert(
            "x-ms-ratelimit-remaining-subscription-reads",
            HeaderValue::from_static("11999"),
        );
        let record = ArmRequest {
            method: head.method.clone(),
            path: head.uri.path().to_owned(),
            query: head.uri.query().map(str::to_owned),
            status: response.status().as_u16(),
            at: Instant::now(),
        };
        self.script().requests.push(record);
        response
    }
}

/// Requests per path, for assertions: `{path: count}`.
pub fn count_by_path(requests: &[ArmRequest]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in requests {
        *counts.entry(request.path.clone()).or_insert(0) += 1;
    }
    counts
}
