//! Azure discovery jobs, imports and gateway proposals, over the token and ARM mocks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use azure_core::http::{ClientOptions, RetryOptions};
use http::{Method, StatusCode};
use modelgw_admin_api::AzureImportConfig;
use modelgw_control_plane::azure::{
    ArmClientOptions, CredentialChoice, CredentialOptions, CredentialSettings, DiscoveryOptions,
};
use modelgw_data_plane::routing_table::RoutingTable;
use modelgw_data_plane::{DataPlane, DataPlaneConfig};
use modelgw_mock_arm::{
    Account, ArmAuth, ArmMock, Deployment, Inventory, RedirectTransport, Subscription, TokenMock,
    actions,
};
use modelgw_mock_openai::{MockAzure, MockConfig};
use modelgw_model::{Credential, Secret};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::harness::{Harness, WAIT, id_of};

pub(crate) const TENANT: &str = "72f988bf-0000-4000-8000-000000000002";
pub(crate) const CLIENT_ID: &str = "app-import";
pub(crate) const CLIENT_SECRET: &str = "client-secret-value-import-0002";

struct Azure {
    harness: Harness,
    arm: ArmMock,
    _tokens: TokenMock,
}

/// Two subscriptions; a PTU and a standard gpt-4o; one account whose deployments are forbidden.
pub(crate) fn inventory() -> Inventory {
    Inventory::new()
        .subscription(
            Subscription::new("sub-a", "Team A")
                .account(
                    Account::new("rg-a", "aoai-eus", "OpenAI", "eastus")
                        .deployment(
                            Deployment::new("gpt-4o", "gpt-4o", "2024-11-20")
                                .sku("Standard", 50)
                                .version_upgrade(Some("NoAutoUpgrade")),
                        )
                        .deployment(
                            Deployment::new("mini", "gpt-4o-mini", "2024-07-18")
                                .sku("GlobalStandard", 250)
                                .version_upgrade(Some("OnceNewDefaultVersionAvailable")),
                        ),
                )
                .account(Account::new("rg-a", "face-1", "Face", "eastus")),
        )
        .subscription(
            Subscription::new("sub-b", "Team B")
                .account(
                    Account::new("rg-b", "aoai-ptu", "OpenAI", "westus").deployment(
                        Deployment::new("gpt-4o-ptu", "gpt-4o", "2024-11-20")
                            .sku("GlobalProvisionedManaged", 100)
                            .version_upgrade(Some("NoAutoUpgrade")),
                    ),
                )
                .account(
                    Account::new("rg-b", "aoai-locked", "OpenAI", "northeurope")
                        .deployment(Deployment::new("gpt-4o", "gpt-4o", "2024-11-20")),
                ),
        )
}

pub(crate) fn account<'a>(inventory: &'a Inventory, name: &str) -> (String, &'a Account) {
    inventory
        .subscriptions
        .iter()
        .flat_map(|s| s.accounts.iter().map(move |a| (a.id(&s.id), a)))
        .find(|(_, a)| a.name == name)
        .expect("account in the inventory")
}

async fn start() -> Azure {
    let azure = start_with(inventory()).await;
    let (locked, _) = account(azure.arm.inventory(), "aoai-locked");
    azure.arm.forbid(&locked, actions::DEPLOYMENTS_READ);
    azure
}

async fn start_with(inventory: Inventory) -> Azure {
    let (tokens, arm, config) = mocks(inventory).await;
    Azure { harness: Harness::start_with_azure(config).await, arm, _tokens: tokens }
}

/// The token and ARM mocks over `inventory`, and an import configuration pointing at them.
pub(crate) async fn mocks(inventory: Inventory) -> (TokenMock, ArmMock, AzureImportConfig) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tokens = TokenMock::builder(TENANT)
        .client_secret(CLIENT_ID, CLIENT_SECRET)
        .start()
        .await
        .expect("token mock starts");
    let arm = ArmMock::builder(inventory, ArmAuth::TokensFrom(tokens.clone()))
        .start()
        .await
        .expect("ARM mock starts");

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
                transport: Some(
                    RedirectTransport::transport(&tokens.base_url()).expect("mock URL parses"),
                ),
                retry: RetryOptions::none(),
                ..Default::default()
            },
            allow_imds: false,
            ..Default::default()
        },
        arm_endpoint: arm.base_url().parse().expect("mock URL parses"),
        arm_options: ArmClientOptions::default(),
        discovery: DiscoveryOptions::default(),
    };
    (tokens, arm, config)
}

impl Azure {
    /// Every account key the mock can hand out now; none may appear in a response.
    fn keys(&self) -> Vec<String> {
        self.arm
            .inventory()
            .subscriptions
            .iter()
            .flat_map(|s| s.accounts.iter())
            .flat_map(|a| [a.key1.clone(), a.key2.clone()])
            .collect()
    }

    #[track_caller]
    fn assert_no_key(&self, text: &str, extra: &[&str]) {
        for key in self.keys().iter().map(String::as_str).chain(extra.iter().copied()) {
            assert!(!text.contains(key), "a key leaked into a response: {text}");
        }
    }

    /// Starts a discovery and polls it until it is no longer running.
    async fn discover(&self) -> Value {
        let started = self
            .harness
            .call(Method::POST, "/api/v1/azure/discoveries", None)
            .await
            .expect(StatusCode::ACCEPTED);
        let location =
            started.headers.get("location").and_then(|v| v.to_str().ok()).expect("location");
        let location = location.to_owned();
        assert_eq!(started.json()["status"], "running");
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = self.harness.get(&location).await.expect(StatusCode::OK);
            self.assert_no_key(&reply.text, &[]);
            let body = reply.json();
            if body["status"] != "running" {
                return body;
            }
            assert!(Instant::now() < deadline, "discovery still running after {WAIT:?}: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn import(&self, ids: &[String]) -> Value {
        let reply = self
            .harness
            .call(Method::POST, "/api/v1/azure/imports", Some(json!({"deployment_ids": ids})))
            .await
            .expect(StatusCode::OK);
        self.assert_no_key(&reply.text, &[]);
        reply.json()
    }
}

fn deployment_ids(discovery: &Value) -> Vec<String> {
    discovery["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_discovery_job_succeeds_with_the_deployments_and_the_403() {
    let azure = start().await;
    let body = azure.discover().await;
    assert_eq!(body["status"], "succeeded", "{body}");
    let progress = &body["progress"];
    assert_eq!(progress["subscriptions_scanned"], 2);
    assert_eq!(progress["subscriptions_total"], 2);
    assert_eq!(progress["accounts_scanned"], 3, "Face is not scanned: {body}");
    assert_eq!(progress["accounts_total"], 3);
    let deployments = body["deployments"].as_array().expect("deployments");
    let names: Vec<(&str, &str)> = deployments
        .iter()
        .map(|d| (d["account"].as_str().unwrap_or(""), d["deployment"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for want in [("aoai-eus", "gpt-4o"), ("aoai-eus", "mini"), ("aoai-ptu", "gpt-4o-ptu")] {
        assert!(names.contains(&want), "{want:?} missing from {names:?}");
    }
    assert!(deployments.iter().all(|d| d.get("endpoint_id").is_none()), "nothing imported yet");
    let ptu = deployments.iter().find(|d| d["deployment"] == "gpt-4o-ptu").expect("ptu");
    assert_eq!(ptu["sku"], "GlobalProvisionedManaged");
    assert_eq!(ptu["capacity"], 100);
    assert_eq!(ptu["location"], "westus");
    assert_eq!(ptu["subscription_id"], "sub-b");
    assert_eq!(ptu["resource_group"], "rg-b");
    assert_eq!(ptu["endpoint"], "https://aoai-ptu.openai.azure.com/");
    assert!(ptu["id"].as_str().expect("id").ends_with("/accounts/aoai-ptu/deployments/gpt-4o-ptu"));
    assert!(ptu.get("api_key").is_none());
    let mini = deployments.iter().find(|d| d["deployment"] == "mini").expect("mini");
    assert!(!mini["warnings"].as_array().expect("warnings").is_empty(), "auto-upgrade warns");

    let errors = body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (locked, _) = account(azure.arm.inventory(), "aoai-locked");
    assert_eq!(errors[0]["scope"], locked.as_str());
    assert_eq!(errors[0]["permission"], actions::DEPLOYMENTS_READ);
}

#[tokio::test]
async fn a_discovery_without_a_credential_fails_naming_every_credential_tried() {
    let harness = Harness::start().await;
    let started = harness
        .call(Method::POST, "/api/v1/azure/discoveries", None)
        .await
        .expect(StatusCode::ACCEPTED);
    let id = id_of(&started.json());
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let body = harness.get(&format!("/api/v1/azure/discoveries/{id}")).await.json();
        if body["status"] != "running" {
            break body;
        }
        assert!(Instant::now() < deadline, "still running: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["status"], "failed", "{body}");
    let message = body["errors"][0]["message"].as_str().expect("message");
    for kind in ["workload_identity", "client_secret", "managed_identity"] {
        assert!(message.contains(kind), "{kind} not named in {message}");
    }
    harness
        .get(&format!("/api/v1/azure/discoveries/{}", uuid::Uuid::new_v4()))
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn importing_twice_creates_nothing_and_a_rotated_key_updates_the_endpoint() {
    let azure = start().await;
    let ids = deployment_ids(&azure.discover().await);
    let before = azure.harness.version().await;
    let first = azure.import(&ids).await;
    assert_eq!(first["created"].as_array().expect("created").len(), 3, "{first}");
    assert!(first["updated"].as_array().expect("updated").is_empty());
    // One transaction, one version bump for all three.
    let after_first = azure.harness.version().await;
    assert_eq!(after_first.0, before.0 + 1);
    // A discovery now names the endpoint each deployment was imported as.
    let again = azure.discover().await;
    let created: Vec<&Value> = first["created"].as_array().expect("created").iter().collect();
    for d in again["deployments"].as_array().expect("deployments") {
        assert!(created.contains(&&d["endpoint_id"]), "not marked imported: {d}");
    }

    let endpoints = azure.harness.get("/api/v1/inference-endpoints").await.json();
    let names: Vec<&str> =
        endpoints.as_array().expect("list").iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(names, ["aoai-eus-gpt-4o", "aoai-eus-mini", "aoai-ptu-gpt-4o-ptu"]);
    let ptu = endpoints
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["name"] == "aoai-ptu-gpt-4o-ptu")
        .expect("ptu endpoint");
    assert_eq!(ptu["platform"], "azure_openai");
    assert_eq!(ptu["region"], "westus");
    assert_eq!(ptu["endpoint"], "https://aoai-ptu.openai.azure.com");
    azure.assert_no_key(&endpoints.to_string(), &[]);

    let second = azure.import(&ids).await;
    assert!(second["created"].as_array().expect("created").is_empty(), "{second}");
    assert!(second["updated"].as_array().expect("updated").is_empty(), "{second}");
    assert_eq!(second["unchanged"].as_array().expect("unchanged").len(), 3);
    assert_eq!(azure.harness.version().await, after_first, "an idle import bumps nothing");

    // Rotated in Azure after the discovery: the import reads the key again.
    let (ptu_account, _) = account(azure.arm.inventory(), "aoai-ptu");
    let rotated = azure.arm.rotate_key(&ptu_account);
    let third = azure.import(&ids).await;
    azure.assert_no_key(&third.to_string(), &[&rotated]);
    let updated: Vec<&str> =
        third["updated"].as_array().expect("updated").iter().filter_map(Value::as_str).collect();
    assert_eq!(updated, [ptu["id"].as_str().expect("id")], "{third}");
    assert_eq!(third["unchanged"].as_array().expect("unchanged").len(), 2);
    assert!(third["created"].as_array().expect("created").is_empty());
    assert_eq!(azure.harness.version().await.0, after_first.0 + 1);
    let listed = azure.harness.get("/api/v1/inference-endpoints").await;
    assert_eq!(listed.json().as_array().expect("list").len(), 3, "no duplicates");
    azure.assert_no_key(&listed.text, &[&rotated]);

    let snapshot = azure.harness.store.load_snapshot().await.expect("snapshot");
    let endpoint = snapshot
        .endpoints
        .iter()
        .find(|e| e.name == "aoai-ptu-gpt-4o-ptu")
        .expect("ptu in the snapshot");
    let Credential::ApiKey(key) = &endpoint.credential else {
        panic!("an api-key credential");
    };
    assert_eq!(key.expose(), rotated);

    // The audit log: one entry per endpoint an import created or updated (none for the idle
    // one), naming the key only by its hint.
    let log = azure.harness.audit_log().await;
    let entries: Vec<(&str, &str, bool)> = log
        .iter()
        .map(|e| {
            let created = e.get("before").is_none();
            (e["action"].as_str().unwrap_or(""), e["entity_name"].as_str().unwrap_or(""), created)
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("import", "aoai-eus-gpt-4o", true),
            ("import", "aoai-eus-mini", true),
            ("import", "aoai-ptu-gpt-4o-ptu", true),
            ("import", "aoai-ptu-gpt-4o-ptu", false),
        ]
    );
    let hint = format!("…{}", &rotated[rotated.len() - 4..]);
    assert_eq!(log[3]["after"]["api_key_hint"], hint, "{}", log[3]);
    assert!(log[0]["after"]["arm_resource_id"].is_string(), "{}", log[0]);
    azure.assert_no_key(&serde_json::to_string(&log).expect("json"), &[&rotated]);
}

#[tokio::test]
async fn proposals_put_the_ptu_first_and_create_a_gateway() {
    let azure = start().await;
    let ids = deployment_ids(&azure.discover().await);
    let imported = azure.import(&ids).await;
    assert_eq!(imported["created"].as_array().expect("created").len(), 3);
    let endpoints = azure.harness.get("/api/v1/inference-endpoints").await.json();
    let id_named = |name: &str| {
        endpoints
            .as_array()
            .expect("list")
            .iter()
            .find(|e| e["name"] == name)
            .map(id_of)
            .expect("endpoint")
    };

    let version = azure.harness.version().await;
    let reply = azure
        .harness
        .call(Method::POST, "/api/v1/azure/gateway-proposals", None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(azure.harness.version().await, version, "a proposal writes nothing");
    let proposals = reply.json()["proposals"].as_array().expect("proposals").clone();
    assert_eq!(proposals.len(), 2, "gpt-4o and gpt-4o-mini: {proposals:?}");
    let gpt4o = proposals.iter().find(|p| p["name"] == "gpt-4o-2024-11-20").expect("gpt-4o");
    let members = gpt4o["endpoints"].as_array().expect("members");
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["endpoint_id"], id_named("aoai-ptu-gpt-4o-ptu").as_str());
    assert_eq!(members[0]["priority"], 0);
    assert_eq!(members[0]["weight"], 1000);
    assert_eq!(members[1]["endpoint_id"], id_named("aoai-eus-gpt-4o").as_str());
    assert_eq!(members[1]["priority"], 1);
    assert_eq!(members[1]["weight"], 500);

    let gateway = azure.harness.create_gateway(gpt4o.clone()).await;
    let fetched = azure
        .harness
        .get(&format!("/api/v1/gateways/{}", id_of(&gateway)))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(fetched["name"], "gpt-4o-2024-11-20");
    let ptu = fetched["endpoints"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["endpoint_id"] == id_named("aoai-ptu-gpt-4o-ptu").as_str())
        .expect("ptu member");
    assert_eq!(ptu["priority"], 0);
}

#[tokio::test]
async fn bad_imports_are_problems_and_write_nothing() {
    let azure = start().await;
    let ids = deployment_ids(&azure.discover().await);
    let version = azure.harness.version().await;
    let unknown = format!("{}-nope", ids[0]);

    let reply = azure
        .harness
        .call(
            Method::POST,
            "/api/v1/azure/imports",
            Some(json!({"deployment_ids": [ids[0], unknown]})),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.content_type(), "application/problem+json");
    assert_eq!(reply.error_fields(), ["deployment_ids[1]"]);

    let reply = azure
        .harness
        .call(Method::POST, "/api/v1/azure/imports", Some(json!({"deployment_ids": []})))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["deployment_ids"]);

    let reply = azure
        .harness
        .call(
            Method::POST,
            "/api/v1/azure/imports",
            Some(json!({"deployment_ids": [ids[0], ids[0]]})),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["deployment_ids[1]"]);

    let reply = azure
        .harness
        .call_raw(
            Method::POST,
            "/api/v1/azure/imports",
            Some("application/json"),
            "{\"deployment_ids\": [",
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(reply.content_type(), "application/problem+json");

    let reply = azure
        .harness
        .call(Method::POST, "/api/v1/azure/imports", Some(json!({"ids": ids})))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.content_type(), "application/problem+json");

    assert_eq!(azure.harness.version().await, version);
    let endpoints = azure.harness.get("/api/v1/inference-endpoints").await.json();
    assert!(endpoints.as_array().expect("list").is_empty());
}

/// `listKeys` requests the ARM mock has received so far.
pub(crate) fn list_keys_calls(arm: &ArmMock) -> usize {
    arm.requests().iter().filter(|r| r.path.to_ascii_lowercase().ends_with("/listkeys")).count()
}

fn ids_of(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .expect("an id list")
        .iter()
        .map(|v| v.as_str().expect("an id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn importing_with_entra_auth_reads_no_keys_and_stores_none() {
    let azure = start().await;
    let ids = deployment_ids(&azure.discover().await);
    assert_eq!(ids.len(), 3);

    // An unknown mode is a 422 naming `auth`, and writes nothing.
    let version = azure.harness.version().await;
    let reply = azure
        .harness
        .call(
            Method::POST,
            "/api/v1/azure/imports",
            Some(json!({"deployment_ids": ids, "auth": "managed_identity"})),
        )
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["auth"]);
    assert_eq!(azure.harness.version().await, version);

    // One deployment imported the default way first: api_key, reading the account key.
    let keyed_calls = list_keys_calls(&azure.arm);
    let keyed = azure.import(&ids[..1]).await;
    let keyed_ids = ids_of(&keyed["created"]);
    assert_eq!(keyed_ids.len(), 1, "{keyed}");
    assert_eq!(list_keys_calls(&azure.arm), keyed_calls + 1, "api_key mode reads the key");
    let keyed_path = format!("/api/v1/inference-endpoints/{}", keyed_ids[0]);
    let before = azure.harness.get(&keyed_path).await.json();
    assert_eq!(before["auth"], "api_key");
    assert!(before["api_key_hint"].as_str().is_some_and(|h| !h.is_empty()), "{before}");

    // All three in Entra mode: the keyed one switches (updated), the others are created, in
    // one version bump, and no listKeys request reaches ARM.
    let version = azure.harness.version().await;
    let calls_before = list_keys_calls(&azure.arm);
    let reply = azure
        .harness
        .call(
            Method::POST,
            "/api/v1/azure/imports",
            Some(json!({"deployment_ids": ids, "auth": "entra"})),
        )
        .await
        .expect(StatusCode::OK);
    azure.assert_no_key(&reply.text, &[]);
    let entra = reply.json();
    assert_eq!(list_keys_calls(&azure.arm), calls_before, "entra mode reads no key");
    assert_eq!(ids_of(&entra["updated"]), keyed_ids, "{entra}");
    let created = ids_of(&entra["created"]);
    assert_eq!(created.len(), 2, "{entra}");
    assert!(entra["unchanged"].as_array().expect("unchanged").is_empty(), "{entra}");
    assert_eq!(azure.harness.version().await.0, version.0 + 1);
    assert_eq!(entra["config_version"], version.0 + 1);

    let all: Vec<String> = keyed_ids.iter().chain(&created).cloned().collect();
    for id in &all {
        let endpoint = azure.harness.get(&format!("/api/v1/inference-endpoints/{id}")).await;
        let body = endpoint.json();
        assert_eq!(body["auth"], "entra", "{body}");
        assert!(body.get("api_key_hint").is_none(), "no key, no hint: {body}");
        azure.assert_no_key(&endpoint.text, &[]);
    }
    let snapshot = azure.harness.store.load_snapshot().await.expect("snapshot");
    assert_eq!(snapshot.endpoints.len(), 3);
    for endpoint in &snapshot.endpoints {
        assert!(all.contains(&endpoint.id.to_string()), "{}", endpoint.name);
        assert!(
            matches!(endpoint.credential, Credential::Entra { .. }),
            "{} keeps no key",
            endpoint.name
        );
    }

    // The same import again changes nothing: no write, no bump, still no listKeys.
    let version = azure.harness.version().await;
    let reply = azure
        .harness
        .call(
            Method::POST,
            "/api/v1/azure/imports",
            Some(json!({"deployment_ids": ids, "auth": "entra"})),
        )
        .await
        .expect(StatusCode::OK);
    let again = reply.json();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(ids_of(&again["unchanged"]), expected, "{again}");
    assert!(again["created"].as_array().expect("created").is_empty(), "{again}");
    assert!(again["updated"].as_array().expect("updated").is_empty(), "{again}");
    assert_eq!(azure.harness.version().await, version, "an idle import bumps nothing");
    assert_eq!(list_keys_calls(&azure.arm), calls_before);

    // A routine re-import that names no mode keeps them on Entra ID: no keys read, nothing changed.
    let reply = azure
        .harness
        .call(Method::POST, "/api/v1/azure/imports", Some(json!({"deployment_ids": ids})))
        .await
        .expect(StatusCode::OK);
    let routine = reply.json();
    assert_eq!(ids_of(&routine["unchanged"]), expected, "{routine}");
    assert_eq!(azure.harness.version().await, version, "{routine}");
    assert_eq!(list_keys_calls(&azure.arm), calls_before, "no listKeys for Entra endpoints");
}

/// A running mock region answering as an Azure OpenAI account with `key` and one deployment.
async fn region(display: &str, key: &str, deployment: &str) -> MockAzure {
    MockAzure::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockConfig {
            region: display.to_owned(),
            api_key: key.to_owned(),
            deployments: vec![deployment.to_owned()],
            model: "gpt-4o-2024-11-20".to_owned(),
        },
    )
    .await
    .expect("mock region starts")
}

/// The acceptance path: discovery → import → proposal → gateway → key → a real data plane
/// fed with the store's snapshot serves a chat completion from the PTU (priority 0).
#[tokio::test]
async fn a_proposed_gateway_serves_traffic_through_the_data_plane() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ptu_account = Account::new("rg-b", "aoai-ptu", "OpenAI", "westus");
    let paygo_account = Account::new("rg-a", "aoai-eus", "OpenAI", "eastus");
    // Each mock region accepts exactly the key the ARM mock hands out for its account.
    let ptu = region("West US", &ptu_account.key1, "gpt-4o-ptu").await;
    let paygo = region("East US", &paygo_account.key1, "gpt-4o").await;
    let inventory = Inventory::new()
        .subscription(
            Subscription::new("sub-a", "Team A").account(
                paygo_account.with_endpoint(format!("{}/", paygo.base_url())).deployment(
                    Deployment::new("gpt-4o", "gpt-4o", "2024-11-20")
                        .sku("Standard", 50)
                        .version_upgrade(Some("NoAutoUpgrade")),
                ),
            ),
        )
        .subscription(
            Subscription::new("sub-b", "Team B").account(
                ptu_account.with_endpoint(format!("{}/", ptu.base_url())).deployment(
                    Deployment::new("gpt-4o-ptu", "gpt-4o", "2024-11-20")
                        .sku("GlobalProvisionedManaged", 100)
                        .version_upgrade(Some("NoAutoUpgrade")),
                ),
            ),
        );
    let azure = start_with(inventory).await;

    let discovery = azure.discover().await;
    assert_eq!(discovery["status"], "succeeded", "{discovery}");
    let imported = azure.import(&deployment_ids(&discovery)).await;
    assert_eq!(imported["created"].as_array().expect("created").len(), 2, "{imported}");
    let proposals = azure
        .harness
        .call(Method::POST, "/api/v1/azure/gateway-proposals", None)
        .await
        .expect(StatusCode::OK)
        .json();
    let proposal = proposals["proposals"]
        .as_array()
        .expect("proposals")
        .iter()
        .find(|p| p["name"] == "gpt-4o-2024-11-20")
        .expect("a gpt-4o proposal")
        .clone();
    let gateway = azure.harness.create_gateway(proposal).await;
    let key = azure
        .harness
        .call(
            Method::POST,
            &format!("/api/v1/gateways/{}/keys", id_of(&gateway)),
            Some(json!({"name": "acceptance"})),
        )
        .await
        .expect(StatusCode::CREATED)
        .json()["key"]
        .as_str()
        .expect("key shown once")
        .to_owned();

    let data_plane = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: String::new(),
        node_id: "acceptance".to_owned(),
        allow_loopback_upstreams: true,
        ..Default::default()
    })
    .await
    .expect("data plane binds");
    let base = format!("http://{}", data_plane.local_addr());
    let snapshot = azure.harness.store.load_snapshot().await.expect("snapshot");
    let table = RoutingTable::compile(&snapshot).expect("the store's snapshot compiles");
    assert!(data_plane.snapshot_store().swap_if_newer(table));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(data_plane.run(async move {
        let _ = stopped.await;
    }));

    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(format!(
            "{base}/openai/deployments/gpt-4o-2024-11-20/chat/completions?api-version=2024-10-21"
        ))
        .header("api-key", &key)
        .header("content-type", "application/json")
        .body(json!({"messages": [{"role": "user", "content": "Say hello"}]}).to_string())
        .send()
        .await
        .expect("the data plane answers");
    assert_eq!(response.status(), 200);
    let endpoint = response
        .headers()
        .get("x-modelgw-endpoint")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(endpoint, "aoai-ptu-gpt-4o-ptu", "the PTU (priority 0) serves");
    let body: Value = response.json().await.expect("JSON answer");
    assert_eq!(body["choices"][0]["message"]["content"], ptu.reply_text());
    let seen = ptu.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/openai/deployments/gpt-4o-ptu/chat/completions");
    assert!(paygo.requests().is_empty(), "the standard deployment is not needed");

    let _ = stop.send(());
    task.await.expect("data plane task").expect("data plane stops cleanly");
    ptu.shutdown();
    paygo.shutdown();
}
