//! No account key, token or client secret reaches a log line, at any level, during credential
//! resolution (including a failing one) and a discovery run. Its own binary: the capturing
//! subscriber is process-global, so no other test may share the process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use azure_core::http::{ClientOptions, RetryOptions};
use modelgw_control_plane::azure::arm::ArmClient;
use modelgw_control_plane::azure::{
    ARM_SCOPE, ArmClientOptions, CredentialChoice, CredentialOptions, CredentialSettings,
    DiscoveryOptions, DiscoveryProgress, discover, resolve,
};
use modelgw_mock_arm::{
    Account, ArmAuth, ArmMock, Deployment, Inventory, RedirectTransport, Subscription, TokenMock,
    actions,
};
use modelgw_model::Secret;
use tokio::sync::watch;

const TENANT: &str = "72f988bf-0000-4000-8000-000000000004";
const CLIENT_ID: &str = "app-logging";
const CLIENT_SECRET: &str = "client-secret-value-0004";

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn credential_options(token_mock: &TokenMock) -> CredentialOptions {
    CredentialOptions {
        client_options: ClientOptions {
            transport: Some(RedirectTransport::transport(&token_mock.base_url()).expect("url")),
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

async fn token_mock() -> TokenMock {
    TokenMock::builder(TENANT)
        .client_secret(CLIENT_ID, CLIENT_SECRET)
        .start()
        .await
        .expect("token mock starts")
}

async fn arm_client(token_mock: &TokenMock, arm: &ArmMock) -> ArmClient {
    let resolved =
        resolve(&settings(), &credential_options(token_mock), ARM_SCOPE).await.expect("resolves");
    ArmClient::new(
        arm.base_url().parse().expect("url"),
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
                        .deployment(Deployment::new("gpt-4o-mini", "gpt-4o-mini", "2024-07-18"))
                        .deployment(Deployment::new("embed", "text-embedding-3-large", "1")),
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
                        .deployment(Deployment::new("o3-mini", "o3-mini", "2025-01-31")),
                )
                .account(
                    Account::new("rg-b", "aoai-locked", "OpenAI", "northeurope")
                        .deployment(Deployment::new("gpt-4o-mini", "gpt-4o-mini", "2024-07-18")),
                ),
        )
}

/// Records every span field and event field, at every level, as text.
mod capture {
    use std::fmt::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    #[derive(Clone, Default)]
    pub struct Capture {
        pub text: Arc<Mutex<String>>,
        next_id: Arc<AtomicU64>,
    }

    struct Visitor<'a>(&'a mut String);

    impl Visit for Visitor<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    impl Capture {
        fn push(&self, name: &str, record: impl FnOnce(&mut Visitor<'_>)) {
            let mut text = self.text.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            text.push('\n');
            text.push_str(name);
            record(&mut Visitor(&mut text));
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
            Some(tracing::level_filters::LevelFilter::TRACE)
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            self.push(span.metadata().name(), |v| span.record(v));
            Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
        }
        fn record(&self, _: &Id, values: &Record<'_>) {
            self.push("record", |v| values.record(v));
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            self.push(event.metadata().target(), |v| event.record(v));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

#[tokio::test]
async fn no_key_token_or_secret_reaches_any_log_line() {
    install_crypto();
    let capture = capture::Capture::default();
    // Global, so every thread and callsite reports here; this binary has only this test.
    tracing::subscriber::set_global_default(capture.clone()).expect("first subscriber");
    let tokens = token_mock().await;
    let arm = ArmMock::builder(inventory(), ArmAuth::TokensFrom(tokens.clone()))
        .deployments_page_size(2)
        .start()
        .await
        .expect("arm mock starts");
    arm.forbid("/subscriptions/sub-b/resourceGroups/rg-b", actions::LIST_KEYS);
    // A failing resolve too: its error text is logged.
    let mut wrong = settings();
    wrong.client_secret = Some(Secret::new("wrong-secret-value-4242"));
    let _ = resolve(&wrong, &credential_options(&tokens), ARM_SCOPE).await;
    let client = arm_client(&tokens, &arm).await;
    let (progress, _) = watch::channel(DiscoveryProgress::default());
    let report = discover(&client, &DiscoveryOptions::default(), &progress).await;
    assert_eq!(report.deployments.len(), 7);
    assert!(report.deployments.iter().filter(|d| d.api_key.is_some()).count() >= 4);

    let text = capture.text.lock().expect("capture").clone();
    assert!(
        text.contains("discovery finished") && text.contains("azure.arm.request"),
        "capture works"
    );
    assert!(text.contains("azure.discovery.account") && text.contains("aoai-eus"));
    let mut forbidden: Vec<String> = vec![CLIENT_SECRET.into(), "wrong-secret-value-4242".into()];
    forbidden.extend(tokens.issued().into_iter().map(|t| t.token));
    for sub in &arm.inventory().subscriptions {
        for account in &sub.accounts {
            forbidden.push(account.key1.clone());
            forbidden.push(account.key2.clone());
        }
    }
    assert!(forbidden.len() > 10);
    for secret in forbidden {
        assert!(!text.contains(&secret), "a secret reached the logs");
    }
}
