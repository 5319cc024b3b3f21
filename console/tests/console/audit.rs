//! The audit log page: empty, an entry after a change (linked, with before/after), filters,
//! and paging with the API's cursor.

use http::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ADMIN_TOKEN, Console};

async fn endpoint(c: &Console, name: &str) -> String {
    let (status, body) = c
        .api(
            Method::POST,
            "/api/v1/inference-endpoints",
            Some(json!({
                "name": name,
                "platform": "azure_openai",
                "endpoint": "https://contoso.openai.azure.com/",
                "deployment": "gpt-4o",
                "model_name": "gpt-4o",
                "model_version": "2024-11-20",
                "region": "eastus",
                "auth": "entra",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_audit_log_shows_each_change_and_filters_it() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let empty = c.send(Method::GET, "/audit", Some(&cookie), None).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert!(empty.body.contains("<title>Audit Log"));
    assert!(empty.body.contains("No configuration changes yet"));
    assert!(!empty.body.contains(r#"id="audit-table""#));

    // A change through the console: the gateway form.
    let a = endpoint(&c, "eus").await;
    let new = c.send(Method::GET, "/gateways/new", Some(&cookie), None).await;
    let body = serde_urlencoded::to_string([
        ("_csrf", new.csrf().as_str()),
        ("name", "chat"),
        ("member", a.as_str()),
    ])
    .unwrap();
    let created = c.send(Method::POST, "/gateways", Some(&cookie), Some(&body)).await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    let gateway = created
        .header("location")
        .trim_start_matches("/gateways/")
        .split('?')
        .next()
        .unwrap()
        .to_owned();

    let log = c.send(Method::GET, "/audit", Some(&cookie), None).await;
    assert!(log.body.contains(r#"id="audit-table""#), "{}", log.body);
    // Newest first: the gateway before the endpoint.
    let gw_row = log.body.find(r#"data-entity="gateway""#).unwrap();
    let ep_row = log.body.find(r#"data-entity="inference_endpoint""#).unwrap();
    assert!(gw_row < ep_row);
    assert!(
        log.body.contains(&format!(r#"<a href="/gateways/{gateway}">chat</a>"#)),
        "linked while it exists"
    );
    assert!(log.body.contains("192.0.2.9"), "the browser's address");
    assert!(log.body.contains("<details"));
    assert!(log.body.contains("&quot;name&quot;: &quot;chat&quot;"), "the after JSON");
    for filter in [r#"id="filter-entity""#, r#"id="filter-actor""#, r#"id="filter-action""#] {
        assert!(log.body.contains(filter));
    }

    let only_endpoints =
        c.send(Method::GET, "/audit?entity=inference_endpoint", Some(&cookie), None).await;
    assert!(only_endpoints.body.contains(r#"data-entity="inference_endpoint""#));
    assert!(!only_endpoints.body.contains(r#"data-entity="gateway""#));
    assert!(only_endpoints.body.contains(r#"<option value="inference_endpoint" selected>"#));
    let by_someone_else =
        c.send(Method::GET, "/audit?actor=token%3Anobody", Some(&cookie), None).await;
    assert!(by_someone_else.body.contains("No entries match"));
    let deletes =
        c.send(Method::GET, "/audit?action=delete&actor=bootstrap", Some(&cookie), None).await;
    assert!(deletes.body.contains("No entries match"));
    let bad = c.send(Method::GET, "/audit?entity=nonsense", Some(&cookie), None).await;
    assert_eq!(bad.status, StatusCode::OK);
    assert!(bad.body.contains(r#"class="alert""#), "the API's reason: {}", bad.body);

    // Deleted: still in the log, no longer linked.
    c.api(Method::DELETE, &format!("/api/v1/gateways/{gateway}"), None).await;
    let log = c.send(Method::GET, "/audit?entity=gateway", Some(&cookie), None).await;
    assert!(!log.body.contains(&format!(r#"href="/gateways/{gateway}""#)));
    assert!(log.body.contains(r#"data-action="delete""#));

    // A viewer reads it too.
    let viewer = c.sign_in(&c.api_token("viewer").await).await;
    let as_viewer = c.send(Method::GET, "/audit", Some(&viewer), None).await;
    assert_eq!(as_viewer.status, StatusCode::OK);
    assert!(as_viewer.body.contains(r#"id="audit-table""#));
}

#[tokio::test]
async fn the_audit_log_pages_with_the_api_cursor() {
    let c = Console::start().await;
    for i in 0..55 {
        endpoint(&c, &format!("ep-{i:02}")).await;
    }
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let first = c.send(Method::GET, "/audit?entity=inference_endpoint", Some(&cookie), None).await;
    assert_eq!(first.body.matches("<tr data-action").count(), 50);
    assert!(first.body.contains(">ep-54<") && !first.body.contains(">ep-04<"));
    let re = regex::Regex::new(r#"id="older" rel="next" href="([^"]+)""#).unwrap();
    let next = re.captures(&first.body).expect("an older page")[1].replace("&amp;", "&");
    assert!(next.contains("entity=inference_endpoint") && next.contains("cursor="), "{next}");
    let second = c.send(Method::GET, &next, Some(&cookie), None).await;
    assert_eq!(second.body.matches("<tr data-action").count(), 5);
    assert!(second.body.contains(">ep-00<"));
    assert!(second.body.contains(r#"id="newest""#) && !second.body.contains(r#"id="older""#));
}
