//! Credential resolution against the token mock, in process: client secret, workload identity,
//! the `auto` chain, and errors that name each credential and why it failed. Managed identity
//! needs process environment variables and has its own binary (`azure_managed_identity.rs`).
//! Here managed identity is kept off the instance metadata service with `allow_imds: false`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::io::Write;

use azure_core::http::{ClientOptions, RetryOptions};
use modelgw_control_plane::azure::{
    ARM_SCOPE, CredentialChoice, CredentialKind, CredentialOptions, CredentialSettings, resolve,
};
use modelgw_mock_arm::{ARM_AUDIENCE, Grant, RedirectTransport, TokenMock};
use modelgw_model::Secret;

const TENANT: &str = "72f988bf-0000-4000-8000-000000000002";
const APP: &str = "app-secret";
const SECRET: &str = "right-secret-value-0002";
const WORKLOAD_APP: &str = "app-workload";
const ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.k8s-service-account.sig";

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn token_mock() -> TokenMock {
    TokenMock::builder(TENANT)
        .client_secret(APP, SECRET)
        .federated_client(WORKLOAD_APP, ASSERTION)
        .start()
        .await
        .expect("token mock starts")
}

fn options(mock: &TokenMock) -> CredentialOptions {
    CredentialOptions {
        client_options: ClientOptions {
            transport: Some(RedirectTransport::transport(&mock.base_url()).expect("url")),
            retry: RetryOptions::none(),
            ..Default::default()
        },
        allow_imds: false,
        ..Default::default()
    }
}

fn secret_settings(secret: &str) -> CredentialSettings {
    CredentialSettings {
        choice: CredentialChoice::ClientSecret,
        tenant_id: Some(TENANT.into()),
        client_id: Some(APP.into()),
        client_secret: Some(Secret::new(secret)),
        ..Default::default()
    }
}

fn token_file(content: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(content.as_bytes()).expect("write token file");
    file
}

#[tokio::test]
async fn client_secret_gets_an_arm_token_and_says_so() {
    install_crypto();
    let mock = token_mock().await;
    let resolved = resolve(&secret_settings(SECRET), &options(&mock), ARM_SCOPE)
        .await
        .expect("the right secret works");
    assert_eq!(resolved.kind, CredentialKind::ClientSecret);
    assert!(resolved.skipped.is_empty());
    assert_eq!(mock.entra_requests(), 1);
    let issued = mock.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].grant, Grant::ClientSecret);
    assert_eq!(issued[0].audience, ARM_AUDIENCE);
    // The resolve-time token is cached: the next call does not go to Entra.
    let token = resolved.credential.get_token(&[ARM_SCOPE], None).await.expect("cached token");
    assert_eq!(token.token.secret(), issued[0].token);
    assert_eq!(mock.entra_requests(), 1);
}

#[tokio::test]
async fn a_wrong_secret_names_the_credential_and_entras_reason_without_the_secret() {
    install_crypto();
    let mock = token_mock().await;
    let wrong = "wrong-secret-value-9999";
    let error = resolve(&secret_settings(wrong), &options(&mock), ARM_SCOPE)
        .await
        .expect_err("a wrong secret fails");
    assert_eq!(error.attempts.len(), 1);
    assert_eq!(error.attempts[0].kind, CredentialKind::ClientSecret);
    assert!(error.attempts[0].tried);
    let text = error.to_string();
    assert!(text.contains("client_secret failed"), "{text}");
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(text.contains("Invalid client secret"), "{text}");
    assert!(!text.contains(wrong), "the secret leaked: {text}");
    assert!(!format!("{error:?}").contains(wrong));
    assert_eq!(mock.entra_requests(), 1, "no retries with RetryOptions::none()");
    assert!(mock.issued().is_empty());
}

#[tokio::test]
async fn workload_identity_presents_the_token_file() {
    install_crypto();
    let mock = token_mock().await;
    let file = token_file(ASSERTION);
    let settings = CredentialSettings {
        choice: CredentialChoice::WorkloadIdentity,
        tenant_id: Some(TENANT.into()),
        client_id: Some(WORKLOAD_APP.into()),
        federated_token_file: Some(file.path().to_owned()),
        ..Default::default()
    };
    let resolved = resolve(&settings, &options(&mock), ARM_SCOPE).await.expect("workload identity");
    assert_eq!(resolved.kind, CredentialKind::WorkloadIdentity);
    assert_eq!(mock.issued()[0].grant, Grant::ClientAssertion);
}

#[tokio::test]
async fn auto_prefers_workload_identity_then_falls_through_to_the_client_secret() {
    install_crypto();
    let mock = token_mock().await;
    // The workload identity is configured but its assertion is rejected; the secret is right.
    let file = token_file("an-assertion-entra-does-not-know");
    let settings = CredentialSettings {
        choice: CredentialChoice::Auto,
        tenant_id: Some(TENANT.into()),
        client_id: Some(APP.into()),
        client_secret: Some(Secret::new(SECRET)),
        federated_token_file: Some(file.path().to_owned()),
        ..Default::default()
    };
    let resolved = resolve(&settings, &options(&mock), ARM_SCOPE).await.expect("secret works");
    assert_eq!(resolved.kind, CredentialKind::ClientSecret);
    assert_eq!(resolved.skipped.len(), 1);
    assert_eq!(resolved.skipped[0].kind, CredentialKind::WorkloadIdentity);
    assert!(resolved.skipped[0].tried);
    assert_eq!(mock.entra_requests(), 2);
}

#[tokio::test]
async fn auto_lists_every_credential_and_why_when_none_works() {
    install_crypto();
    let mock = token_mock().await;
    let wrong = "wrong-secret-value-1234";
    let file = token_file("an-assertion-entra-does-not-know");
    let settings = CredentialSettings {
        choice: CredentialChoice::Auto,
        tenant_id: Some(TENANT.into()),
        client_id: Some(WORKLOAD_APP.into()),
        client_secret: Some(Secret::new(wrong)),
        federated_token_file: Some(file.path().to_owned()),
        ..Default::default()
    };
    let error = resolve(&settings, &options(&mock), ARM_SCOPE).await.expect_err("nothing works");
    let kinds: Vec<_> = error.attempts.iter().map(|a| (a.kind, a.tried)).collect();
    assert_eq!(
        kinds,
        vec![
            (CredentialKind::WorkloadIdentity, true),
            (CredentialKind::ClientSecret, true),
            (CredentialKind::ManagedIdentity, false),
        ]
    );
    let text = error.to_string();
    assert!(text.contains("MODELGW_AZURE_CREDENTIAL=auto"), "{text}");
    assert!(text.contains("workload_identity failed") && text.contains("AADSTS700213"), "{text}");
    assert!(text.contains("client_secret failed") && text.contains("AADSTS7000215"), "{text}");
    assert!(
        text.contains("managed_identity skipped") && text.contains("IDENTITY_ENDPOINT"),
        "{text}"
    );
    assert!(!text.contains(wrong));
}

#[tokio::test]
async fn missing_configuration_is_named_without_calling_entra() {
    install_crypto();
    let mock = token_mock().await;
    let settings = CredentialSettings {
        choice: CredentialChoice::ClientSecret,
        client_id: Some(APP.into()),
        client_secret: Some(Secret::new(SECRET)),
        ..Default::default()
    };
    let error = resolve(&settings, &options(&mock), ARM_SCOPE).await.expect_err("no tenant");
    assert_eq!(error.attempts.len(), 1);
    assert!(!error.attempts[0].tried);
    assert!(error.to_string().contains("AZURE_TENANT_ID is not set"), "{error}");
    assert_eq!(mock.token_requests(), 0);
}

#[test]
fn the_choice_comes_from_modelgw_azure_credential() {
    let settings = CredentialSettings::from_lookup(|name| match name {
        "MODELGW_AZURE_CREDENTIAL" => Some("workload_identity".into()),
        "AZURE_FEDERATED_TOKEN_FILE" => Some("/var/run/secrets/token".into()),
        _ => None,
    })
    .expect("valid");
    assert_eq!(settings.choice, CredentialChoice::WorkloadIdentity);
    assert!(settings.federated_token_file.is_some());
    let error = CredentialSettings::from_lookup(|name| {
        (name == "MODELGW_AZURE_CREDENTIAL").then(|| "default".to_owned())
    })
    .expect_err("unknown choice");
    assert!(error.to_string().contains("MODELGW_AZURE_CREDENTIAL"));
}
