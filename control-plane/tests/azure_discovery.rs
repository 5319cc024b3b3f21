//! Discovery against the ARM mock, authenticated by a client-secret credential against the token
//! mock: paging, a 429 with Retry-After, a 403 on one account, other account kinds, warnings,
//! progress, token caching and refresh.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::http::{ClientOptions, RetryOptions};
use modelgw_control_plane::azure::arm::ArmClient;
use modelgw_control_plane::azure::discovery::permissions;
use modelgw_control_plane::azure::{
    ARM_SCOPE, ArmClientOptions, CredentialChoice, CredentialKind, CredentialOptions,
    CredentialSettings, DiscoveryOptions, DiscoveryProgress, DiscoveryReport, SubscriptionScope,
    discover, resolve,
};
use modelgw_mock_arm::{
    Account, ArmAuth, ArmMock, Deployment, Grant, Inventory, RedirectTransport, Subscription,
    TokenMock, actions,
};
use modelgw_model::Secret;
use tokio::sync::watch;

const TENANT: &str = "72f988bf-0000-4000-8000-000000000001";
const CLIENT_ID: &str = "app-discovery";
const CLIENT_SECRET: &str = "client-secret-value-0001";

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn credential_options(token_mock: &TokenMock) -> CredentialOptions {
    CredentialOptions {
        client_options: ClientOptions {
            transport: Some(
                RedirectTransport::transport(&token_mock.base_url()).expect("mock URL parses"),
            ),
            retry: RetryOptions::none(),
            ..Default::default()
        },
        allow_imds: false,
        ..Default::default()
    }
}

fn settings() -> CredentialSettings {
    CredentialSettings {
        choice: CredentialChoice::ClientSecret,
        tenant_id: Some(TENANT.into()),
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(Secret::new(CLIENT_SECRET)),
        ..Default::default()
    }
}

async fn token_mock(lifetime: Option<Duration>) -> TokenMock {
    let mut builder = TokenMock::builder(TENANT).client_secret(CLIENT_ID, CLIENT_SECRET);
    if let Some(lifetime) = lifetime {
        builder = builder.token_lifetime(lifetime);
    }
    builder.start().await.expect("token mock starts")
}

async fn arm_client(token_mock: &TokenMock, arm: &ArmMock) -> ArmClient {
    let resolved = resolve(&settings(), &credential_options(token_mock), ARM_SCOPE)
        .await
        .expect("client secret works against the mock");
    assert_eq!(resolved.kind, CredentialKind::ClientSecret);
    ArmClient::new(
        arm.base_url().parse().expect("mock URL parses"),
        resolved.credential,
        ArmClientOptions::default(),
    )
    .expect("client builds")
}

/// Two subscriptions, five accounts (one `Face`), seven OpenAI deployments.
fn inventory() -> Inventory {
    Inventory::new()
        .subscription(
            Subscription::new("sub-a", "Team A")
                .account(
                    Account::new("rg-a", "aoai-eus", "OpenAI", "eastus")
                        .deployment(Deployment::new("gpt-4o", "gpt-4o", "2024-11-20"))
                        .deployment(
                            Deployment::new("gpt-4o-mini", "gpt-4o-mini", "2024-07-18")
                                .sku("GlobalStandard", 250)
                                .version_upgrade(Some("OnceNewDefaultVersionAvailable")),
                        )
                        .deployment(
                            Deployment::new("embed", "text-embedding-3-large", "1")
                                .provisioning_state("Updating"),
                        ),
                )
                .account(
                    Account::new("rg-a", "ais-swe", "AIServices", "swedencentral")
                        .deployment(Deployment::new("gpt-4o-old", "gpt-4o", "2024-08-06")),
                )
                .account(Account::new("rg-a", "face-1", "Face", "eastus")),
        )
        .subscription(
            Subscription::new("sub-b", "Team B")
                .account(
                    Account::new("rg-b", "aoai-wus", "OpenAI", "westus")
                        .deployment(Deployment::new("gpt-4o", "gpt-4o", "2024-11-20"))
                        .deployment(
                            Deployment::new("o3-mini", "o3-mini", "2025-01-31")
                                .version_upgrade(None),
                        ),
                )
                .account(
                    Account::new("rg-b", "aoai-locked", "OpenAI", "northeurope")
                        .deployment(Deployment::new("gpt-4o-mini", "gpt-4o-mini", "2024-07-18")),
                ),
        )
}

fn account<'a>(inventory: &'a Inventory, name: &str) -> (&'a str, &'a Account) {
    inventory
        .subscriptions
        .iter()
        .flat_map(|s| s.accounts.iter().map(move |a| (s.id.as_str(), a)))
        .find(|(_, a)| a.name == name)
        .expect("account in the inventory")
}

fn deployment<'a>(
    report: &'a DiscoveryReport,
    account: &str,
    name: &str,
) -> &'a modelgw_control_plane::azure::DiscoveredDeployment {
    report
        .deployments
        .iter()
        .find(|d| d.account == account && d.deployment == name)
        .unwrap_or_else(|| panic!("{account}/{name} discovered"))
}

#[tokio::test]
async fn discovery_lists_every_openai_deployment_once_despite_paging_429_and_403() {
    install_crypto();
    let tokens = token_mock(None).await;
    let arm = ArmMock::builder(inventory(), ArmAuth::TokensFrom(tokens.clone()))
        .deployments_page_size(2)
        .start()
        .await
        .expect("arm mock starts");
    let inv = arm.inventory().clone();
    let (sub_b, wus) = account(&inv, "aoai-wus");
    let throttled_path = format!("{}/deployments", wus.id(sub_b));
    arm.throttle_once(&throttled_path, 1);
    let (_, locked) = account(&inv, "aoai-locked");
    let locked_id = locked.id(sub_b);
    arm.forbid(&locked_id, actions::LIST_KEYS);

    let client = arm_client(&tokens, &arm).await;
    let (progress_tx, mut progress_rx) = watch::channel(DiscoveryProgress::default());
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while progress_rx.changed().await.is_ok() {
            let snapshot = progress_rx.borrow_and_update().clone();
            let done = snapshot.finished;
            seen.push(snapshot);
            if done {
                break;
            }
        }
        seen
    });
    let started = Instant::now();
    let report = discover(&client, &DiscoveryOptions::default(), &progress_tx).await;
    let elapsed = started.elapsed();

    // Every OpenAI/AIServices deployment, exactly once; the Face account skipped.
    let expected: HashSet<(String, String)> = [
        ("aoai-eus", "gpt-4o"),
        ("aoai-eus", "gpt-4o-mini"),
        ("aoai-eus", "embed"),
        ("ais-swe", "gpt-4o-old"),
        ("aoai-wus", "gpt-4o"),
        ("aoai-wus", "o3-mini"),
        ("aoai-locked", "gpt-4o-mini"),
    ]
    .into_iter()
    .map(|(a, d)| (a.to_owned(), d.to_owned()))
    .collect();
    let found: Vec<(String, String)> =
        report.deployments.iter().map(|d| (d.account.clone(), d.deployment.clone())).collect();
    assert_eq!(found.len(), expected.len(), "each deployment once: {found:?}");
    assert_eq!(found.into_iter().collect::<HashSet<_>>(), expected);
    assert_eq!(report.skipped_accounts.len(), 1);
    assert_eq!(report.skipped_accounts[0].kind, "Face");
    // Two pages of aoai-eus deployments were fetched through the nextLink.
    let (sub_a, eus) = account(&inv, "aoai-eus");
    assert_eq!(arm.calls(&format!("{}/deployments", eus.id(sub_a))), 2);
    assert_eq!(deployment(&report, "aoai-eus", "embed").model_name, "text-embedding-3-large");

    // The 403 is reported with its scope and the missing permission; discovery went on.
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let error = &report.errors[0];
    assert_eq!(error.scope, locked_id);
    assert_eq!(error.permission.as_deref(), Some(permissions::LIST_KEYS));
    assert!(error.message.contains(permissions::LIST_KEYS), "{}", error.message);
    let locked_deployment = deployment(&report, "aoai-locked", "gpt-4o-mini");
    assert!(locked_deployment.api_key.is_none());
    assert!(locked_deployment.warnings.iter().any(|w| w.contains("listKeys")));

    // The 429's Retry-After (1 s) was respected before the retry.
    let throttled: Vec<_> = arm
        .requests()
        .into_iter()
        .filter(|r| r.path.eq_ignore_ascii_case(&throttled_path))
        .collect();
    assert_eq!(throttled.iter().map(|r| r.status).collect::<Vec<_>>(), vec![429, 200]);
    let waited = throttled[1].at.duration_since(throttled[0].at);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert!(elapsed >= Duration::from_secs(1));
    assert_eq!(deployment(&report, "aoai-wus", "o3-mini").model_version, "2025-01-31");

    // Keys, endpoints and deployment fields.
    let gpt4o = deployment(&report, "aoai-eus", "gpt-4o");
    assert_eq!(gpt4o.api_key.as_ref().map(Secret::expose), Some(eus.key1.as_str()));
    assert_eq!(gpt4o.endpoint, "https://aoai-eus.openai.azure.com/");
    assert_eq!(gpt4o.subscription_id, "sub-a");
    assert_eq!(gpt4o.resource_group, "rg-a");
    assert_eq!(gpt4o.location, "eastus");
    assert_eq!(gpt4o.id, format!("{}/deployments/gpt-4o", eus.id(sub_a)));
    assert_eq!(gpt4o.provisioning_state, "Succeeded");
    assert_eq!(gpt4o.rate_limits.len(), 2);
    let ais = deployment(&report, "ais-swe", "gpt-4o-old");
    assert_eq!(ais.endpoint, "https://ais-swe.openai.azure.com/", "OpenAI entry of endpoints");
    assert_eq!(ais.account_kind, "AIServices");
    let mini = deployment(&report, "aoai-eus", "gpt-4o-mini");
    assert_eq!((mini.sku.as_str(), mini.capacity), ("GlobalStandard", Some(250)));

    // Warnings: auto-upgrade, provisioning, mixed versions of one model.
    assert!(mini.warnings.iter().any(|w| w.contains("OnceNewDefaultVersionAvailable")));
    let o3 = deployment(&report, "aoai-wus", "o3-mini");
    assert!(o3.version_upgrade_option.is_none());
    assert!(
        o3.warnings.iter().any(|w| w.contains("OnceCurrentVersionExpired")),
        "absent means auto-upgrade"
    );
    assert!(
        deployment(&report, "aoai-eus", "embed").warnings.iter().any(|w| w.contains("Updating"))
    );
    for d in report.deployments.iter().filter(|d| d.model_name == "gpt-4o") {
        assert!(
            d.warnings.iter().any(|w| w.contains("2024-08-06, 2024-11-20")),
            "{:?}",
            d.warnings
        );
    }
    assert!(gpt4o.warnings.iter().all(|w| !w.contains("upgrade is on")));
    let o3_versions = o3.warnings.iter().filter(|w| w.contains("versions")).count();
    assert_eq!(o3_versions, 0);

    // Progress was observable mid-run and ends complete.
    let seen = watcher.await.expect("watcher ends");
    assert!(
        seen.iter()
            .any(|p| p.accounts_total == 4 && p.accounts_scanned > 0 && p.accounts_scanned < 4),
        "{seen:?}"
    );
    let last = seen.last().expect("progress published");
    assert_eq!(last, &report.progress);
    assert_eq!(
        (
            last.subscriptions_scanned,
            last.subscriptions_total,
            last.accounts_scanned,
            last.accounts_total
        ),
        (2, 2, 4, 4)
    );
    assert_eq!((last.deployments_found, last.errors, last.finished), (7, 1, true));

    // Secrets never reach Debug output.
    let debug = format!("{:?}", report);
    assert!(!debug.contains(&eus.key1));
    let json = serde_json::to_string(&report.deployments).expect("serializes");
    assert!(!json.contains(&eus.key1));

    // One token served the whole run (cached), and ARM never rejected it.
    assert_eq!(tokens.entra_requests(), 1);
    assert_eq!(arm.count_status(401), 0);
}

#[tokio::test]
async fn a_forbidden_subscription_is_reported_and_the_others_scanned() {
    install_crypto();
    let tokens = token_mock(None).await;
    let arm = ArmMock::builder(inventory(), ArmAuth::TokensFrom(tokens.clone()))
        .start()
        .await
        .expect("arm mock starts");
    arm.forbid("/subscriptions/sub-a", actions::ACCOUNTS_READ);
    let client = arm_client(&tokens, &arm).await;
    let (progress, _) = watch::channel(DiscoveryProgress::default());
    let report = discover(&client, &DiscoveryOptions::default(), &progress).await;
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].scope, "/subscriptions/sub-a");
    assert_eq!(report.errors[0].permission.as_deref(), Some(permissions::ACCOUNTS_READ));
    let accounts: HashSet<&str> = report.deployments.iter().map(|d| d.account.as_str()).collect();
    assert_eq!(accounts, HashSet::from(["aoai-wus", "aoai-locked"]));
    assert_eq!((report.progress.subscriptions_scanned, report.progress.accounts_total), (2, 2));
}

#[tokio::test]
async fn configured_subscriptions_and_entra_auth_skip_the_listing_and_the_keys() {
    install_crypto();
    let tokens = token_mock(None).await;
    let arm = ArmMock::builder(inventory(), ArmAuth::TokensFrom(tokens.clone()))
        .start()
        .await
        .expect("arm mock starts");
    let client = arm_client(&tokens, &arm).await;
    let options = DiscoveryOptions {
        subscriptions: SubscriptionScope::Only(vec!["sub-b".into()]),
        fetch_keys: false,
        ..Default::default()
    };
    let (progress, _) = watch::channel(DiscoveryProgress::default());
    let report = discover(&client, &options, &progress).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.deployments.len(), 3);
    assert!(report.deployments.iter().all(|d| d.subscription_id == "sub-b" && d.api_key.is_none()));
    assert_eq!(arm.calls("/subscriptions"), 0);
    assert!(arm.requests().iter().all(|r| !r.path.ends_with("/listKeys")));
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_and_never_rejected() {
    install_crypto();
    // azure_identity refreshes within 300 s of expiry: a 200 s token is refetched every call.
    let tokens = token_mock(Some(Duration::from_secs(200))).await;
    let arm = ArmMock::builder(inventory(), ArmAuth::TokensFrom(tokens.clone()))
        .start()
        .await
        .expect("arm mock starts");
    let client = arm_client(&tokens, &arm).await;
    let (progress, _) = watch::channel(DiscoveryProgress::default());
    let report = discover(&client, &DiscoveryOptions::default(), &progress).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.deployments.len(), 7);
    let arm_calls = arm.requests().len() as u64;
    // One token at resolve time, then one per ARM call.
    assert_eq!(tokens.entra_requests(), arm_calls + 1);
    assert!(tokens.issued().iter().all(|t| t.grant == Grant::ClientSecret));
    assert_eq!(arm.count_status(401), 0);
}

#[tokio::test]
async fn a_token_arm_does_not_accept_is_reported_at_the_tenant_scope() {
    install_crypto();
    let tokens = token_mock(None).await;
    let arm = ArmMock::builder(inventory(), ArmAuth::Static("some-other-token".into()))
        .start()
        .await
        .expect("arm mock starts");
    let client = arm_client(&tokens, &arm).await;
    let (progress, _) = watch::channel(DiscoveryProgress::default());
    let report = discover(&client, &DiscoveryOptions::default(), &progress).await;
    assert!(report.deployments.is_empty());
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].scope, "/");
    assert!(
        report.errors[0].message.contains("InvalidAuthenticationToken"),
        "{}",
        report.errors[0].message
    );
    assert!(report.progress.finished);
}

#[tokio::test]
async fn throttling_beyond_the_retry_budget_fails_only_that_scope() {
    install_crypto();
    let tokens = token_mock(None).await;
    let arm = ArmMock::builder(inventory(), ArmAuth::TokensFrom(tokens.clone()))
        .start()
        .await
        .expect("arm mock starts");
    let inv = arm.inventory().clone();
    let (sub, wus) = account(&inv, "aoai-wus");
    let path = format!("{}/deployments", wus.id(sub));
    for _ in 0..3 {
        arm.throttle_once(&path, 0);
    }
    let resolved =
        resolve(&settings(), &credential_options(&tokens), ARM_SCOPE).await.expect("credential");
    let client = ArmClient::new(
        arm.base_url().parse().expect("url"),
        Arc::clone(&resolved.credential),
        ArmClientOptions { max_throttle_retries: 2, ..Default::default() },
    )
    .expect("client");
    let (progress, _) = watch::channel(DiscoveryProgress::default());
    let report = discover(&client, &DiscoveryOptions::default(), &progress).await;
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].scope, wus.id(sub));
    assert!(report.errors[0].permission.is_none());
    assert!(report.errors[0].message.contains("429"), "{}", report.errors[0].message);
    assert_eq!(arm.calls(&path), 3, "first try and two retries");
    assert_eq!(report.deployments.len(), 5);
    assert_eq!(report.progress.accounts_scanned, 4);
}
