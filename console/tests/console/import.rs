//! Import from Azure through the console, against the ARM and token mocks: the discovery's
//! progress fragment, the deployments table, importing the checked rows, and a second discovery
//! that marks them as already imported.

use std::time::{Duration, Instant};

use azure_core::http::{ClientOptions, RetryOptions};
use http::{Method, StatusCode};
use modelgw_admin_api::AzureImportConfig;
use modelgw_control_plane::azure::{
    ArmClientOptions, CredentialChoice, CredentialOptions, CredentialSettings, DiscoveryOptions,
};
use modelgw_mock_arm::{
    Account, ArmAuth, ArmMock, Deployment, Inventory, RedirectTransport, Subscription, TokenMock,
    actions,
};
use modelgw_model::Secret;

use crate::harness::{ADMIN_TOKEN, Console, Page};

const TENANT: &str = "72f988bf-0000-4000-8000-000000000012";
const CLIENT_ID: &str = "app-console-import";
const CLIENT_SECRET: &str = "client-secret-value-console-0012";

struct Azure {
    console: Console,
    arm: ArmMock,
    _tokens: TokenMock,
}

/// Two subscriptions, three deployments the credential can read, one account whose deployments
/// it may not list.
fn inventory() -> Inventory {
    Inventory::new()
        .subscription(
            Subscription::new("sub-a", "Team A").account(
                Account::new("rg-a", "aoai-eus", "OpenAI", "eastus")
                    .deployment(
                        Deployment::new("gpt-4o", "gpt-4o", "2024-11-20").sku("Standard", 50),
                    )
                    .deployment(
                        Deployment::new("mini", "gpt-4o-mini", "2024-07-18")
                            .sku("GlobalStandard", 250),
                    ),
            ),
        )
        .subscription(
            Subscription::new("sub-b", "Team B")
                .account(
                    Account::new("rg-b", "aoai-ptu", "OpenAI", "westus").deployment(
                        Deployment::new("gpt-4o-ptu", "gpt-4o", "2024-11-20")
                            .sku("GlobalProvisionedManaged", 100),
                    ),
                )
                .account(
                    Account::new("rg-b", "aoai-locked", "OpenAI", "northeurope")
                        .deployment(Deployment::new("gpt-4o", "gpt-4o", "2024-11-20")),
                ),
        )
}

async fn start() -> Azure {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tokens = TokenMock::builder(TENANT)
        .client_secret(CLIENT_ID, CLIENT_SECRET)
        .start()
        .await
        .expect("token mock starts");
    let arm = ArmMock::builder(inventory(), ArmAuth::TokensFrom(tokens.clone()))
        .start()
        .await
        .expect("ARM mock starts");
    let locked = arm
        .inventory()
        .subscriptions
        .iter()
        .flat_map(|s| s.accounts.iter().map(move |a| a.id(&s.id)))
        .find(|id| id.ends_with("/aoai-locked"))
        .unwrap();
    arm.forbid(&locked, actions::DEPLOYMENTS_READ);
    let config = AzureImportConfig {
        credential: CredentialSettings {
            choice: CredentialChoice::ClientSecret,
            tenant_id: Some(TENANT.into()),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(Secret::new(CLIENT_SECRET)),
            ..Default::default()
        },
        credential_options: CredentialOptions {
            client_options: ClientOptions {
                transport: Some(RedirectTransport::transport(&tokens.base_url()).unwrap()),
                retry: RetryOptions::none(),
                ..Default::default()
            },
            allow_imds: false,
            ..Default::default()
        },
        arm_endpoint: arm.base_url().parse().unwrap(),
        arm_options: ArmClientOptions::default(),
        discovery: DiscoveryOptions::default(),
    };
    Azure { console: Console::start_with_azure(config).await, arm, _tokens: tokens }
}

impl Azure {
    /// Starts a discovery from the import page; its console path (`/import/{id}`).
    async fn start_discovery(&self, cookie: &str) -> String {
        let page = self.console.send(Method::GET, "/import", Some(cookie), None).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains(r#"id="start-discovery""#), "{}", page.body);
        let started = self
            .console
            .send(Method::POST, "/import", Some(cookie), Some(&format!("_csrf={}", page.csrf())))
            .await;
        assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
        let location = started.header("location").to_owned();
        assert!(location.starts_with("/import/"), "{location}");
        location
    }

    /// Polls the progress fragment, as htmx does, until it stops asking to be polled.
    async fn wait_until_finished(&self, path: &str, cookie: &str) -> Page {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let fragment = self
                .console
                .send(Method::GET, &format!("{path}/progress"), Some(cookie), None)
                .await;
            assert_eq!(fragment.status, StatusCode::OK);
            assert!(fragment.body.contains(r#"id="discovery-progress""#), "{}", fragment.body);
            assert!(!fragment.body.contains("<html"), "a fragment, not a page");
            if !fragment.body.contains("hx-trigger") {
                return fragment;
            }
            assert!(Instant::now() < deadline, "discovery still running: {}", fragment.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `(deployment id, row html)` of every row of the deployments table.
fn rows(body: &str) -> Vec<(String, String)> {
    let re = regex::Regex::new(r#"(?s)<tr data-deployment="([^"]+)"(.*?)</tr>"#).unwrap();
    re.captures_iter(body).map(|c| (c[1].to_owned(), c[2].to_owned())).collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

#[tokio::test]
async fn discover_pick_import_and_rediscover_marks_the_imported_rows() {
    let azure = start().await;
    // The subscriptions list answers 429 once (retry after 1 s): the discovery is seen running.
    azure.arm.throttle_once("/subscriptions", 1);
    let c = &azure.console;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let path = azure.start_discovery(&cookie).await;

    let running = c.send(Method::GET, &path, Some(&cookie), None).await;
    assert_eq!(running.status, StatusCode::OK);
    assert!(running.body.contains(r#"id="discovery-progress""#));
    assert!(
        running.body.contains(&format!(r#"hx-get="{path}/progress" hx-trigger="every 1s""#)),
        "the progress block polls while running: {}",
        running.body
    );
    assert!(!running.body.contains(r#"id="deployments-table""#));

    let done = azure.wait_until_finished(&path, &cookie).await;
    assert!(done.body.contains(r#"id="deployments-table""#), "the table follows the progress");
    assert!(done.body.contains(actions::DEPLOYMENTS_READ), "the 403 names the permission");
    assert!(done.body.contains("aoai-locked"));

    // Reloading shows the same discovery, finished.
    let page = c.send(Method::GET, &path, Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("hx-trigger"), "no polling once finished");
    let listed = rows(&page.body);
    assert_eq!(listed.len(), 3, "{}", page.body);
    for (id, row) in &listed {
        assert!(
            row.contains(&format!(r#"name="ids" value="{id}" checked"#)),
            "new rows are checked: {row}"
        );
        assert!(!row.contains("Already imported"));
    }
    for control in [
        r#"id="select-all""#,
        r#"id="filter-model""#,
        r#"id="filter-version""#,
        r#"id="auth""#,
        r#"id="import""#,
    ] {
        assert!(page.body.contains(control), "{control} missing");
    }

    // Import two of the three, with Entra ID auth.
    let picked: Vec<&str> = listed
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !id.ends_with("/deployments/mini"))
        .collect();
    let mut fields = vec![("_csrf", page.csrf()), ("auth", "entra".to_owned())];
    fields.extend(picked.iter().map(|id| ("ids", (*id).to_owned())));
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let imported = c.send(Method::POST, &path, Some(&cookie), Some(&form(&pairs))).await;
    assert_eq!(imported.status, StatusCode::OK, "{}", imported.body);
    assert!(imported.body.contains(r#"id="import-result""#), "{}", imported.body);
    assert!(imported.body.contains("2 created"), "{}", imported.body);
    let (_, endpoints) = c.api(Method::GET, "/api/v1/inference-endpoints", None).await;
    let endpoints = endpoints.as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    for e in endpoints {
        assert_eq!(e["auth"], "entra");
        let id = e["id"].as_str().unwrap();
        assert!(imported.body.contains(&format!(r#"href="/endpoints/{id}""#)), "a link to {id}");
    }

    // A second discovery marks them as imported and leaves them unchecked.
    let again = azure.start_discovery(&cookie).await;
    assert_ne!(again, path);
    azure.wait_until_finished(&again, &cookie).await;
    let page = c.send(Method::GET, &again, Some(&cookie), None).await;
    for (id, row) in rows(&page.body) {
        if picked.contains(&id.as_str()) {
            assert!(row.contains(r#"class="imported""#), "{row}");
            assert!(row.contains("Already imported"), "{row}");
            assert!(!row.contains("checked"), "an imported row is not pre-checked: {row}");
        } else {
            assert!(row.contains("checked") && !row.contains("Already imported"), "{row}");
        }
    }

    // Importing nothing is refused by the API, shown next to the table; nothing changes.
    let refused = c
        .send(
            Method::POST,
            &again,
            Some(&cookie),
            Some(&form(&[("_csrf", &page.csrf()), ("auth", "api_key")])),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    assert!(refused.body.contains(r#"id="error-deployment_ids""#), "{}", refused.body);
    let (_, after) = c.api(Method::GET, "/api/v1/inference-endpoints", None).await;
    assert_eq!(after.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_discovery_the_api_no_longer_keeps_sends_back_to_the_start() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let gone = c
        .send(Method::GET, &format!("/import/{}", uuid::Uuid::new_v4()), Some(&cookie), None)
        .await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER);
    assert_eq!(gone.header("location"), "/import?gone=1");
    let page = c.send(Method::GET, "/import?gone=1", Some(&cookie), None).await;
    assert!(page.body.contains("no longer kept"));
    // Without an Azure credential the discovery fails and says why; the polling stops.
    let csrf = page.csrf();
    let started =
        c.send(Method::POST, "/import", Some(&cookie), Some(&format!("_csrf={csrf}"))).await;
    let path = started.header("location").to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let fragment = loop {
        let f = c.send(Method::GET, &format!("{path}/progress"), Some(&cookie), None).await;
        if !f.body.contains("hx-trigger") {
            break f;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(fragment.body.contains("Discovery failed"), "{}", fragment.body);
    // The control-plane replica that ran it is named (discoveries are stored, any replica answers).
    assert!(fragment.body.contains(r#"class="mono replica-host""#), "{}", fragment.body);
    assert!(fragment.body.contains("client_secret"), "the credentials tried are named");
}

#[tokio::test]
async fn a_viewer_sees_a_discovery_but_cannot_start_or_import() {
    let c = Console::start().await;
    let viewer = c.sign_in(&c.api_token("viewer").await).await;
    let page = c.send(Method::GET, "/import", Some(&viewer), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(r#"id="start-discovery""#));
    let forged = c
        .send(Method::POST, "/import", Some(&viewer), Some(&format!("_csrf={}", page.csrf())))
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
}
