//! `modelgw demo` — the README's first command — really gives a working gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use modelgw_e2e::metrics::Scrape;
use modelgw_e2e::{Admin, chat, init, spawn};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");

/// The demo gateway's name as README documents it (apps call it as their deployment).
const DOCUMENTED_GATEWAY: &str = "gpt-4o-mini";

/// The value after `label` on the first line of `text` that contains it, up to `end`.
fn after<'a>(text: &'a str, label: &str, end: char) -> &'a str {
    let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label}"));
    let rest = &line[line.find(label).expect("found") + label.len()..];
    rest.trim_start().split(end).next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_gateway_that_serves_a_chat_completion() -> anyhow::Result<()> {
    init();
    let mut demo = spawn(
        BIN.as_ref(),
        "demo",
        &[
            "demo",
            "--admin-addr",
            "127.0.0.1:0",
            "--gateway-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await?;
    let stdout = demo.stdout();
    // The gateway came from the Azure import flow against the mocked estate.
    assert!(stdout.contains("Azure discovery") && stdout.contains(": 3 deployments"), "{stdout}");
    assert!(stdout.contains("Imported as Inference Endpoints: 3 created"), "{stdout}");
    assert!(stdout.contains("created from the proposal"), "{stdout}");

    // What a newcomer copies from the human-readable part (not the machine-readable ready
    // line): the ready-to-paste curl, its URL and its key.
    let human = stdout.split("Model Gateway demo is ready.").nth(1).expect("the summary");
    let curl_url = after(human, "curl -sS '", '\'');
    let curl_key = after(human, "-H 'api-key: ", '\'');
    let printed_url = after(human, "Gateway URL", ' ');
    let deployment_path = format!("/openai/deployments/{DOCUMENTED_GATEWAY}/chat/completions?");
    assert!(curl_url.starts_with(&format!("{printed_url}{deployment_path}")), "{curl_url}");
    assert_eq!(after(human, "Gateway key", ' '), curl_key, "{human}");

    // The curl, as printed, gets a chat completion from an imported endpoint…
    let http = reqwest::Client::new();
    let send = |key: &str| {
        http.post(curl_url)
            .header("api-key", key)
            .header("content-type", "application/json")
            .body(r#"{"messages":[{"role":"user","content":"Hello!"}]}"#)
            .send()
    };
    let response = send(curl_key).await?;
    assert_eq!(response.status(), 200);
    let served_by =
        response.headers().get("x-modelgw-endpoint").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(served_by.starts_with("aoai-"), "served by an imported endpoint: {served_by}");
    let body: serde_json::Value = response.json().await?;
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("Hello from")),
        "{body}"
    );
    // …because of the key: another one is refused.
    let wrong = send("mgw-not-the-demo-key-0000000000").await?;
    assert_eq!(wrong.status(), 401);

    // The gateway is the documented one, as the admin API (with the printed token) lists it.
    let token = after(human, "Admin token", ' ');
    let admin = Admin::new(after(human, "Admin API", ' ').trim_end_matches("/api/v1"), token);
    let (status, gateways) = admin.call("GET", "/api/v1/gateways", None).await?;
    assert_eq!(status, 200, "{gateways}");
    let names: Vec<&str> =
        gateways.as_array().expect("a list").iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, [DOCUMENTED_GATEWAY]);

    // The Admin Console, as printed: signing in with the printed token shows the demo's gateway.
    let console = after(human, "Admin Console", ' ');
    assert_eq!(console, format!("{}/", demo.field("admin")), "{human}");
    let no_redirects =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let signed_in = no_redirects
        .post(format!("{console}sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await?;
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let overview = no_redirects.get(console).header("cookie", cookie).send().await?;
    assert_eq!(overview.status(), 200);
    let page = overview.text().await?;
    assert!(page.contains(&format!(">{DOCUMENTED_GATEWAY}</a>")), "{page}");

    // The same through the ready line's fields (the harness's way of reading them).
    let (status, _, body) =
        chat(demo.field("gateway"), demo.field("gateway_key"), DOCUMENTED_GATEWAY).await?;
    assert_eq!(status, 200, "{body}");

    // The control plane's metrics, as printed: the version the admin API reports.
    let metrics = after(human, "CP metrics", ' ');
    assert_eq!(metrics, demo.field("control_plane_metrics"), "{human}");
    let scrape = Scrape::get(metrics).await?;
    let version = admin.config_version().await? as f64;
    assert_eq!(scrape.value("modelgw_config_version", &[]), Some(version), "{}", scrape.text);
    assert_eq!(scrape.value("modelgw_connected_data_planes", &[]), Some(1.0), "{}", scrape.text);
    demo.stop().await;
    Ok(())
}
