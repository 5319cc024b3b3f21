//! Managed identity through the App Service endpoint, against the token mock.
//!
//! azure_identity reads `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` only from the process environment
//! (its env override is test-only inside the crate), and edition 2024 makes `set_var` unsafe,
//! which the workspace forbids. So each test here runs its mocks in this process and re-executes
//! this test binary, filtered to the same test, with the variables set for the child only. The
//! child ([`CHILD_ENV`] set) does the credential work and asserts; the parent asserts on the exit
//! status and on what the mocks saw. The child never lacks `IDENTITY_ENDPOINT`, so it can never
//! reach the instance metadata service, and `allow_imds: false` guards that too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::process::Stdio;
use std::time::Duration;

use azure_core::http::{ClientOptions, RetryOptions};
use modelgw_control_plane::azure::arm::{ArmClient, arm_endpoint_from_lookup};
use modelgw_control_plane::azure::{
    ARM_SCOPE, ArmClientOptions, CredentialKind, CredentialOptions, CredentialSettings,
    DiscoveryOptions, DiscoveryProgress, discover, resolve,
};
use modelgw_mock_arm::{
    ARM_AUDIENCE, Account, ArmAuth, ArmMock, Deployment, Grant, Inventory, RedirectTransport,
    Subscription, TokenMock,
};

/// Set in the child process; its value is the test to run there.
const CHILD_ENV: &str = "MODELGW_AZURE_MI_TEST_CHILD";
/// Where the child finds the token mock (for the client-secret leg of `auto`).
const TOKEN_MOCK_ENV: &str = "MODELGW_TEST_TOKEN_MOCK";
/// Bound on a child run: a cold start of this binary plus a few loopback calls.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

const TENANT: &str = "72f988bf-0000-4000-8000-000000000003";
const IDENTITY_HEADER: &str = "identity-header-value-0003";

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs `test` in a child process with `envs` and every other Azure credential variable removed.
async fn run_child(test: &str, envs: &[(&str, String)]) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = tokio::process::Command::new(exe);
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for name in [
        "MODELGW_AZURE_CREDENTIAL",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "MODELGW_ARM_ENDPOINT",
    ] {
        command.env_remove(name);
    }
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = tokio::time::timeout(CHILD_TIMEOUT, command.output())
        .await
        .expect("child finished in time")
        .expect("child ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child {test} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child ran no test:\n{stdout}");
}

fn child_options(allow_token_mock: bool) -> CredentialOptions {
    let transport = allow_token_mock.then(|| {
        let url = std::env::var(TOKEN_MOCK_ENV).expect("token mock URL for the child");
        RedirectTransport::transport(&url).expect("url")
    });
    CredentialOptions {
        client_options: ClientOptions {
            transport,
            retry: RetryOptions::none(),
            ..Default::default()
        },
        allow_imds: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn managed_identity_token_from_the_app_service_endpoint_drives_discovery() {
    install_crypto();
    if in_child() {
        // The child: everything from the environment, as in production.
        let settings = CredentialSettings::from_env().expect("settings");
        let resolved =
            resolve(&settings, &child_options(false), ARM_SCOPE).await.expect("managed identity");
        assert_eq!(resolved.kind, CredentialKind::ManagedIdentity);
        let base = arm_endpoint_from_lookup(|name| std::env::var(name).ok()).expect("ARM URL");
        let arm =
            ArmClient::new(base, resolved.credential, ArmClientOptions::default()).expect("client");
        let (progress, _) = tokio::sync::watch::channel(DiscoveryProgress::default());
        let report = discover(&arm, &DiscoveryOptions::from_lookup(|_| None), &progress).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.deployments.len(), 1);
        assert!(report.deployments[0].api_key.is_some());
        return;
    }
    let tokens = TokenMock::builder(TENANT)
        .managed_identity(IDENTITY_HEADER)
        .start()
        .await
        .expect("token mock");
    let inventory = Inventory::new().subscription(Subscription::new("sub-mi", "MI").account(
        Account::new("rg", "aoai-mi", "OpenAI", "eastus").deployment(Deployment::new(
            "gpt-4o",
            "gpt-4o",
            "2024-11-20",
        )),
    ));
    let arm = ArmMock::builder(inventory, ArmAuth::TokensFrom(tokens.clone()))
        .start()
        .await
        .expect("arm mock");
    run_child(
        "managed_identity_token_from_the_app_service_endpoint_drives_discovery",
        &[
            ("MODELGW_AZURE_CREDENTIAL", "managed_identity".into()),
            ("IDENTITY_ENDPOINT", tokens.msi_endpoint()),
            ("IDENTITY_HEADER", IDENTITY_HEADER.into()),
            ("MODELGW_ARM_ENDPOINT", arm.base_url()),
        ],
    )
    .await;
    assert_eq!(tokens.msi_requests(), 1, "one token, cached for the whole run");
    assert_eq!(tokens.entra_requests(), 0);
    let issued = tokens.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].grant, Grant::ManagedIdentity);
    assert_eq!(issued[0].audience, ARM_AUDIENCE);
    // subscriptions, accounts, deployments, listKeys — all accepted.
    assert_eq!(arm.requests().len(), 4);
    assert_eq!(arm.count_status(200), 4);
}

#[tokio::test]
async fn auto_reports_each_credential_when_managed_identity_is_refused_too() {
    install_crypto();
    if in_child() {
        let settings = CredentialSettings::from_env().expect("settings");
        let error =
            resolve(&settings, &child_options(true), ARM_SCOPE).await.expect_err("nothing works");
        let kinds: Vec<_> = error.attempts.iter().map(|a| (a.kind, a.tried)).collect();
        assert_eq!(
            kinds,
            vec![
                (CredentialKind::WorkloadIdentity, false),
                (CredentialKind::ClientSecret, true),
                (CredentialKind::ManagedIdentity, true),
            ]
        );
        let text = error.to_string();
        assert!(
            text.contains("workload_identity skipped: AZURE_FEDERATED_TOKEN_FILE is not set"),
            "{text}"
        );
        assert!(text.contains("client_secret failed") && text.contains("AADSTS7000215"), "{text}");
        assert!(text.contains("managed_identity failed") && text.contains("401"), "{text}");
        assert!(!text.contains("wrong-secret-value-0003"), "{text}");
        return;
    }
    let tokens = TokenMock::builder(TENANT)
        .client_secret("app-mi", "right-secret-value-0003")
        .managed_identity(IDENTITY_HEADER)
        .start()
        .await
        .expect("token mock");
    run_child(
        "auto_reports_each_credential_when_managed_identity_is_refused_too",
        &[
            ("MODELGW_AZURE_CREDENTIAL", "auto".into()),
            ("AZURE_TENANT_ID", TENANT.into()),
            ("AZURE_CLIENT_ID", "app-mi".into()),
            ("AZURE_CLIENT_SECRET", "wrong-secret-value-0003".into()),
            ("IDENTITY_ENDPOINT", tokens.msi_endpoint()),
            ("IDENTITY_HEADER", "not-the-identity-header".into()),
            (TOKEN_MOCK_ENV, tokens.base_url()),
        ],
    )
    .await;
    assert_eq!((tokens.entra_requests(), tokens.msi_requests()), (1, 1));
    assert!(tokens.issued().is_empty());
}
