//! Logs say what happened on the request path and never contain a credential, at any level.
//! Its own test binary: it installs the global tracing subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use modelgw_data_plane::routing_table::RoutingTable;
use modelgw_data_plane::{DataPlane, DataPlaneConfig};
use modelgw_mock_openai::{Fault, MockAzure, MockConfig};
use modelgw_model::{
    ConfigVersion, Credential, Endpoint, EndpointId, Gateway, GatewayId, GatewayKey, GatewayKeyId,
    GatewayMember, Platform, Secret, Snapshot, gateway_key_hash,
};
use tokio::sync::oneshot;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const CLIENT_KEY: &str = "mgw-client-key-that-must-not-leak";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn request_logs_name_endpoints_and_outcomes_but_never_a_key() -> Result<()> {
    // Everything at TRACE, and separately what an operator sees at the default INFO level.
    let (captured, at_info) = (Captured::default(), Captured::default());
    let (writer, info_writer) = (captured.clone(), at_info.clone());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(LevelFilter::TRACE),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || info_writer.clone())
                .with_filter(LevelFilter::INFO),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut regions = Vec::new();
    for (name, display) in [("eus", "East US"), ("swc", "Sweden Central")] {
        let key = format!("upstream-key-{name}-that-must-not-leak");
        let mock = MockAzure::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            MockConfig {
                region: display.into(),
                api_key: key.clone(),
                deployments: vec![format!("gpt-4o-{name}")],
                model: "gpt-4o-mini-2024-07-18".into(),
            },
        )
        .await?;
        regions.push((name, mock, key, EndpointId::new()));
    }
    // swc is configured with a wrong key, so it answers 401 (credential rejected).
    let endpoints = regions
        .iter()
        .map(|(name, mock, key, id)| -> Result<Endpoint> {
            let key = if *name == "swc" { format!("{key}-wrong") } else { key.clone() };
            Ok(Endpoint {
                id: *id,
                name: (*name).to_owned(),
                platform: Platform::AzureOpenai,
                base_url: url::Url::parse(&mock.base_url())?,
                deployment: format!("gpt-4o-{name}"),
                model_name: "gpt-4o-mini".into(),
                model_version: "2024-07-18".into(),
                region: mock.region().to_owned(),
                credential: Credential::ApiKey(Secret::new(key)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let snapshot = Snapshot {
        version: ConfigVersion(1),
        gateways: vec![Gateway {
            id: GatewayId::new(),
            name: "chat".into(),
            members: regions
                .iter()
                .enumerate()
                .map(|(i, (_, _, _, id))| GatewayMember {
                    endpoint_id: *id,
                    enabled: true,
                    priority: i as u32,
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
    };

    let dp = DataPlane::bind(DataPlaneConfig {
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        control_plane_url: String::new(),
        upstream_timeout: Duration::from_secs(5),
        allow_loopback_upstreams: true,
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", dp.local_addr());
    assert!(dp.snapshot_store().swap_if_newer(RoutingTable::compile(&snapshot)?));
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dp.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("{base}/openai/deployments/auto/chat/completions?api-version=2024-10-21");
    let body = r#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#;

    // 1: eus serves. 2: eus throttled → swc rejects our key (no endpoint left: the
    // gateway's own 503; the upstream's 401 is not passed on).
    // 3: a wrong client key. 4: the same with Bearer.
    let ok = http.post(&url).header("api-key", CLIENT_KEY).body(body).send().await?;
    assert_eq!(ok.status(), 200);
    regions[0].1.script("gpt-4o-eus", Fault::throttled(9, 1));
    let rejected = http
        .post(&url)
        .header("api-key", CLIENT_KEY)
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(body)
        .send()
        .await?;
    assert_eq!(rejected.status(), 503);
    let _ = rejected.bytes().await?;
    let wrong =
        http.post(&url).header("api-key", format!("{CLIENT_KEY}-x")).body(body).send().await?;
    assert_eq!(wrong.status(), 401);
    let bearer = http.post(&url).bearer_auth(format!("{CLIENT_KEY}-y")).body(body).send().await?;
    assert_eq!(bearer.status(), 401);

    let logs = {
        let bytes = captured.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    if std::env::var_os("MODELGW_PRINT_LOGS").is_some() {
        eprintln!("{logs}");
    }
    assert!(logs.contains("upstream attempt"), "attempts are logged");
    assert!(logs.contains("outcome=\"throttled\"") || logs.contains("outcome=throttled"), "{logs}");
    assert!(logs.contains("credential_rejected"), "{logs}");
    assert!(logs.contains("endpoint=eus") && logs.contains("endpoint=swc"), "{logs}");
    assert!(logs.contains("unknown gateway key"), "{logs}");
    for secret in [CLIENT_KEY, "upstream-key-eus", "upstream-key-swc", "must-not-leak"] {
        assert!(!logs.contains(secret), "a secret ({secret}) reached the logs");
    }

    // At INFO: one self-contained access line per request (request id, status, the endpoint
    // that answered and every attempt); a served attempt adds no line of its own, a failed one
    // names the request it belongs to (the request span is debug-level).
    let info = String::from_utf8_lossy(
        &at_info.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    // Values may be quoted or not, depending on the formatter: strip the quotes.
    let info = info.replace('"', "");
    let answered: Vec<&str> = info.lines().filter(|l| l.contains("request answered")).collect();
    assert_eq!(answered.len(), 4, "one access line per request:\n{info}");
    assert!(answered.iter().all(|l| l.contains("request_id=") && l.contains("status=")), "{info}");
    assert!(
        answered.iter().any(|l| l.contains("status=200")
            && l.contains("gateway=chat")
            && l.contains("endpoint=eus")
            && l.contains("attempts=eus:ok:")),
        "the served request names its endpoint and attempts:\n{info}"
    );
    assert!(
        answered.iter().any(|l| l.contains("status=503")
            && l.contains("attempts=eus:throttled:")
            && l.contains(",swc:credential_rejected:")),
        "the failed-over request lists both attempts:\n{info}"
    );
    let attempt_lines: Vec<&str> =
        info.lines().filter(|l| l.contains("upstream attempt")).collect();
    assert!(
        attempt_lines.iter().all(|l| !l.contains("outcome=ok")),
        "a served attempt is not logged again at info:\n{info}"
    );
    assert!(
        attempt_lines.iter().any(|l| l.contains("outcome=throttled") && l.contains("request_id=")),
        "a failed attempt names its request:\n{info}"
    );
    for secret in [CLIENT_KEY, "upstream-key-eus", "upstream-key-swc", "must-not-leak"] {
        assert!(!info.contains(secret), "a secret ({secret}) reached the info logs");
    }
    Ok(())
}
