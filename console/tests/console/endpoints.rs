//! Inference endpoint detail, create, edit, delete and health reset, through the console's forms
//! and checked through the JSON API.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Console, Page};

const KEY: &str = "sk-console-test-key-0123456789abcd";

/// A form body from pairs, percent-encoded.
fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

fn endpoint_form<'a>(csrf: &'a str, endpoint: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("_csrf", csrf),
        ("name", "gpt-4o-eastus"),
        ("platform", "azure_openai"),
        ("endpoint", endpoint),
        ("deployment", "gpt-4o"),
        ("model_name", "gpt-4o"),
        ("model_version", "2024-11-20"),
        ("region", "eastus"),
        ("auth", "api_key"),
        ("api_key", KEY),
    ]
}

async fn endpoints(c: &Console) -> Vec<Value> {
    let (status, list) = c.api(Method::GET, "/api/v1/inference-endpoints", None).await;
    assert_eq!(status, StatusCode::OK);
    list.as_array().unwrap().clone()
}

/// An endpoint made through the API; its id.
async fn create_endpoint(c: &Console, name: &str) -> String {
    let (status, e) = c
        .api(
            Method::POST,
            "/api/v1/inference-endpoints",
            Some(json!({
                "name": name, "platform": "azure_openai",
                "endpoint": "https://contoso-eastus.openai.azure.com", "deployment": "gpt-4o",
                "model_name": "gpt-4o", "model_version": "2024-11-20", "region": "eastus",
                "api_key": KEY,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{e}");
    e["id"].as_str().unwrap().to_owned()
}

async fn get(c: &Console, path: &str, cookie: &str) -> Page {
    let page = c.send(Method::GET, path, Some(cookie), None).await;
    assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
    page
}

#[tokio::test]
async fn a_bad_url_is_shown_next_to_its_field_and_nothing_is_saved_until_it_is_fixed() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let new = get(&c, "/endpoints/new", &cookie).await;
    assert!(new.body.contains(r#"id="endpoint""#) && new.body.contains(r#"id="save""#));
    assert!(new.body.contains("exact"), "the version hint says it must be exact");
    let csrf = new.csrf();

    let bad = c
        .send(
            Method::POST,
            "/endpoints/new",
            Some(&cookie),
            Some(&form(&endpoint_form(&csrf, "not a url"))),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    let error =
        regex::Regex::new(r#"<p class="field-error" id="error-endpoint" role="alert">[^<]+</p>"#)
            .unwrap();
    assert!(error.is_match(&bad.body), "the error is under the URL field: {}", bad.body);
    assert!(bad.body.contains(r#"aria-describedby="error-endpoint""#));
    assert!(bad.body.contains(r#"value="gpt-4o-eastus""#), "what was typed is kept");
    assert!(!bad.body.contains(KEY), "the key is never shown back");
    assert!(endpoints(&c).await.is_empty(), "nothing saved");

    let good = c
        .send(
            Method::POST,
            "/endpoints/new",
            Some(&cookie),
            Some(&form(&endpoint_form(&csrf, "https://contoso-eastus.openai.azure.com"))),
        )
        .await;
    assert_eq!(good.status, StatusCode::SEE_OTHER, "{}", good.body);
    let saved = endpoints(&c).await;
    assert_eq!(saved.len(), 1);
    let id = saved[0]["id"].as_str().unwrap();
    assert_eq!(good.header("location"), format!("/endpoints/{id}?saved=1"));

    let detail = get(&c, good.header("location"), &cookie).await;
    assert!(detail.body.contains("<h1>gpt-4o-eastus</h1>"), "{}", detail.body);
    assert!(detail.body.contains(r#"class="success""#) && detail.body.contains("Saved"));
    assert!(detail.body.contains(&format!(r#"id="ep-state-{id}""#)));
    assert!(detail.body.contains(r#"id="endpoint-data-planes""#));
    assert!(detail.body.contains("…abcd"), "the key's hint");
    assert!(!detail.body.contains(KEY));
    let list = get(&c, "/endpoints", &cookie).await;
    assert!(list.body.contains(&format!(r#"data-endpoint="{id}""#)));
}

#[tokio::test]
async fn editing_keeps_the_key_when_left_empty_and_rotates_it_when_typed() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let id = create_endpoint(&c, "eus").await;
    let edit = get(&c, &format!("/endpoints/{id}/edit"), &cookie).await;
    assert!(edit.body.contains(r#"value="eus""#));
    assert!(edit.body.contains("…abcd"), "the key's hint is shown");
    assert!(!edit.body.contains(KEY));
    let csrf = edit.csrf();
    let mut fields = endpoint_form(&csrf, "https://contoso-westus.openai.azure.com");
    fields.retain(|(k, _)| *k != "api_key");
    fields.push(("api_key", ""));
    let saved = c
        .send(Method::POST, &format!("/endpoints/{id}/edit"), Some(&cookie), Some(&form(&fields)))
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(saved.header("location"), format!("/endpoints/{id}?saved=1"));
    let (_, e) = c.api(Method::GET, &format!("/api/v1/inference-endpoints/{id}"), None).await;
    assert_eq!(e["name"], "gpt-4o-eastus");
    assert_eq!(e["endpoint"], "https://contoso-westus.openai.azure.com");
    assert_eq!(e["auth"], "api_key");
    assert_eq!(e["api_key_hint"], "…abcd", "the key is kept");
    // The audit log says the key was not set.
    let (_, log) = c.api(Method::GET, "/api/v1/audit-log", None).await;
    let last = &log["entries"][0];
    assert_eq!(last["action"], "update", "{last}");

    // A new key rotates it.
    let mut fields = endpoint_form(&csrf, "https://contoso-westus.openai.azure.com");
    fields.retain(|(k, _)| *k != "api_key");
    fields.push(("api_key", "sk-rotated-key-000000000000wxyz"));
    let rotated = c
        .send(Method::POST, &format!("/endpoints/{id}/edit"), Some(&cookie), Some(&form(&fields)))
        .await;
    assert_eq!(rotated.status, StatusCode::SEE_OTHER, "{}", rotated.body);
    let (_, e) = c.api(Method::GET, &format!("/api/v1/inference-endpoints/{id}"), None).await;
    assert_eq!(e["api_key_hint"], "…wxyz");

    // An untouched form changes nothing (no version bump, no audit entry).
    let (_, before) = c.api(Method::GET, "/api/v1/status", None).await;
    let mut fields = endpoint_form(&csrf, "https://contoso-westus.openai.azure.com");
    fields.retain(|(k, _)| *k != "api_key");
    let idle = c
        .send(Method::POST, &format!("/endpoints/{id}/edit"), Some(&cookie), Some(&form(&fields)))
        .await;
    assert_eq!(idle.header("location"), format!("/endpoints/{id}?unchanged=1"));
    let (_, after) = c.api(Method::GET, "/api/v1/status", None).await;
    assert_eq!(before["config_version"], after["config_version"]);

    // A refused edit re-renders with the reason next to the field, and saves nothing.
    let mut fields = endpoint_form(&csrf, "https://contoso-westus.openai.azure.com");
    fields.retain(|(k, _)| *k != "api_key" && *k != "model_version");
    fields.push(("model_version", "  "));
    let refused = c
        .send(Method::POST, &format!("/endpoints/{id}/edit"), Some(&cookie), Some(&form(&fields)))
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    assert!(refused.body.contains(r#"id="error-model_version""#), "{}", refused.body);
    let (_, e) = c.api(Method::GET, &format!("/api/v1/inference-endpoints/{id}"), None).await;
    assert_eq!(e["model_version"], "2024-11-20");
}

#[tokio::test]
async fn deleting_an_endpoint_in_use_names_the_gateways_and_force_deletes_it() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let id = create_endpoint(&c, "eus").await;
    let (status, gw) = c
        .api(
            Method::POST,
            "/api/v1/gateways",
            Some(json!({"name": "chat", "endpoints": [{"endpoint_id": id}]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{gw}");
    let detail = get(&c, &format!("/endpoints/{id}"), &cookie).await;
    assert!(detail.body.contains(r#"id="delete-endpoint""#));
    assert!(detail.body.contains("data-confirm="), "delete asks first");
    let csrf = detail.csrf();

    let refused = c
        .send(
            Method::POST,
            &format!("/endpoints/{id}/delete"),
            Some(&cookie),
            Some(&form(&[("_csrf", &csrf)])),
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(refused.body.contains(&format!(r#"href="/gateways/{}""#, gw["id"].as_str().unwrap())));
    assert!(refused.body.contains(">chat<"));
    assert!(refused.body.contains(r#"id="force-delete""#));
    assert_eq!(endpoints(&c).await.len(), 1, "not deleted");

    let forced = c
        .send(
            Method::POST,
            &format!("/endpoints/{id}/delete"),
            Some(&cookie),
            Some(&form(&[("_csrf", &csrf), ("force", "true")])),
        )
        .await;
    assert_eq!(forced.status, StatusCode::SEE_OTHER, "{}", forced.body);
    assert_eq!(forced.header("location"), "/endpoints?deleted=eus");
    assert!(endpoints(&c).await.is_empty());
    let (_, gw) =
        c.api(Method::GET, &format!("/api/v1/gateways/{}", gw["id"].as_str().unwrap()), None).await;
    assert!(gw["endpoints"].as_array().unwrap().is_empty(), "removed from the gateway: {gw}");
    let list = get(&c, "/endpoints?deleted=eus", &cookie).await;
    assert!(list.body.contains("Deleted “eus”"));
}

#[tokio::test]
async fn reset_health_calls_the_api_and_is_audited() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let id = create_endpoint(&c, "eus").await;
    let csrf = get(&c, &format!("/endpoints/{id}"), &cookie).await.csrf();
    let reset = c
        .send(
            Method::POST,
            &format!("/endpoints/{id}/reset-health"),
            Some(&cookie),
            Some(&form(&[("_csrf", &csrf)])),
        )
        .await;
    assert_eq!(reset.status, StatusCode::SEE_OTHER, "{}", reset.body);
    assert_eq!(reset.header("location"), format!("/endpoints/{id}?reset=1"));
    let (_, log) = c.api(Method::GET, "/api/v1/audit-log", None).await;
    let entry = &log["entries"][0];
    assert_eq!(entry["action"], "reset_health", "{log}");
    assert_eq!(entry["entity_id"], id.as_str());
    assert_eq!(entry["actor"], "bootstrap", "{entry}");
    let page = get(&c, reset.header("location"), &cookie).await;
    assert!(page.body.contains("Health reset"));
}

#[tokio::test]
async fn a_viewer_gets_no_controls_and_a_forged_create_is_refused() {
    let c = Console::start().await;
    let id = create_endpoint(&c, "eus").await;
    let viewer = c.sign_in(&c.api_token("viewer").await).await;
    let detail = get(&c, &format!("/endpoints/{id}"), &viewer).await;
    for control in ["edit-endpoint", "reset-health", "delete-endpoint"] {
        assert!(
            !detail.body.contains(&format!(r#"id="{control}""#)),
            "{control} offered to a viewer"
        );
    }
    let list = get(&c, "/endpoints", &viewer).await;
    assert!(!list.body.contains(r#"id="new-endpoint""#));
    assert_eq!(
        c.send(Method::GET, "/endpoints/new", Some(&viewer), None).await.status,
        StatusCode::FORBIDDEN
    );

    // A valid session and CSRF token, but the API refuses the viewer.
    let csrf = detail.csrf();
    let forged = c
        .send(
            Method::POST,
            "/endpoints/new",
            Some(&viewer),
            Some(&form(&endpoint_form(&csrf, "https://contoso-westus.openai.azure.com"))),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert_eq!(endpoints(&c).await.len(), 1, "nothing saved");
    let delete = c
        .send(
            Method::POST,
            &format!("/endpoints/{id}/delete"),
            Some(&viewer),
            Some(&form(&[("_csrf", &csrf), ("force", "true")])),
        )
        .await;
    assert_eq!(delete.status, StatusCode::FORBIDDEN);
    assert_eq!(endpoints(&c).await.len(), 1, "nothing deleted");
}

#[tokio::test]
async fn an_unknown_or_malformed_endpoint_id_is_a_404() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let unknown = c
        .send(Method::GET, &format!("/endpoints/{}", uuid::Uuid::new_v4()), Some(&cookie), None)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let malformed = c.send(Method::GET, "/endpoints/x%3Fforce=true", Some(&cookie), None).await;
    assert_eq!(malformed.status, StatusCode::NOT_FOUND);
}
