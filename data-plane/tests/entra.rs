//! Endpoints in Entra ID auth mode: the data plane sends `Authorization: Bearer <token>` from
//! a real azure_identity credential (client secret, against the token mock), refreshes it
//! before it expires, and treats the endpoint as unavailable while it has none.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use modelgw_data_plane::entra::EntraTokens;
use modelgw_data_plane::routing_table::RoutingTable;
use modelgw_data_plane::{DataPlane, DataPlaneConfig, DataPlaneError};
use modelgw_mock_arm::{RedirectTransport, TokenCheck, TokenMock};
use modelgw_mock_openai::{MockAzure, MockConfig};
use modelgw_model::{
    ConfigVersion, Credential, DEFAULT_ENTRA_SCOPE, Endpoint, EndpointId, Gateway, GatewayId,
    GatewayKey, GatewayKeyId, GatewayMember, Platform, Secret, Snapshot, gateway_key_hash,
};
use serde_json::json;
use tokio::sync::oneshot;

const TENANT: &str = "72f988bf-0000-4000-8000-000000000044";
const CLIENT_ID: &str = "app-data-plane";
const CLIENT_SECRET: &str = "client-secret-value-data-plane-0044";
const CLIENT_KEY: &str = "mgw-test-entra-client-key";
/// Audience of tokens for [`DEFAULT_ENTRA_SCOPE`], as the token mock records it.
const AUDIENCE: &str = "https://cognitiveservices.azure.com";
/// Bound on the first token fetch over loopback.
const READY: Duration = Duration::from_secs(10);

async fn region(display: &str, key: &str, deployment: &str) -> Result<MockAzure> {
    Ok(MockAzure::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        MockConfig {
            region: display.to_owned(),
            api_key: key.to_owned(),
            deployments: vec![deployment.to_owned()],
            model: "gpt-4o-2024-11-20".to_owned(),
        },
    )
    .await?)
}

fn endpoint(
    name: &str,
    mock: &MockAzure,
    deployment: &str,
    credential: Credential,
) -> Result<Endpoint> {
    Ok(Endpoint {
        id: EndpointId::new(),
        name: name.to_owned(),
        platform: Platform::AzureOpenai,
        base_url: url::Url::parse(&mock.base_url())?,
        deployment: deployment.to_owned(),
        model_name: "gpt-4o".to_owned(),
        model_version: "2024-11-20".to_owned(),
        region: mock.region().to_owned(),
        credential,
    })
}

/// Gateway `chat` over `endpoints`, the n-th at priority n.
fn snapshot(endpoints: Vec<Endpoint>) -> Snapshot {
    Snapshot {
        version: ConfigVersion(1),
        gateways: vec![Gateway {
            id: GatewayId::new(),
            name: "chat".to_owned(),
            members: endpoints
                .iter()
                .zip(0..)
                .map(|(e, priority)| GatewayMember {
                    endpoint_id: e.id,
                    enabled: true,
                    priority,
                    weight: 1,
                })
                .collect(),
            keys: vec![GatewayKey::new(GatewayKeyId::new(), gateway_key_hash(CLIENT_KEY), "test")],
            routing: Default::default(),
            key_limits: Default::default(),
            traces: Default::default(),
            pin_key: modelgw_model::PinKey::new([5; 32]),
        }],
        endpoints,
    }
}

fn credential(tokens: &TokenMock) -> Result<Arc<dyn TokenCredential>> {
    let credential = ClientSecretCredential::new(
        TENANT,
        CLIENT_ID.to_owned(),
        CLIENT_SECRET.to_owned().into(),
        Some(ClientSecretCredentialOptions {
            client_options: ClientOptions {
                transport: Some(RedirectTransport::transport(&tokens.base_url())?),
                retry: RetryOptions::none(),
                ..Default::default()
            },
        }),
    )?;
    Ok(credential)
}

struct Running {
    base: String,
    entra: Arc<EntraTokens>,
    http: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), DataPlaneError>>,
}

async fn run(
    snapshot: &Snapshot,
    entra_credential: Option<Arc<dyn TokenCredential>>,
) -> Result<Running> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dp = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: String::new(),
        node_id: "entra-test".to_owned(),
        entra_credential,
        allow_loopback_upstreams: true,
        ..Default::default()
    })
    .await?;
    if !dp.snapshot_store().swap_if_newer(RoutingTable::compile(snapshot)?) {
        bail!("snapshot not applied");
    }
    let base = format!("http://{}", dp.local_addr());
    let entra = dp.entra_tokens();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(dp.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().build()?;
    Ok(Running { base, entra, http, stop, task })
}

impl Running {
    async fn chat(&self) -> Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!(
                "{}/openai/deployments/chat/chat/completions?api-version=2024-10-21",
                self.base
            ))
            .header("api-key", CLIENT_KEY)
            .header("content-type", "application/json")
            .body(json!({"messages": [{"role": "user", "content": "hi"}]}).to_string())
            .send()
            .await?)
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn an_entra_endpoint_gets_fresh_bearer_tokens_and_never_an_expired_one() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lifetime = Duration::from_secs(3);
    let tokens = TokenMock::builder(TENANT)
        .client_secret(CLIENT_ID, CLIENT_SECRET)
        .token_lifetime(lifetime)
        .start()
        .await?;
    // The region's api-key is never sent; only a valid, unexpired mock-issued token passes.
    let eus = region("East US", "unused-api-key-0123456789", "gpt-4o").await?;
    let checker = tokens.clone();
    eus.set_bearer_check(move |token| {
        checker.check(token) == TokenCheck::Valid { audience: AUDIENCE.to_owned() }
    });
    let entra = Credential::Entra { scope: DEFAULT_ENTRA_SCOPE.to_owned() };
    let snapshot = snapshot(vec![endpoint("eus", &eus, "gpt-4o", entra)?]);
    let gw = run(&snapshot, Some(credential(&tokens)?)).await?;
    assert!(
        gw.entra.wait_ready(DEFAULT_ENTRA_SCOPE, READY).await,
        "a first token within {READY:?}"
    );

    let first = gw.chat().await?;
    assert_eq!(first.status(), 200, "{:?}", first.text().await);
    let seen = eus.requests();
    let auth = seen[0].header("authorization").expect("a bearer token is sent");
    let token = auth.strip_prefix("Bearer ").expect("Bearer scheme");
    assert!(tokens.issued().iter().any(|t| t.token == token), "the token is one the mock issued");
    assert_eq!(seen[0].header("api-key"), None, "no key in entra mode");

    // Over more than two lifetimes, every request carries a token the mock still holds valid.
    let until = Instant::now() + lifetime * 2 + Duration::from_millis(1500);
    while Instant::now() < until {
        let response = gw.chat().await?;
        let attempts = header(&response, "x-modelgw-attempts").to_owned();
        assert_eq!(response.status(), 200, "attempts {attempts}: {:?}", response.text().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent: HashSet<String> = eus
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert!(sent.len() >= 3, "tokens were refreshed while serving: {} distinct", sent.len());
    let mut issued = tokens.issued();
    issued.sort_by_key(|t| t.expires_at);
    assert!(issued.len() >= 3, "{} tokens issued", issued.len());
    for pair in issued.windows(2) {
        // Issued at `expires_at - lifetime`: the next token came before the previous expired.
        let gap = pair[1].expires_at.duration_since(pair[0].expires_at)?;
        assert!(
            gap < lifetime,
            "a refresh came {gap:?} after the previous token (lifetime {lifetime:?})"
        );
        assert_eq!(pair[1].audience, AUDIENCE);
    }
    gw.stop().await?;
    eus.shutdown();
    tokens.stop();
    Ok(())
}

#[tokio::test]
async fn without_an_entra_token_the_endpoint_is_unavailable_and_failover_continues() -> Result<()> {
    let entra_region = region("West US", "unused-api-key-0123456789", "gpt-4o-ptu").await?;
    let keyed = "keyed-region-api-key-0123456789";
    let keyed_region = region("East US", keyed, "gpt-4o").await?;
    let snapshot = snapshot(vec![
        endpoint(
            "ptu",
            &entra_region,
            "gpt-4o-ptu",
            Credential::Entra { scope: DEFAULT_ENTRA_SCOPE.to_owned() },
        )?,
        endpoint("paygo", &keyed_region, "gpt-4o", Credential::ApiKey(Secret::new(keyed)))?,
    ]);
    // No Azure credential configured: the entra endpoint never gets a token.
    let gw = run(&snapshot, None).await?;
    let response = gw.chat().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelgw-endpoint"), "paygo");
    let attempts = header(&response, "x-modelgw-attempts").to_owned();
    assert!(attempts.starts_with("ptu:no_credential:"), "{attempts}");
    assert!(entra_region.requests().is_empty(), "nothing is sent without a token");
    gw.stop().await?;
    entra_region.shutdown();
    keyed_region.shutdown();
    Ok(())
}
