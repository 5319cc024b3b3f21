//! The mocks answer with the shapes Azure documents for Resource Manager and Entra ID tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use modelgw_mock_arm::{
    Account, ArmAuth, ArmMock, Deployment, Grant, Inventory, Subscription, TokenCheck, TokenMock,
    actions,
};
use serde_json::Value;

const TENANT: &str = "tenant-wire";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn tokens() -> TokenMock {
    TokenMock::builder(TENANT)
        .client_secret("app", "secret-1")
        .federated_client("wi", "assertion-1")
        .managed_identity("hdr")
        .start()
        .await
        .expect("token mock")
}

async fn client_credentials(
    http: &reqwest::Client,
    mock: &TokenMock,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let response = http
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", mock.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish())
        .send()
        .await
        .expect("token call");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn entra_issues_tokens_with_integer_lifetimes_and_rejects_wrong_secrets() {
    let http = client();
    let mock = tokens().await;
    let scope = "https://management.azure.com/.default";
    let (status, body) = client_credentials(
        &http,
        &mock,
        &[
            ("client_id", "app"),
            ("client_secret", "secret-1"),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].is_u64() && body["ext_expires_in"].is_u64());
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        mock.check(&token),
        TokenCheck::Valid { audience: "https://management.azure.com".into() }
    );

    let (status, body) = client_credentials(
        &http,
        &mock,
        &[
            ("client_id", "app"),
            ("client_secret", "nope"),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].as_str().is_some_and(|d| d.starts_with("AADSTS7000215:")));
    assert_eq!(body["error_codes"][0], 7_000_215);

    let (status, body) = client_credentials(
        &http,
        &mock,
        &[
            ("client_id", "wi"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", "assertion-1"),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = client_credentials(
        &http,
        &mock,
        &[
            ("client_id", "app"),
            ("client_secret", "secret-1"),
            ("grant_type", "client_credentials"),
            ("scope", "https://management.azure.com"),
        ],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));
    assert_eq!(mock.entra_requests(), 4);
    let grants: Vec<Grant> = mock.issued().iter().map(|t| t.grant).collect();
    assert_eq!(grants, vec![Grant::ClientSecret, Grant::ClientAssertion]);
}

#[tokio::test]
async fn app_service_identity_checks_the_header_and_returns_expires_on_as_a_string() {
    let http = client();
    let mock = tokens().await;
    let url = format!(
        "{}?api-version=2019-08-01&resource=https://management.azure.com",
        mock.msi_endpoint()
    );
    let response = http.get(&url).header("x-identity-header", "wrong").send().await.expect("call");
    assert_eq!(response.status().as_u16(), 401);
    let response = http.get(&url).header("x-identity-header", "hdr").send().await.expect("call");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    let expires_on: u64 =
        body["expires_on"].as_str().expect("a string").parse().expect("epoch seconds");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    assert!(expires_on > now + 3000);
    assert_eq!(body["resource"], "https://management.azure.com");
    assert_eq!(mock.msi_requests(), 2);
}

#[tokio::test]
async fn short_token_lifetimes_expire_and_arm_says_so() {
    let http = client();
    let mock = tokens().await;
    mock.set_token_lifetime(Duration::ZERO);
    let (_, body) = client_credentials(
        &http,
        &mock,
        &[
            ("client_id", "app"),
            ("client_secret", "secret-1"),
            ("grant_type", "client_credentials"),
            ("scope", "https://management.azure.com/.default"),
        ],
    )
    .await;
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(mock.check(&token), TokenCheck::Expired);
    let arm = ArmMock::builder(Inventory::new(), ArmAuth::TokensFrom(mock.clone()))
        .start()
        .await
        .expect("arm");
    let response = http
        .get(format!("{}/subscriptions?api-version=2022-12-01", arm.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("call");
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "ExpiredAuthenticationToken");
}

#[tokio::test]
async fn arm_checks_auth_and_api_version_pages_throttles_and_forbids() {
    let http = client();
    let inventory = Inventory::new().subscription(
        Subscription::new("s1", "One")
            .account(
                Account::new("rg", "acct", "OpenAI", "eastus")
                    .deployment(Deployment::new("a", "gpt-4o", "2024-11-20"))
                    .deployment(Deployment::new("b", "gpt-4o", "2024-11-20"))
                    .deployment(Deployment::new("c", "gpt-4o", "2024-11-20").version_upgrade(None)),
            )
            .account(Account::new("rg", "face", "Face", "eastus")),
    );
    let arm = ArmMock::builder(inventory, ArmAuth::Static("tok".into()))
        .deployments_page_size(2)
        .start()
        .await
        .expect("arm");
    let base = arm.base_url();
    let get = |url: String| http.get(url).bearer_auth("tok").send();

    let response = http
        .get(format!("{base}/subscriptions?api-version=2022-12-01"))
        .send()
        .await
        .expect("call");
    assert_eq!(response.status().as_u16(), 401);
    let response = http
        .get(format!("{base}/subscriptions?api-version=2022-12-01"))
        .bearer_auth("other")
        .send()
        .await
        .expect("call");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    let response = get(format!("{base}/subscriptions")).await.expect("call");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "MissingApiVersionParameter");

    let body: Value = get(format!("{base}/subscriptions?api-version=2022-12-01"))
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert_eq!(body["value"][0]["subscriptionId"], "s1");
    assert!(body.get("nextLink").is_none());

    let accounts_url = format!(
        "{base}/subscriptions/s1/providers/Microsoft.CognitiveServices/accounts?api-version=2025-06-01"
    );
    let body: Value = get(accounts_url).await.expect("call").json().await.expect("json");
    let kinds: Vec<&str> =
        body["value"].as_array().expect("list").iter().filter_map(|a| a["kind"].as_str()).collect();
    assert_eq!(kinds, vec!["OpenAI", "Face"]);
    assert_eq!(
        body["value"][0]["properties"]["endpoints"]["OpenAI Language Model Instance API"],
        "https://acct.openai.azure.com/"
    );

    let account_id =
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/acct";
    let deployments_path = format!("{account_id}/deployments");
    let page1: Value = get(format!("{base}{deployments_path}?api-version=2025-06-01"))
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert_eq!(page1["value"].as_array().map(Vec::len), Some(2));
    let next = page1["nextLink"].as_str().expect("a nextLink").to_owned();
    assert!(
        next.starts_with(&base)
            && next.contains("api-version=2025-06-01")
            && next.contains("$skiptoken=")
    );
    let page2: Value = get(next).await.expect("call").json().await.expect("json");
    assert_eq!(page2["value"].as_array().map(Vec::len), Some(1));
    assert!(page2["value"][0]["properties"].get("versionUpgradeOption").is_none());
    assert!(page2.get("nextLink").is_none());
    assert_eq!(page1["value"][0]["sku"]["name"], "Standard");
    assert_eq!(page1["value"][0]["properties"]["rateLimits"][1]["key"], "token");

    arm.throttle_once(&deployments_path, 2);
    let response =
        get(format!("{base}{deployments_path}?api-version=2025-06-01")).await.expect("call");
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    let response =
        get(format!("{base}{deployments_path}?api-version=2025-06-01")).await.expect("call");
    assert_eq!(response.status().as_u16(), 200, "throttled once only");

    arm.forbid(account_id, actions::LIST_KEYS);
    let response = http
        .post(format!("{base}{account_id}/listKeys?api-version=2025-06-01"))
        .bearer_auth("tok")
        .send()
        .await
        .expect("call");
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "AuthorizationFailed");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains(actions::LIST_KEYS) && message.contains(account_id), "{message}");
    // Reads on the same account are still allowed.
    let response =
        get(format!("{base}{deployments_path}?api-version=2025-06-01")).await.expect("call");
    assert_eq!(response.status().as_u16(), 200);
    let keys = http
        .post(format!("{base}/subscriptions/s1/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/face/listKeys?api-version=2025-06-01"))
        .bearer_auth("tok")
        .send()
        .await
        .expect("call");
    let keys: Value = keys.json().await.expect("json");
    assert_eq!(keys["key1"].as_str().map(str::len), Some(32));

    assert_eq!(arm.calls(&deployments_path), 5);
    assert_eq!(arm.count_status(429), 1);
}
