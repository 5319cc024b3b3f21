//! Gateways: the list, the form (members, routing, errors next to the fields), the detail page
//! (Gateway URL, snippets), keys shown once, revoking, deleting, roles, and proposals.

use http::{Method, StatusCode};
use modelgw_control_plane::store::{AuditContext, AzureImportItem, EndpointAuth};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Console, Page};

/// An inference endpoint made through the API; its id.
async fn endpoint(c: &Console, name: &str) -> String {
    let (status, body) = c
        .api(
            Method::POST,
            "/api/v1/inference-endpoints",
            Some(json!({
                "name": name,
                "platform": "azure_openai",
                "endpoint": format!("https://{name}.openai.azure.com/"),
                "deployment": "gpt-4o",
                "model_name": "gpt-4o",
                "model_version": "2024-11-20",
                "region": "eastus",
                "api_key": "0123456789abcdef0123456789abcdef",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// A gateway made through the API; its id.
async fn gateway(c: &Console, name: &str, members: &[&str]) -> String {
    let members: Vec<Value> = members.iter().map(|id| json!({ "endpoint_id": id })).collect();
    let (status, body) = c
        .api(Method::POST, "/api/v1/gateways", Some(json!({ "name": name, "endpoints": members })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// A form body with the page's CSRF token and `fields`.
fn form(page: &Page, fields: &[(&str, &str)]) -> String {
    let csrf = page.csrf();
    let mut all = vec![("_csrf", csrf.as_str())];
    all.extend_from_slice(fields);
    serde_urlencoded::to_string(all).unwrap()
}

async fn gateways(c: &Console) -> Vec<Value> {
    let (status, list) = c.api(Method::GET, "/api/v1/gateways", None).await;
    assert_eq!(status, StatusCode::OK);
    list.as_array().unwrap().clone()
}

fn member<'a>(g: &'a Value, id: &str) -> Option<&'a Value> {
    g["endpoints"].as_array().unwrap().iter().find(|m| m["endpoint_id"] == id)
}

#[tokio::test]
async fn a_gateway_made_with_the_form_is_what_the_api_holds() {
    let c = Console::start().await;
    let (a, b, x) =
        (endpoint(&c, "eus").await, endpoint(&c, "weu").await, endpoint(&c, "jpe").await);
    let cookie = c.sign_in(ADMIN_TOKEN).await;

    let list = c.send(Method::GET, "/gateways", Some(&cookie), None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("<title>Gateways"), "{}", list.body);
    assert!(
        list.body.contains(r#"id="new-gateway""#) && list.body.contains(r#"id="propose-gateways""#)
    );
    assert!(list.body.contains("No gateways yet"));

    let new = c.send(Method::GET, "/gateways/new", Some(&cookie), None).await;
    assert_eq!(new.status, StatusCode::OK);
    for id in [&a, &b, &x] {
        assert!(new.body.contains(&format!(r#"name="member" value="{id}""#)), "row for {id}");
        assert!(new.body.contains(&format!(r#"name="weight_{id}""#)));
        assert!(new.body.contains(&format!(r#"<label class="sr-only" for="priority_{id}">"#)));
    }
    assert!(new.body.contains(r#"data-filter="members-table""#));
    for id in [
        r#"id="name""#,
        r#"id="strategy""#,
        r#"id="wait_for_recovery""#,
        r#"id="request_timeout_ms""#,
        r#"id="save""#,
    ] {
        assert!(new.body.contains(id), "{id}");
    }

    let body = form(
        &new,
        &[
            ("name", "gpt-4o"),
            ("member", &a),
            ("member", &b),
            (&format!("priority_{a}"), "0"),
            (&format!("weight_{a}"), "5"),
            (&format!("priority_{b}"), "1"),
            (&format!("weight_{b}"), "2"),
            // Not checked: not a member, whatever its weight says.
            (&format!("weight_{x}"), "7"),
            ("strategy", "fastest"),
            ("wait_for_recovery", "true"),
            ("request_timeout_ms", "30000"),
        ],
    );
    let created = c.send(Method::POST, "/gateways", Some(&cookie), Some(&body)).await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    let location = created.header("location").to_owned();
    assert!(location.ends_with("?created=1"), "{location}");

    let all = gateways(&c).await;
    assert_eq!(all.len(), 1);
    let g = &all[0];
    assert_eq!(g["name"], "gpt-4o");
    assert_eq!(g["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(
        member(g, &a).unwrap(),
        &json!({"endpoint_id": a, "enabled": true, "priority": 0, "weight": 5})
    );
    assert_eq!(
        member(g, &b).unwrap(),
        &json!({"endpoint_id": b, "enabled": true, "priority": 1, "weight": 2})
    );
    assert_eq!(
        g["routing"],
        json!({"strategy": "fastest", "wait_for_recovery": true, "request_timeout_ms": 30000,
            "quota": {"enabled": true, "request_window_secs": 10, "token_window_secs": 60,
                "reserve_percent": 0}})
    );
    let id = g["id"].as_str().unwrap();

    let detail = c.send(Method::GET, &location, Some(&cookie), None).await;
    assert_eq!(detail.status, StatusCode::OK);
    assert!(detail.body.contains("<h1>gpt-4o</h1>"));
    assert!(detail.body.contains(r#"class="success""#));
    assert!(detail.body.contains(&format!(r#"id="gw-state-{id}" sse-swap="gw-{id}""#)));
    assert!(
        detail.body.contains(&format!(r#"sse-swap="ep-{a}""#))
            && detail.body.contains(&format!(r#"sse-swap="ep-{b}""#))
    );
    assert!(!detail.body.contains(&format!(r#"sse-swap="ep-{x}""#)), "not a member");
    // No Gateway URL configured: a placeholder and what to set.
    assert!(
        detail.body.contains(r#"id="gateway-url""#) && detail.body.contains("MODELGW_GATEWAY_URL")
    );
    assert_eq!(detail.body.matches(r#"<pre class="snippet""#).count(), 3);
    assert_eq!(detail.body.matches("data-copy=\"snippet-").count(), 3);
    assert!(
        detail.body.contains("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21")
    );
    assert!(detail.body.contains("AzureOpenAI(") && detail.body.contains("new AzureOpenAI({"));
    assert!(detail.body.contains("&lt;your gateway key&gt;"));

    let list = c.send(Method::GET, "/gateways", Some(&cookie), None).await;
    assert!(list.body.contains(r#"id="gateways-table""#));
    assert!(list.body.contains(&format!(r#"data-gateway="{id}""#)));
    assert!(list.body.contains(&format!(r#"id="gw-state-{id}""#)));
    assert!(list.body.contains("2 / 2"));
}

#[tokio::test]
async fn the_gateway_url_goes_into_the_snippets_when_it_is_set() {
    let c = Console::start().await;
    let a = endpoint(&c, "eus").await;
    let id = gateway(&c, "chat", &[&a]).await;
    c.gateway_url.set("https://gw.example.com/".to_owned()).unwrap();
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let detail = c.send(Method::GET, &format!("/gateways/{id}"), Some(&cookie), None).await;
    assert!(
        detail.body.contains(r#"<code id="gateway-url">https://gw.example.com</code>"#),
        "{}",
        detail.body
    );
    assert!(
        detail.body.contains("https://gw.example.com/openai/deployments/chat/chat/completions")
    );
    assert!(detail.body.contains("azure_endpoint=&quot;https://gw.example.com&quot;"));
    assert!(!detail.body.contains("MODELGW_GATEWAY_URL"));
}

#[tokio::test]
async fn a_refused_form_shows_the_reason_next_to_the_field_and_saves_nothing() {
    let c = Console::start().await;
    let a = endpoint(&c, "eus").await;
    gateway(&c, "taken", &[&a]).await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let new = c.send(Method::GET, "/gateways/new", Some(&cookie), None).await;

    // A name another gateway has.
    let body = form(
        &new,
        &[
            ("name", "taken"),
            ("member", &a),
            (&format!("weight_{a}"), "9"),
            ("strategy", "weighted"),
        ],
    );
    let refused = c.send(Method::POST, "/gateways", Some(&cookie), Some(&body)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    assert!(refused.body.contains(r#"id="error-name""#), "{}", refused.body);
    assert!(refused.body.contains(r#"aria-invalid="true" aria-describedby="error-name""#));
    // What was typed is still there.
    assert!(refused.body.contains(r#"value="taken""#));
    assert!(refused.body.contains(&format!(r#"name="weight_{a}" id="weight_{a}" value="9""#)));

    // A weight out of range: the reason in that endpoint's row.
    let body = form(&new, &[("name", "fresh"), ("member", &a), (&format!("weight_{a}"), "0")]);
    let refused = c.send(Method::POST, "/gateways", Some(&cookie), Some(&body)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = format!(
        r#"<p class="field-error" id="error-weight_{a}" role="alert">must be between 1 and 1000</p>"#
    );
    assert!(refused.body.contains(&error), "{}", refused.body);
    assert!(refused.body.contains(&format!(r#"aria-describedby="error-weight_{a}""#)));

    // A timeout out of range and a typo in a number: both named.
    let body = form(
        &new,
        &[
            ("name", "fresh"),
            ("member", &a),
            (&format!("priority_{a}"), "abc"),
            ("request_timeout_ms", "5"),
        ],
    );
    let refused = c.send(Method::POST, "/gateways", Some(&cookie), Some(&body)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.body.contains(&format!(r#"id="error-priority_{a}""#)), "{}", refused.body);

    let all = gateways(&c).await;
    assert_eq!(all.len(), 1, "nothing was saved: {all:?}");
}

#[tokio::test]
async fn quota_settings_are_edited_in_the_form_and_shown_and_a_bad_one_changes_nothing() {
    let c = Console::start().await;
    let a = endpoint(&c, "eus").await;
    let id = gateway(&c, "chat", &[&a]).await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let edit_path = format!("/gateways/{id}/edit");
    let detail_path = format!("/gateways/{id}");

    // The defaults, shown as the gateway holds them; the hidden "off" precedes the checkbox so
    // that an unchecked box is posted as off.
    let detail = c.send(Method::GET, &detail_path, Some(&cookie), None).await;
    assert!(
        detail.body.contains("request window 10 s, token window 60 s, reserve 0 %"),
        "{}",
        detail.body
    );
    let edit = c.send(Method::GET, &edit_path, Some(&cookie), None).await;
    assert!(edit.body.contains("<legend>Quota-aware routing</legend>"), "{}", edit.body);
    let hidden = edit.body.find(r#"type="hidden" name="quota_enabled" value="false""#).unwrap();
    let checkbox = edit
        .body
        .find(r#"id="quota_enabled" type="checkbox" name="quota_enabled" value="true" checked"#)
        .unwrap();
    assert!(hidden < checkbox);
    assert!(edit.body.contains("Spread by remaining quota"));
    for (field, value) in [
        ("quota_request_window_secs", "10"),
        ("quota_token_window_secs", "60"),
        ("quota_reserve_percent", "0"),
    ] {
        assert!(
            edit.body.contains(&format!(r#"name="{field}" value="{value}""#)),
            "{field}: {}",
            edit.body
        );
        assert!(edit.body.contains(&format!(r#"<label for="{field}">"#)), "{field} labelled");
    }

    // Off (the box unchecked: only the hidden field), other windows and a reserve.
    let body = form(
        &edit,
        &[
            ("name", "chat"),
            ("member", &a),
            ("keep", &a),
            ("strategy", "weighted"),
            ("quota_enabled", "false"),
            ("quota_request_window_secs", "5"),
            ("quota_token_window_secs", "120"),
            ("quota_reserve_percent", "20"),
        ],
    );
    let saved = c.send(Method::POST, &edit_path, Some(&cookie), Some(&body)).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let g = &gateways(&c).await[0];
    assert_eq!(
        g["routing"]["quota"],
        json!({"enabled": false, "request_window_secs": 5, "token_window_secs": 120,
            "reserve_percent": 20})
    );
    let detail = c.send(Method::GET, saved.header("location"), Some(&cookie), None).await;
    assert!(detail.body.contains("Quota-aware routing: off"), "{}", detail.body);
    let edit = c.send(Method::GET, &edit_path, Some(&cookie), None).await;
    let unchecked = r#"id="quota_enabled" type="checkbox" name="quota_enabled" value="true">"#;
    assert!(edit.body.contains(unchecked), "{}", edit.body);
    assert!(edit.body.contains(r#"name="quota_reserve_percent" value="20""#));

    // On again (checked: the box's value follows the hidden one), the reserve changed.
    let body = form(
        &edit,
        &[
            ("name", "chat"),
            ("member", &a),
            ("keep", &a),
            ("strategy", "weighted"),
            ("quota_enabled", "false"),
            ("quota_enabled", "true"),
            ("quota_request_window_secs", "5"),
            ("quota_token_window_secs", "120"),
            ("quota_reserve_percent", "15"),
        ],
    );
    let saved = c.send(Method::POST, &edit_path, Some(&cookie), Some(&body)).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let detail = c.send(Method::GET, saved.header("location"), Some(&cookie), None).await;
    assert!(
        detail.body.contains("request window 5 s, token window 120 s, reserve 15 %"),
        "{}",
        detail.body
    );
    let before = gateways(&c).await;

    // Out of range: each reason next to its field, what was typed kept, nothing saved.
    let edit = c.send(Method::GET, &edit_path, Some(&cookie), None).await;
    let body = form(
        &edit,
        &[
            ("name", "chat"),
            ("member", &a),
            ("keep", &a),
            ("strategy", "weighted"),
            ("quota_enabled", "false"),
            ("quota_request_window_secs", "5"),
            ("quota_token_window_secs", "0"),
            ("quota_reserve_percent", "51"),
        ],
    );
    let refused = c.send(Method::POST, &edit_path, Some(&cookie), Some(&body)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    for (field, reason) in [
        ("quota_token_window_secs", "must be between 1 and 86400"),
        ("quota_reserve_percent", "must be between 0 and 50"),
    ] {
        let error =
            format!(r#"<p class="field-error" id="error-{field}" role="alert">{reason}</p>"#);
        assert!(refused.body.contains(&error), "{field}: {}", refused.body);
        assert!(
            refused
                .body
                .contains(&format!(r#"aria-invalid="true" aria-describedby="error-{field}""#))
        );
    }
    assert!(!refused.body.contains(r#"id="error-quota_request_window_secs""#));
    assert!(refused.body.contains(r#"name="quota_reserve_percent" value="51""#));
    assert!(refused.body.contains(unchecked), "the box stays unchecked");
    assert_eq!(gateways(&c).await, before, "nothing was saved");
    let detail = c.send(Method::GET, &detail_path, Some(&cookie), None).await;
    assert!(detail.body.contains("reserve 15 %"), "{}", detail.body);
}

#[tokio::test]
async fn editing_members_disables_adds_and_removes() {
    let c = Console::start().await;
    let (a, b, x) =
        (endpoint(&c, "eus").await, endpoint(&c, "weu").await, endpoint(&c, "jpe").await);
    let id = gateway(&c, "chat", &[&a, &b]).await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let edit_path = format!("/gateways/{id}/edit");
    let edit = c.send(Method::GET, &edit_path, Some(&cookie), None).await;
    assert_eq!(edit.status, StatusCode::OK);
    assert!(edit.body.contains("<title>Edit chat"));
    assert!(
        edit.body.contains(&format!(r#"name="member" value="{a}" id="member_{a}" checked"#)),
        "{}",
        edit.body
    );
    assert!(!edit.body.contains(&format!(r#"value="{x}" id="member_{x}" checked"#)));
    // Members come first.
    let pos = |id: &str| edit.body.find(&format!(r#"data-endpoint="{id}""#)).unwrap();
    assert!(pos(&a) < pos(&x) && pos(&b) < pos(&x));

    // Uncheck b (it stays, disabled), add x at priority 2, change the name and routing.
    let body = form(
        &edit,
        &[
            ("name", "chat-2"),
            ("member", &a),
            ("keep", &a),
            ("keep", &b),
            ("member", &x),
            (&format!("priority_{x}"), "2"),
            (&format!("weight_{x}"), "3"),
            ("strategy", "weighted"),
            ("request_timeout_ms", ""),
        ],
    );
    let saved = c.send(Method::POST, &edit_path, Some(&cookie), Some(&body)).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(saved.header("location"), format!("/gateways/{id}?saved=1"));
    let g = &gateways(&c).await[0];
    assert_eq!(g["name"], "chat-2");
    assert_eq!(member(g, &a).unwrap()["enabled"], true);
    assert_eq!(member(g, &b).unwrap()["enabled"], false);
    assert_eq!(
        member(g, &x).unwrap(),
        &json!({"endpoint_id": x, "enabled": true, "priority": 2, "weight": 3})
    );
    assert_eq!(g["routing"]["request_timeout_ms"], Value::Null);

    // The disabled member is offered for removal; removing it takes it out.
    let edit = c.send(Method::GET, &edit_path, Some(&cookie), None).await;
    assert!(edit.body.contains(&format!(r#"name="remove" value="{b}""#)));
    let body = form(
        &edit,
        &[
            ("name", "chat-2"),
            ("member", &a),
            ("keep", &a),
            ("keep", &b),
            ("remove", &b),
            ("keep", &x),
            ("member", &x),
        ],
    );
    let saved = c.send(Method::POST, &edit_path, Some(&cookie), Some(&body)).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let g = &gateways(&c).await[0];
    assert!(member(g, &b).is_none(), "{g}");
    assert_eq!(g["endpoints"].as_array().unwrap().len(), 2);

    let detail = c.send(Method::GET, &format!("/gateways/{id}?saved=1"), Some(&cookie), None).await;
    assert!(detail.body.contains("Saved"));
}

#[tokio::test]
async fn a_key_is_shown_once_then_only_its_hint_and_revoking_works() {
    let c = Console::start().await;
    let a = endpoint(&c, "eus").await;
    let id = gateway(&c, "chat", &[&a]).await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let path = format!("/gateways/{id}");
    let detail = c.send(Method::GET, &path, Some(&cookie), None).await;
    assert!(detail.body.contains(r#"id="key-name""#) && detail.body.contains(r#"id="create-key""#));

    // A blank name: refused next to the field, no key.
    let refused = c
        .send(
            Method::POST,
            &format!("{path}/keys"),
            Some(&cookie),
            Some(&form(&detail, &[("name", " ")])),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    assert!(refused.body.contains(r#"id="error-name""#));
    assert!(!refused.body.contains(r#"id="new-key""#));

    let created = c
        .send(
            Method::POST,
            &format!("{path}/keys"),
            Some(&cookie),
            Some(&form(&detail, &[("name", "billing")])),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(created.header("cache-control"), "no-store");
    assert!(created.header("location").is_empty(), "no redirect: the key is in this answer");
    let re = regex::Regex::new(r#"<code class="secret" id="new-key">([^<]+)</code>"#).unwrap();
    let key = re.captures(&created.body).expect("the key is shown")[1].to_owned();
    assert_eq!(created.body.matches(&key).count(), 1, "the key appears once");
    assert!(created.body.contains(r#"data-copy="new-key""#));
    assert!(created.body.contains("will not be shown again"));

    let (_, keys) = c.api(Method::GET, &format!("/api/v1/gateways/{id}/keys"), None).await;
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let (key_id, hint) = (keys[0]["id"].as_str().unwrap(), keys[0]["hint"].as_str().unwrap());

    let again = c.send(Method::GET, &path, Some(&cookie), None).await;
    assert!(!again.body.contains(&key), "the key is never shown again");
    assert!(!again.body.contains(r#"id="new-key""#));
    assert!(again.body.contains(r#"id="keys-table""#));
    assert!(again.body.contains(&format!(r#"data-key="{key_id}""#)));
    assert!(again.body.contains(hint) && again.body.contains("billing"));
    assert!(again.body.contains(r#"class="danger small revoke-key""#));

    let revoked = c
        .send(
            Method::POST,
            &format!("{path}/keys/{key_id}/revoke"),
            Some(&cookie),
            Some(&form(&again, &[])),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER, "{}", revoked.body);
    let (_, keys) = c.api(Method::GET, &format!("/api/v1/gateways/{id}/keys"), None).await;
    assert!(keys[0]["revoked_at"].is_string(), "{keys}");
    let after = c.send(Method::GET, &format!("{path}?revoked=1"), Some(&cookie), None).await;
    assert!(after.body.contains("Key revoked"));
    assert!(after.body.contains(r#"data-state="revoked""#));
    assert!(!after.body.contains("revoke-key"), "nothing left to revoke");
}

#[tokio::test]
async fn a_key_under_a_parent_with_limits_shows_its_usage_and_its_usage_can_be_reset() {
    let c = Console::start().await;
    let a = endpoint(&c, "eus").await;
    let id = gateway(&c, "chat", &[&a]).await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let path = format!("/gateways/{id}");
    let detail = c.send(Method::GET, &path, Some(&cookie), None).await;
    assert!(
        detail.body.contains(r#"id="key-options""#) && detail.body.contains(r#"id="key-limits""#)
    );
    let parent = c
        .send(
            Method::POST,
            &format!("{path}/keys"),
            Some(&cookie),
            Some(&form(&detail, &[("name", "department"), ("limit_hour_total_tokens", "10,000")])),
        )
        .await;
    assert_eq!(parent.status, StatusCode::OK, "{}", parent.body);
    let (_, keys) = c.api(Method::GET, &format!("/api/v1/gateways/{id}/keys"), None).await;
    let parent_id = keys[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(keys[0]["limits"], serde_json::json!({"per_hour": {"total_tokens": 10000}}));

    // A bad limit is named next to its field; the form keeps what was typed.
    let refused = c
        .send(
            Method::POST,
            &format!("{path}/keys"),
            Some(&cookie),
            Some(&form(
                &detail,
                &[("name", "team"), ("parent_id", &parent_id), ("limit_minute_requests", "0")],
            )),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    assert!(refused.body.contains(r#"id="error-limits.per_minute.requests""#), "{}", refused.body);
    assert!(refused.body.contains(r#"<details id="key-options" open"#));

    let child = c
        .send(
            Method::POST,
            &format!("{path}/keys"),
            Some(&cookie),
            Some(&form(
                &detail,
                &[
                    ("name", "team"),
                    ("parent_id", &parent_id),
                    ("expires_at", "2999-01-01T00:00"),
                    ("limit_minute_requests", "60"),
                ],
            )),
        )
        .await;
    assert_eq!(child.status, StatusCode::OK, "{}", child.body);
    let (_, keys) = c.api(Method::GET, &format!("/api/v1/gateways/{id}/keys"), None).await;
    assert_eq!(keys[1]["parent_id"], parent_id.as_str());
    assert_eq!(keys[1]["expires_at"], "2999-01-01T00:00:00Z");

    let page = c.send(Method::GET, &path, Some(&cookie), None).await;
    assert!(page.body.contains("under department"), "the child names its parent");
    assert!(page.body.contains("10,000 total tokens / hour"));
    assert!(page.body.contains("0 / 10,000 total tokens this hour"));
    assert!(page.body.contains("60 requests / minute"));
    assert!(page.body.contains("Active until 2999-01-01 00:00 UTC"));
    assert!(page.body.contains(r#"data-depth="1""#));

    let reset = c
        .send(
            Method::POST,
            &format!("{path}/keys/{parent_id}/reset-usage"),
            Some(&cookie),
            Some(&form(&page, &[])),
        )
        .await;
    assert_eq!(reset.status, StatusCode::SEE_OTHER, "{}", reset.body);
    let (_, log) = c.api(Method::GET, "/api/v1/audit-log?action=reset_usage", None).await;
    assert_eq!(log["entries"][0]["entity_id"], parent_id.as_str());
    let after = c.send(Method::GET, &format!("{path}?reset=1"), Some(&cookie), None).await;
    assert!(after.body.contains("Usage reset"));
}

#[tokio::test]
async fn a_viewer_sees_no_changes_and_a_forged_post_is_refused() {
    let c = Console::start().await;
    let a = endpoint(&c, "eus").await;
    let id = gateway(&c, "chat", &[&a]).await;
    let admin = c.sign_in(ADMIN_TOKEN).await;
    let detail = c.send(Method::GET, &format!("/gateways/{id}"), Some(&admin), None).await;
    c.send(
        Method::POST,
        &format!("/gateways/{id}/keys"),
        Some(&admin),
        Some(&form(&detail, &[("name", "k1")])),
    )
    .await;

    let viewer = c.sign_in(&c.api_token("viewer").await).await;
    let list = c.send(Method::GET, "/gateways", Some(&viewer), None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains(&format!(r#"data-gateway="{id}""#)));
    assert!(!list.body.contains("new-gateway") && !list.body.contains("propose-gateways"));
    let page = c.send(Method::GET, &format!("/gateways/{id}"), Some(&viewer), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(r#"id="keys-table""#), "viewers see the keys' hints");
    for control in [
        "create-key",
        "key-name",
        "revoke-key",
        "reset-usage",
        "key-options",
        "edit-gateway",
        "delete-gateway",
    ] {
        assert!(!page.body.contains(control), "{control} shown to a viewer");
    }

    let form_page = c.send(Method::GET, &format!("/gateways/{id}/edit"), Some(&viewer), None).await;
    assert_eq!(form_page.status, StatusCode::FORBIDDEN);
    assert_eq!(
        c.send(Method::GET, "/gateways/new", Some(&viewer), None).await.status,
        StatusCode::FORBIDDEN
    );

    // A forged post with the viewer's own session and CSRF token: the API refuses it.
    let forged = c
        .send(
            Method::POST,
            &format!("/gateways/{id}/keys"),
            Some(&viewer),
            Some(&form(&page, &[("name", "sneaky")])),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert!(!forged.body.contains("new-key"));
    let (_, keys) = c.api(Method::GET, &format!("/api/v1/gateways/{id}/keys"), None).await;
    assert_eq!(keys.as_array().unwrap().len(), 1, "no key was created: {keys}");
    let forged = c
        .send(
            Method::POST,
            &format!("/gateways/{id}/delete"),
            Some(&viewer),
            Some(&form(&page, &[])),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(gateways(&c).await.len(), 1);
}

#[tokio::test]
async fn deleting_asks_first_and_removes_the_gateway() {
    let c = Console::start().await;
    let a = endpoint(&c, "eus").await;
    let id = gateway(&c, "chat", &[&a]).await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let detail = c.send(Method::GET, &format!("/gateways/{id}"), Some(&cookie), None).await;
    assert!(detail.body.contains("data-confirm=\"Delete gateway chat"));
    let deleted = c
        .send(
            Method::POST,
            &format!("/gateways/{id}/delete"),
            Some(&cookie),
            Some(&form(&detail, &[])),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.body);
    assert_eq!(deleted.header("location"), "/gateways?deleted=chat");
    assert!(gateways(&c).await.is_empty());
    let list = c.send(Method::GET, "/gateways?deleted=chat", Some(&cookie), None).await;
    assert!(list.body.contains("Deleted gateway"));
    let gone = c.send(Method::GET, &format!("/gateways/{id}"), Some(&cookie), None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let junk = c.send(Method::GET, "/gateways/not-a-uuid", Some(&cookie), None).await;
    assert_eq!(junk.status, StatusCode::NOT_FOUND);
}

/// Two gpt-4o deployments (a PTU one and a standard one) and one gpt-4o-mini, as an Azure
/// import would store them.
async fn imported(c: &Console) {
    let item = |name: &str, model: &str, sku: &str, capacity: u32| AzureImportItem {
        arm_resource_id: format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a/deployments/{name}"
        ),
        name: name.to_owned(),
        endpoint: url::Url::parse("https://a.openai.azure.com/").unwrap(),
        deployment: name.to_owned(),
        model_name: model.to_owned(),
        model_version: "2024-11-20".to_owned(),
        region: "eastus".to_owned(),
        sku_name: sku.to_owned(),
        sku_capacity: Some(capacity),
        auth: EndpointAuth::Entra,
    };
    c.store
        .import_azure_endpoints(
            vec![
                item("a-ptu", "gpt-4o", "GlobalProvisionedManaged", 100),
                item("b-std", "gpt-4o", "Standard", 10),
                item("c-mini", "gpt-4o-mini", "Standard", 5),
            ],
            &AuditContext::system("test"),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn proposals_create_a_gateway_with_one_click_or_prefill_the_form() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let empty = c.send(Method::GET, "/gateways/proposals", Some(&cookie), None).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert!(empty.body.contains("No proposals"));

    imported(&c).await;
    let page = c.send(Method::GET, "/gateways/proposals", Some(&cookie), None).await;
    assert!(page.body.contains(r#"id="proposals-table""#), "{}", page.body);
    assert!(page.body.contains(r#"data-proposal="gpt-4o-2024-11-20""#));
    assert!(page.body.contains(r#"data-proposal="gpt-4o-mini-2024-11-20""#));
    // PTU first.
    assert!(page.body.find("a-ptu").unwrap() < page.body.find("b-std").unwrap());

    // Review: the form, pre-filled.
    let review =
        c.send(Method::GET, "/gateways/new?proposal=gpt-4o-2024-11-20", Some(&cookie), None).await;
    assert!(review.body.contains(r#"value="gpt-4o-2024-11-20""#));
    // The two members, and quota-aware routing (on by default).
    assert_eq!(review.body.matches(r#"checked"#).count(), 3, "{}", review.body);

    // Create: one click.
    let created = c
        .send(
            Method::POST,
            "/gateways/proposals",
            Some(&cookie),
            Some(&form(&page, &[("name", "gpt-4o-2024-11-20")])),
        )
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    let all = gateways(&c).await;
    assert_eq!(all.len(), 1);
    let g = &all[0];
    assert_eq!(g["name"], "gpt-4o-2024-11-20");
    let members = g["endpoints"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(
        (members[0]["priority"].as_u64(), members[0]["weight"].as_u64()),
        (Some(0), Some(1000))
    );
    assert_eq!(members[1]["priority"], 1);

    // Now it exists: the list says so instead of offering it again.
    let page = c.send(Method::GET, "/gateways/proposals", Some(&cookie), None).await;
    assert!(page.body.contains("Exists"));
    // Creating it again anyway: the pre-filled form with the API's reason.
    let again = c
        .send(
            Method::POST,
            "/gateways/proposals",
            Some(&cookie),
            Some(&form(&page, &[("name", "gpt-4o-2024-11-20")])),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(again.body.contains(r#"id="error-name""#));
    assert_eq!(gateways(&c).await.len(), 1);
}

#[tokio::test]
async fn a_thousand_endpoints_and_a_hundred_gateways_stay_quick() {
    let c = Console::start().await;
    let items = (0..1000)
        .map(|i| AzureImportItem {
            arm_resource_id: format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a{i}/deployments/d"),
            name: format!("ep-{i:04}"),
            endpoint: url::Url::parse("https://a.openai.azure.com/").unwrap(),
            deployment: "d".to_owned(),
            model_name: format!("model-{}", i % 50),
            model_version: "1".to_owned(),
            region: "eastus".to_owned(),
            sku_name: "Standard".to_owned(),
            sku_capacity: Some(1),
            auth: EndpointAuth::Entra,
        })
        .collect();
    c.store.import_azure_endpoints(items, &AuditContext::system("test")).await.unwrap();
    let (_, endpoints) = c.api(Method::GET, "/api/v1/inference-endpoints", None).await;
    let ids: Vec<&str> =
        endpoints.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    for g in 0..100 {
        let members: Vec<&str> = ids.iter().skip(g * 10).take(10).copied().collect();
        gateway(&c, &format!("gw-{g:03}"), &members).await;
    }
    let first = gateways(&c).await[0]["id"].as_str().unwrap().to_owned();
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    for path in [
        "/gateways".to_owned(),
        "/gateways/new".to_owned(),
        format!("/gateways/{first}/edit"),
        format!("/gateways/{first}"),
    ] {
        // Once to warm up, then timed.
        c.send(Method::GET, &path, Some(&cookie), None).await;
        let started = std::time::Instant::now();
        let page = c.send(Method::GET, &path, Some(&cookie), None).await;
        let took = started.elapsed();
        assert_eq!(page.status, StatusCode::OK);
        println!("{path}: {took:?}, {} KiB", page.body.len() / 1024);
        // Unoptimized test builds are several times slower than a release; this bounds a
        // regression (quadratic rendering) without being flaky.
        assert!(took < std::time::Duration::from_millis(1500), "{path} took {took:?}");
    }
    let edit = c.send(Method::GET, &format!("/gateways/{first}/edit"), Some(&cookie), None).await;
    assert_eq!(edit.body.matches(r#"name="member""#).count(), 1000);
    // Ten members, and quota-aware routing.
    assert_eq!(edit.body.matches(" checked ").count() + edit.body.matches(" checked>").count(), 11);
}
