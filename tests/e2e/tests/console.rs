//! The Admin Console in a real headless Chromium (issue 12's acceptance list), over real
//! processes: a control plane (with the console, the Gateway URL and the Azure import settings),
//! a data plane on the Gateway URL's port, and `modelgw mock-azure` regions; the mock Azure
//! Resource Manager and the managed-identity token endpoint the import uses run in this test's
//! process. Each test has its own cluster and browser session (1280×900) and leaves screenshots
//! of the pages it visits in `<target>/console-screenshots/`.
//!
//! The tests find things by the element ids the console brief fixes (`#ep-state-<id>`,
//! `#error-endpoint`, `table#deployments-table`, `#new-key`, `#answer` …).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::path::PathBuf;
use std::time::{Duration, Instant};

use modelgw_e2e::browser::{Browser, free_port, screenshot_dir};
use modelgw_e2e::{Admin, Cluster, Fault, chat};
use modelgw_mock_arm::{Account, ArmAuth, ArmMock, Deployment, Inventory, Subscription, TokenMock};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");
const SUBSCRIPTION: &str = "6d1f3c2a-0000-4000-8000-0000000c0a5e";
const TENANT: &str = "7a4e9b10-0000-4000-8000-0000000c0a5e";
const IDENTITY_HEADER: &str = "console-test-identity-header";
/// The mock's reply, word by word (see `modelgw_mock_openai::wire::reply_text`).
const REPLY_WORDS: usize = 9;
/// How soon a badge must follow what a data plane saw (issue 12).
const BADGE_BUDGET: Duration = Duration::from_secs(2);
/// The throttle window the scenarios script: short, so recovery is quick.
const RETRY_AFTER_SECS: u64 = 3;

/// One console under test: the cluster, the mock Azure estate, and where screenshots go.
struct Console {
    cluster: Cluster,
    /// The data plane, at the control plane's `MODELGW_GATEWAY_URL`.
    gateway_url: String,
    shots: PathBuf,
    _arm: ArmMock,
    _tokens: TokenMock,
}

impl Console {
    /// Two regions (East US, West Europe) that ARM lists as accounts of one subscription, with
    /// a third account (Japan East) that is never imported; a control plane that discovers
    /// them with a managed identity; one data plane.
    async fn start() -> anyhow::Result<Console> {
        let mut cluster = Cluster::new(BIN)?;
        let mut subscription = Subscription::new(SUBSCRIPTION, "Console tests");
        for (display, location) in [("East US", "eastus"), ("West Europe", "westeurope")] {
            let account =
                Account::new("rg-console", format!("aoai-{location}"), "AIServices", location);
            let i = cluster.start_region_with_key(display, &account.key1).await?;
            subscription = subscription.account(
                account.with_endpoint(cluster.regions[i].url()).deployment(
                    Deployment::new("gpt-4o-mini", "gpt-4o-mini", "2024-07-18")
                        .sku("GlobalStandard", 100),
                ),
            );
        }
        subscription = subscription.account(
            Account::new("rg-console", "aoai-japaneast", "AIServices", "japaneast")
                .deployment(Deployment::new("gpt-4o", "gpt-4o", "2024-11-20").sku("Standard", 10)),
        );
        let tokens = TokenMock::builder(TENANT).managed_identity(IDENTITY_HEADER).start().await?;
        let arm = ArmMock::builder(
            Inventory::new().subscription(subscription),
            ArmAuth::TokensFrom(tokens.clone()),
        )
        .start()
        .await?;
        let gateway_addr = format!("127.0.0.1:{}", free_port()?);
        let gateway_url = format!("http://{gateway_addr}");
        cluster.control_plane_env = vec![
            ("MODELGW_GATEWAY_URL", gateway_url.clone()),
            ("MODELGW_AZURE_CREDENTIAL", "managed_identity".into()),
            ("IDENTITY_ENDPOINT", tokens.msi_endpoint()),
            ("IDENTITY_HEADER", IDENTITY_HEADER.into()),
            ("MODELGW_ARM_ENDPOINT", arm.base_url()),
        ];
        cluster.start_control_plane().await?;
        cluster.start_data_plane_at("dp-0", &gateway_addr).await?;
        Ok(Console {
            cluster,
            gateway_url,
            shots: screenshot_dir(BIN.as_ref()),
            _arm: arm,
            _tokens: tokens,
        })
    }

    fn admin(&self) -> Admin {
        self.cluster.admin()
    }

    fn base(&self) -> String {
        format!("http://{}", self.cluster.admin_addr)
    }

    /// A browser signed in with the bootstrap admin token.
    async fn browser(&self) -> anyhow::Result<Browser> {
        let b = Browser::start(&self.base()).await?;
        b.sign_in(&self.cluster.admin_token).await?;
        Ok(b)
    }

    /// Both regions as endpoints (through the JSON API), and a gateway `name` over them.
    async fn gateway(&self, name: &str) -> anyhow::Result<(String, Vec<String>)> {
        let admin = self.admin();
        let mut ids = Vec::new();
        for r in &self.cluster.regions {
            ids.push(admin.create_endpoint(&r.name, r).await?);
        }
        let gw = admin.create_gateway(name, &ids).await?;
        Ok((gw, ids))
    }

    /// Until the data plane applied the current configuration.
    async fn applied(&self) -> anyhow::Result<()> {
        let admin = self.admin();
        let version = admin.config_version().await?;
        admin.wait_for_applied(&["dp-0"], version, Duration::from_secs(10)).await?;
        Ok(())
    }

    async fn endpoints(&self) -> anyhow::Result<Vec<Value>> {
        let (status, list) = self.admin().call("GET", "/api/v1/inference-endpoints", None).await?;
        anyhow::ensure!(status == 200, "{list}");
        Ok(list.as_array().cloned().unwrap_or_default())
    }
}

/// The first `mgw_…` token in `text`.
fn gateway_key_in(text: &str) -> Option<String> {
    let at = text.find("mgw_")?;
    Some(
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect(),
    )
}

/// Checks `input[name=ids]` boxes of the deployments table so that exactly the rows whose text
/// contains one of `wanted` are selected.
const SELECT_ROWS: &str = r#"
    const wanted = arguments[0];
    for (const row of document.querySelectorAll('#deployments-table tbody tr[data-deployment]')) {
        const box = row.querySelector('input[type=checkbox][name=ids]');
        if (!box || box.disabled) continue;
        const want = wanted.some(w => row.textContent.includes(w));
        if (box.checked !== want) box.click();
    }
    return true;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoint_url_is_shown_next_to_its_field_and_nothing_is_saved_until_fixed()
-> anyhow::Result<()> {
    let c = Console::start().await?;
    let b = c.browser().await?;
    let region = &c.cluster.regions[0];
    b.goto("/endpoints").await?;
    b.click("#new-endpoint").await?;
    b.wait_for("the endpoint form", "return location.pathname === '/endpoints/new'").await?;
    let fill = |url: String| {
        let b = &b;
        async move {
            b.fill("#name", "eus-by-hand").await?;
            b.select("#platform", "azure_openai").await?;
            b.fill("#endpoint", &url).await?;
            b.fill("#deployment", "gpt-4o-mini").await?;
            b.fill("#model_name", "gpt-4o-mini").await?;
            b.fill("#model_version", "2024-07-18").await?;
            b.fill("#region", "East US").await?;
            b.select("#auth", "api_key").await?;
            b.fill("#api_key", &region.key).await?;
            b.click("#save").await
        }
    };
    fill("not a url".to_owned()).await?;
    b.wait_css("#error-endpoint").await?;
    assert!(!b.text("#error-endpoint").await?.trim().is_empty());
    let invalid = b.find("#endpoint").await?.attr("aria-invalid").await?;
    assert_eq!(invalid.as_deref(), Some("true"));
    // What was typed is kept, except the secret.
    assert_eq!(b.find("#name").await?.prop("value").await?.as_deref(), Some("eus-by-hand"));
    assert_eq!(b.find("#api_key").await?.prop("value").await?.as_deref(), Some(""));
    b.screenshot(&c.shots, "endpoint-form-error").await?;
    assert!(c.endpoints().await?.is_empty(), "nothing saved");

    fill(region.url().to_owned()).await?;
    b.wait_for(
        "the saved endpoint",
        "return /^\\/endpoints\\/[^/]+$/.test(location.pathname) && location.search.includes('saved=1')",
    )
    .await?;
    assert_eq!(b.text("h1").await?.trim(), "eus-by-hand");
    assert!(b.exists(".success").await?);
    let saved = c.endpoints().await?;
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(saved[0]["endpoint"].as_str().map(|u| u.trim_end_matches('/')), Some(region.url()));
    b.screenshot(&c.shots, "endpoint-detail").await?;
    let id = saved[0]["id"].as_str().unwrap();
    b.goto("/endpoints").await?;
    b.wait_css(&format!("#endpoints-table tr[data-endpoint='{id}']")).await?;
    b.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_shows_progress_imports_the_chosen_deployments_and_knows_them_the_second_time()
-> anyhow::Result<()> {
    let c = Console::start().await?;
    let b = c.browser().await?;
    b.goto("/import").await?;
    b.click("#start-discovery").await?;
    b.wait_css("#discovery-progress").await?;
    b.wait_for(
        "three deployments found",
        "return document.querySelectorAll('#deployments-table tr[data-deployment]').length === 3",
    )
    .await?;
    b.js_with(SELECT_ROWS, vec![json!(["eastus", "westeurope"])]).await?;
    b.select("#auth", "api_key").await?;
    b.screenshot(&c.shots, "import").await?;
    b.click("#import").await?;
    b.wait_css("#import-result").await?;
    assert!(b.text("#import-result").await?.contains('2'), "{}", b.text("#import-result").await?);
    b.screenshot(&c.shots, "import-result").await?;
    let endpoints = c.endpoints().await?;
    let mut names: Vec<&str> = endpoints.iter().filter_map(|e| e["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].contains("eastus") && names[1].contains("westeurope"), "{names:?}");
    b.goto("/endpoints").await?;
    b.wait_for(
        "two endpoints",
        "return document.querySelectorAll('#endpoints-table tr[data-endpoint]').length === 2",
    )
    .await?;

    // Again: the two are known, marked and not pre-selected; Japan East is still new.
    b.goto("/import").await?;
    b.click("#start-discovery").await?;
    b.wait_for(
        "three deployments found again",
        "return document.querySelectorAll('#deployments-table tr[data-deployment]').length === 3",
    )
    .await?;
    let rows = b
        .js(r#"return [...document.querySelectorAll('#deployments-table tr[data-deployment]')].map(r => ({
            text: r.textContent, imported: r.classList.contains('imported'),
            checked: !!(r.querySelector('input[name=ids]') || {}).checked }));"#)
        .await?;
    for row in rows.as_array().unwrap() {
        let text = row["text"].as_str().unwrap();
        let known = text.contains("eastus") || text.contains("westeurope");
        assert_eq!(row["imported"], json!(known), "{row}");
        assert_eq!(text.contains("Already imported"), known, "{row}");
        if known {
            assert_eq!(row["checked"], json!(false), "{row}");
        }
    }
    b.screenshot(&c.shots, "import-again").await?;
    b.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_key_made_in_the_console_serve_a_chat_and_the_key_is_shown_once()
-> anyhow::Result<()> {
    let c = Console::start().await?;
    let admin = c.admin();
    let mut ids = Vec::new();
    for r in &c.cluster.regions {
        ids.push(admin.create_endpoint(&r.name, r).await?);
    }
    let b = c.browser().await?;
    b.goto("/gateways").await?;
    b.click("#new-gateway").await?;
    b.fill("#name", "support-bot").await?;
    for id in &ids {
        let css = format!("input[name=member][value='{id}']");
        if !b.wait_css(&css).await?.is_selected().await? {
            b.click(&css).await?;
        }
    }
    b.screenshot(&c.shots, "gateway-form").await?;
    b.click("#save").await?;
    b.wait_for(
        "the new gateway's page",
        "return /^\\/gateways\\/[^/]+$/.test(location.pathname) && !location.pathname.endsWith('/new')",
    )
    .await?;
    assert_eq!(b.text("h1").await?.trim(), "support-bot");
    let path = b.path().await?;
    let gateway_id = path.trim_start_matches("/gateways/").split('?').next().unwrap().to_owned();
    assert!(b.text("#gateway-url").await?.contains(&c.gateway_url));

    b.fill("#key-name", "ci").await?;
    b.click("#create-key").await?;
    b.wait_css("#new-key").await?;
    let shown = b
        .js("var e = document.getElementById('new-key'); return (e.value || '') + ' ' + e.textContent;")
        .await?;
    let key = gateway_key_in(shown.as_str().unwrap()).expect("the new key is shown");
    b.screenshot(&c.shots, "gateway-new-key").await?;

    // Shown once: on the next visit only its hint.
    b.goto(&format!("/gateways/{gateway_id}")).await?;
    b.wait_css("#keys-table tr[data-key]").await?;
    assert!(!b.exists("#new-key").await?);
    let page = b.js("return document.documentElement.outerHTML").await?;
    let page = page.as_str().unwrap();
    assert!(!page.contains(&key), "the key is not shown again");
    assert!(page.contains(&key[key.len() - 4..]), "its hint is");
    b.screenshot(&c.shots, "gateway-detail").await?;

    c.applied().await?;
    let (status, headers, body) = chat(&c.gateway_url, &key, "support-bot").await?;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("x-modelgw-endpoint"));

    for (path, table, shot) in [
        ("/gateways", "#gateways-table", "gateways"),
        ("/data-planes", "#data-planes-table", "data-planes"),
        ("/audit", "#audit-table", "audit"),
    ] {
        b.goto(path).await?;
        b.wait_css(table).await?;
        b.screenshot(&c.shots, shot).await?;
    }
    b.close().await;
    Ok(())
}

/// Chats through the data plane until one answer's attempts name a throttled endpoint (or
/// the client itself gets the 429); returns when that was seen.
async fn traffic_until_throttled(c: &Console, key: &str, client_429: bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, headers, body) = chat(&c.gateway_url, key, "gpt-4o-mini").await.expect("chat");
        let attempts =
            headers.get("x-modelgw-attempts").and_then(|v| v.to_str().ok()).unwrap_or("");
        let seen = if client_429 { status == 429 } else { attempts.contains("throttled") };
        if seen {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "no 429 seen: {status} {attempts} {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badges_follow_throttling_live_and_return_to_healthy() -> anyhow::Result<()> {
    let c = Console::start().await?;
    let (gateway, ids) = c.gateway("gpt-4o-mini").await?;
    let key = c.admin().create_key(&gateway).await?;
    c.applied().await?;
    let b = c.browser().await?;
    let badge = |id: &str, state: &str| {
        format!("return !!document.querySelector(\"#{id} .badge[data-state='{state}']\")")
    };
    let (east, west) = (&ids[0], &ids[1]);

    // One region throttles: its badge on the open list turns within 2 s, without a reload.
    b.goto("/endpoints").await?;
    b.wait_css(&format!("#ep-state-{east} .badge")).await?;
    b.js("window.__marker = 1; return true;").await?;
    c.cluster.regions[0].script(Fault::throttled(RETRY_AFTER_SECS, u32::MAX));
    let seen = traffic_until_throttled(&c, &key, false).await;
    b.wait_within(
        "East US throttling",
        &badge(&format!("ep-state-{east}"), "throttling"),
        BADGE_BUDGET.saturating_sub(seen.elapsed()),
    )
    .await?;
    assert_eq!(b.js("return window.__marker === 1").await?, json!(true), "the page was reloaded");
    b.screenshot(&c.shots, "endpoints-throttling").await?;

    // Every member throttles: the gateway does too.
    b.goto("/gateways").await?;
    b.wait_css(&format!("#gw-state-{gateway} .badge")).await?;
    b.js("window.__marker = 1; return true;").await?;
    c.cluster.regions[1].script(Fault::throttled(RETRY_AFTER_SECS, u32::MAX));
    let seen = traffic_until_throttled(&c, &key, true).await;
    b.wait_within(
        "the gateway throttling",
        &badge(&format!("gw-state-{gateway}"), "throttling"),
        BADGE_BUDGET.saturating_sub(seen.elapsed()),
    )
    .await?;
    assert_eq!(b.js("return window.__marker === 1").await?, json!(true), "the page was reloaded");
    b.screenshot(&c.shots, "gateways-throttling").await?;

    // Recovery: no more 429s, and the windows pass.
    for r in &c.cluster.regions {
        r.reset();
    }
    let recovery = Duration::from_secs(RETRY_AFTER_SECS) + Duration::from_secs(5);
    b.wait_within(
        "the gateway healthy",
        &badge(&format!("gw-state-{gateway}"), "healthy"),
        recovery,
    )
    .await?;
    b.goto("/endpoints").await?;
    for id in [east, west] {
        b.wait_within("endpoints healthy", &badge(&format!("ep-state-{id}"), "healthy"), recovery)
            .await?;
    }
    b.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_streams_the_answer_token_by_token_and_revokes_its_key() -> anyhow::Result<()>
{
    let c = Console::start().await?;
    let (gateway, _) = c.gateway("gpt-4o-mini").await?;
    c.applied().await?;
    for r in &c.cluster.regions {
        // About 3 s for the whole answer: the first words must show long before the last.
        r.set_stream_gap(Duration::from_millis(300));
    }
    let b = Browser::start(&c.base()).await?;
    b.goto("/sign-in").await?;
    b.wait_css("#token").await?;
    b.screenshot(&c.shots, "sign-in").await?;
    b.sign_in(&c.cluster.admin_token).await?;
    b.screenshot(&c.shots, "overview").await?;

    b.goto("/playground").await?;
    b.select("#gateway", &gateway).await?;
    let prompt = "Tell me about the gateway in one sentence";
    b.fill("#prompt", prompt).await?;
    b.click("#send").await?;
    b.wait_css("#answer span").await?;
    let first = b.js("return document.querySelectorAll('#answer span').length").await?;
    let status = b.text("#chat-status").await?;
    assert!(
        first.as_u64().unwrap() < REPLY_WORDS as u64,
        "the first token shows before the last: {first}"
    );
    assert!(!status.starts_with("Done"), "{status}");
    b.screenshot(&c.shots, "playground-streaming").await?;

    b.wait_for(
        "the answer's end",
        "return document.getElementById('chat-status').textContent.startsWith('Done')",
    )
    .await?;
    let answer = b.text("#answer").await?;
    assert!(
        answer.starts_with("Hello from ") && answer.ends_with("This is a mock reply."),
        "{answer}"
    );
    let served_by = b.text("#served-by").await?;
    assert!(c.cluster.regions.iter().any(|r| r.name == served_by), "{served_by}");
    assert!(b.text("#attempts").await?.contains(&format!("{served_by}:ok")));
    b.screenshot(&c.shots, "playground").await?;

    // The chat's key was made as the operator and is revoked now.
    let (_, keys) =
        c.admin().call("GET", &format!("/api/v1/gateways/{gateway}/keys"), None).await?;
    let keys = keys.as_array().cloned().unwrap_or_default();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["name"], "console-playground (bootstrap)");
    assert!(keys[0]["revoked_at"].is_string(), "{keys:?}");
    // The prompt is not logged anywhere.
    assert!(!c.cluster.all_logs().contains(prompt));
    b.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_gets_no_controls_and_forged_or_tokenless_posts_are_refused() -> anyhow::Result<()>
{
    let c = Console::start().await?;
    let (status, token) = c
        .admin()
        .call("POST", "/api/v1/api-tokens", Some(json!({"name": "auditor", "role": "viewer"})))
        .await?;
    assert_eq!(status, 201, "{token}");
    let viewer = token["token"].as_str().unwrap().to_owned();
    let (gateway, _) = c.gateway("gpt-4o-mini").await?;

    let b = Browser::start(&c.base()).await?;
    b.sign_in(&viewer).await?;
    for href in ["/import", "/playground"] {
        assert!(
            !b.exists(&format!("nav.sidebar a[href='{href}']")).await?,
            "{href} offered to a viewer"
        );
    }
    b.goto("/endpoints").await?;
    b.wait_css("#endpoints-table").await?;
    assert!(!b.exists("#new-endpoint").await?);
    b.goto("/gateways").await?;
    b.wait_css("#gateways-table").await?;
    assert!(!b.exists("#new-gateway").await?);
    b.goto(&format!("/gateways/{gateway}")).await?;
    b.wait_css("h1").await?;
    assert!(!b.exists("#create-key").await? && !b.exists("button.revoke-key").await?);

    // A forged POST from the viewer's own session, with its CSRF token: the API refuses it.
    let post = r#"
        const [path, body, withToken] = arguments;
        const headers = {'content-type': 'application/x-www-form-urlencoded'};
        if (withToken) headers['x-csrf-token'] = document.querySelector('meta[name=csrf-token]').content;
        return fetch(path, {method: 'POST', headers, body, redirect: 'manual'})
            .then(r => r.text().then(t => ({status: r.status, text: t})));
    "#;
    let before = c.endpoints().await?.len();
    let forged = b
        .js_with(
            post,
            vec![
                json!("/playground/chats"),
                json!(format!("gateway={gateway}&prompt=hi")),
                json!(true),
            ],
        )
        .await?;
    assert_eq!(forged["status"], 403, "{forged}");
    let endpoint = format!(
        "name=forged&platform=azure_openai&endpoint={}&deployment=d&model_name=m&model_version=v&region=r&auth=api_key&api_key=k",
        c.cluster.regions[0].url()
    );
    let forged =
        b.js_with(post, vec![json!("/endpoints/new"), json!(endpoint), json!(true)]).await?;
    assert_eq!(forged["status"], 403, "{forged}");
    let forged = b
        .js_with(
            post,
            vec![json!(format!("/gateways/{gateway}/keys")), json!("name=forged"), json!(true)],
        )
        .await?;
    assert_eq!(forged["status"], 403, "{forged}");
    assert_eq!(c.endpoints().await?.len(), before, "nothing was saved");
    let (_, keys) =
        c.admin().call("GET", &format!("/api/v1/gateways/{gateway}/keys"), None).await?;
    assert_eq!(keys, json!([]), "no key was made");

    // An operator's form post without the CSRF token: refused, nothing happens.
    b.click("header.topbar form[action='/sign-out'] button").await?;
    b.wait_css("#token").await?;
    b.sign_in(&c.cluster.admin_token).await?;
    let tokenless = b
        .js_with(
            post,
            vec![
                json!("/playground/chats"),
                json!(format!("gateway={gateway}&prompt=hi")),
                json!(false),
            ],
        )
        .await?;
    assert_eq!(tokenless["status"], 403, "{tokenless}");
    assert!(tokenless["text"].as_str().unwrap().contains("Request refused"), "{tokenless}");
    let tokenless =
        b.js_with(post, vec![json!("/endpoints/new"), json!(endpoint), json!(false)]).await?;
    assert_eq!(tokenless["status"], 403, "{tokenless}");
    assert_eq!(c.endpoints().await?.len(), before, "nothing was saved");
    b.close().await;
    Ok(())
}
