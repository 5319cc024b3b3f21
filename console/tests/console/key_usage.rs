//! A gateway key's page: its details (parent, the keys under it, expiry, last use), its usage now
//! against its limits, and its tokens and requests per hour and per minute — from usage written
//! the way data planes report it (cumulative per key and window, a parent's entries holding its
//! subtree's), shown to a viewer; empty states; a reset from the page; unknown keys.

use std::num::NonZeroU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use modelgw_model::NodeId;
use modelgw_model::keys::{KeyUsage, Usage, UsageReport, Window};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Console};

async fn gateway(c: &Console, name: &str) -> String {
    let (status, gw) =
        c.api(Method::POST, "/api/v1/gateways", Some(json!({"name": name, "endpoints": []}))).await;
    assert_eq!(status, StatusCode::CREATED, "{gw}");
    gw["id"].as_str().unwrap().to_owned()
}

async fn key(c: &Console, gateway: &str, body: Value) -> String {
    let (status, key) =
        c.api(Method::POST, &format!("/api/v1/gateways/{gateway}/keys"), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    key["id"].as_str().unwrap().to_owned()
}

/// The `<figure>` with `id` in `page`.
fn figure<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("<figure class=\"chart\" id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no chart {id} in the page:\n{page}"));
    let end = page[start..].find("</figure>").expect("closed figure");
    &page[start..start + end]
}

/// The usage-now table's row of `window`.
fn usage_row<'a>(page: &'a str, window: &str) -> &'a str {
    let start = page
        .find(&format!("<tr data-window=\"{window}\">"))
        .unwrap_or_else(|| panic!("no {window} row:\n{page}"));
    let end = page[start..].find("</tr>").expect("closed row");
    &page[start..start + end]
}

/// Waits out the last seconds of a minute (and so of an hour and a day), so that what the test
/// writes into the current windows is still in them when the page reads them.
async fn clear_of_a_window_end() {
    let into_minute = Utc::now().timestamp_millis().rem_euclid(60_000);
    if into_minute > 55_000 {
        tokio::time::sleep(Duration::from_millis((60_050 - into_minute).unsigned_abs())).await;
    }
}

/// One data plane's report entry.
fn entry(key: &str, window: Window, start: i64, charged: Usage) -> KeyUsage {
    KeyUsage {
        key_id: key.parse().unwrap(),
        window,
        window_start_unix_ms: start,
        charged,
        reserved: Usage::default(),
        wanted: Usage::default(),
    }
}

fn usage(requests: u64, prompt: u64, completion: u64) -> Usage {
    Usage {
        requests,
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    }
}

fn label(ms: i64, format: &str) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap().format(format).to_string()
}

#[tokio::test]
async fn a_keys_page_charts_its_subtrees_usage_per_hour_and_minute_against_its_limits() {
    let c = Console::start().await;
    let gw = gateway(&c, "chat").await;
    let parent = key(
        &c,
        &gw,
        json!({"name": "department", "limits": {
            "per_minute": {"requests": 60},
            "per_hour": {"total_tokens": 10000, "prompt_tokens": 8000, "completion_tokens": 3000},
        }}),
    )
    .await;
    let child = key(
        &c,
        &gw,
        json!({"name": "team", "parent_id": parent, "expires_at": "2999-01-01T00:00:00Z",
               "limits": {"per_minute": {"total_tokens": 2000}}}),
    )
    .await;
    let sibling = key(&c, &gw, json!({"name": "ops", "parent_id": parent})).await;

    clear_of_a_window_end().await;
    let now = Utc::now();
    let ms = now.timestamp_millis();
    let (minute, hour, day) =
        (Window::Minute.start_of(ms), Window::Hour.start_of(ms), Window::Day.start_of(ms));
    let five_minutes_ago = minute - 5 * 60_000;
    let three_hours_ago = hour - 3 * 3_600_000;
    // The team's traffic: 2 requests now (300 + 100 tokens), 1 five minutes ago (50 + 10), 4
    // three hours ago (1,000 + 200). Its parent's entries hold it, plus one request of its own
    // now (100 prompt tokens), as data planes charge a request to the key and every ancestor.
    let mut keys = Vec::new();
    for (k, own) in [(&child, usage(0, 0, 0)), (&parent, usage(1, 100, 0))] {
        let now_minute = usage(2, 300, 100).saturating_add(own);
        let this_hour = usage(3, 350, 110).saturating_add(own);
        keys.extend([
            entry(k, Window::Minute, minute, now_minute),
            entry(k, Window::Minute, five_minutes_ago, usage(1, 50, 10)),
            entry(k, Window::Hour, hour, this_hour),
            entry(k, Window::Hour, three_hours_ago, usage(4, 1_000, 200)),
            entry(k, Window::Day, day, this_hour.saturating_add(usage(4, 1_000, 200))),
        ]);
    }
    let node = NodeId("dp-1".into());
    c.store
        .record_key_usage(
            NonZeroU64::new(3).unwrap(),
            &node,
            &UsageReport { keys, skipped: vec![] },
            now,
        )
        .await
        .unwrap();
    c.store.touch_gateway_keys(&[child.parse().unwrap()], now).await.unwrap();

    let viewer = c.sign_in(&c.api_token("viewer").await).await;

    // The gateway's key list links each key to its page (and indents the tree without inline
    // style, which the content security policy would block).
    let list = c.send(Method::GET, &format!("/gateways/{gw}"), Some(&viewer), None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    for k in [&parent, &child, &sibling] {
        assert!(list.body.contains(&format!(r#"href="/gateways/{gw}/keys/{k}""#)), "{k}");
    }
    assert!(!list.body.contains(" style="), "no inline style");

    let page =
        c.send(Method::GET, &format!("/gateways/{gw}/keys/{parent}"), Some(&viewer), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(!body.contains(" style="), "no inline style");
    assert!(body.contains("<title>Key department · Model Gateway</title>"), "{body}");
    assert!(body.contains(r#"href="/gateways" aria-current="page""#), "under Gateways");
    assert!(body.contains(r#"id="key-parent"><span class="sub">None (a root key)"#), "{body}");
    for (k, name) in [(&child, "team"), (&sibling, "ops")] {
        assert!(
            body.contains(&format!(r#"<a href="/gateways/{gw}/keys/{k}">{name}</a>"#)),
            "{name}"
        );
    }
    assert!(body.contains("10,000 total tokens / hour") && body.contains("60 requests / minute"));
    assert!(
        body.contains(r#"id="key-last-used"><span class="sub">Never"#),
        "the parent's own use is not recorded here"
    );
    assert!(!body.contains(r#"id="reset-usage""#), "a viewer resets nothing");

    // Usage now, against the limits: the subtree's 3 + 1 requests and 450 + 110 tokens this hour.
    let this_hour = usage_row(body, "hour");
    assert!(
        this_hour.contains(r#"<td class="num">560<span class="sub">of 10,000, 9,440 left</span>"#),
        "{this_hour}"
    );
    assert!(
        this_hour.contains(r#"<td class="num">450<span class="sub">of 8,000, 7,550 left"#),
        "{this_hour}"
    );
    assert!(
        this_hour.contains(r#"<td class="num">110<span class="sub">of 3,000, 2,890 left"#),
        "{this_hour}"
    );
    assert!(
        this_hour.contains(r#"<td class="num">4</td>"#),
        "requests, not limited per hour: {this_hour}"
    );
    let this_minute = usage_row(body, "minute");
    assert!(
        this_minute.contains(r#"<td class="num">3<span class="sub">of 60, 57 left"#),
        "{this_minute}"
    );
    assert!(usage_row(body, "day").contains(r#"<td class="num">1,760</td>"#), "today: 560 + 1,200");

    // Per hour over 24 hours: this hour and three hours ago, the limits drawn.
    let tokens = figure(body, "key-tokens-hour");
    assert!(
        tokens.contains(r#"role="img""#)
            && tokens.contains(r#"<title id="key-tokens-hour-title">"#)
    );
    assert!(tokens.contains("Prompt: 1450, Completion: 310"), "{tokens}");
    let hour_row =
        |start: i64, cells: &str| format!("<td>{}</td>{cells}", label(start, "%m-%d %H:%M"));
    assert!(
        tokens.contains(&hour_row(
            three_hours_ago,
            r#"<td class="num">1000</td><td class="num">200</td><td class="num">1200</td>"#
        )),
        "{tokens}"
    );
    assert!(
        tokens.contains(&hour_row(
            hour,
            r#"<td class="num">450</td><td class="num">110</td><td class="num">560</td>"#
        )),
        "{tokens}"
    );
    assert_eq!(tokens.matches("<g class=\"column\"").count(), 2, "a column per hour with usage");
    assert!(
        tokens.contains(r#"data-limit="Total tokens""#)
            && tokens.contains(r#"data-limit="Prompt tokens""#)
    );
    assert!(
        !tokens.contains(r#"data-limit="Completion tokens""#),
        "stated in the table, not drawn"
    );
    let requests = figure(body, "key-requests-hour");
    assert!(requests.contains("Requests: 8"), "{requests}");
    assert!(!requests.contains("data-limit"), "no request limit per hour");

    // Per minute over the last hour: now and five minutes ago. 60 requests a minute is more
    // than ten times the busiest minute's 3: stated, not drawn (it would flatten the columns).
    let requests = figure(body, "key-requests-minute");
    let minute_row = |start: i64, cells: &str| format!("<td>{}</td>{cells}", label(start, "%H:%M"));
    assert!(requests.contains(&minute_row(minute, r#"<td class="num">3</td>"#)), "{requests}");
    assert!(
        requests.contains(&minute_row(five_minutes_ago, r#"<td class="num">1</td>"#)),
        "{requests}"
    );
    assert!(!requests.contains(r#"data-limit="Requests""#), "{requests}");
    assert!(requests.contains("<strong>60</strong> (above the scale)"), "{requests}");
    assert!(requests.contains("limit, Requests: 60"), "in the description: {requests}");
    let tokens = figure(body, "key-tokens-minute");
    assert!(tokens.contains("Prompt: 450, Completion: 110"), "{tokens}");

    // The child: its own numbers, its parent linked, its expiry, its last use and its limit.
    let page =
        c.send(Method::GET, &format!("/gateways/{gw}/keys/{child}"), Some(&viewer), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = &page.body;
    assert!(
        body.contains(&format!(
            r#"id="key-parent"><a href="/gateways/{gw}/keys/{parent}">department</a>"#
        )),
        "{body}"
    );
    assert!(body.contains(r#"id="key-children"><span class="sub">None"#));
    assert!(body.contains("2999-01-01 00:00 UTC"));
    assert!(body.contains(r#"id="key-last-used"><time"#) && body.contains(" s ago"), "{body}");
    assert!(usage_row(body, "hour").contains(r#"<td class="num">460</td>"#));
    let tokens = figure(body, "key-tokens-minute");
    assert!(tokens.contains("Prompt: 350, Completion: 110"), "{tokens}");
    assert!(
        tokens.contains(r#"data-limit="Total tokens""#),
        "2,000 a minute is in view of 400: {tokens}"
    );
}

#[tokio::test]
async fn a_key_without_usage_says_so_and_an_unknown_key_is_not_found() {
    let c = Console::start().await;
    let gw = gateway(&c, "chat").await;
    let other = gateway(&c, "other").await;
    let k =
        key(&c, &gw, json!({"name": "quiet", "limits": {"per_day": {"total_tokens": 1000000}}}))
            .await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let page = c.send(Method::GET, &format!("/gateways/{gw}/keys/{k}"), Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for id in ["key-tokens-hour", "key-requests-hour", "key-tokens-minute", "key-requests-minute"] {
        let chart = figure(&page.body, id);
        assert!(chart.contains("Nothing from"), "{id}: {chart}");
        assert!(!chart.contains("<g class=\"column\""), "{id}: {chart}");
        assert!(!chart.contains("data-limit"), "no limits per hour or minute: {chart}");
    }
    assert!(page.body.contains(r#"id="key-last-used"><span class="sub">Never"#));
    assert!(page.body.contains(r#"id="key-children"><span class="sub">None"#));
    assert!(
        usage_row(&page.body, "day")
            .contains(r#"<td class="num">0<span class="sub">of 1,000,000, 1,000,000 left"#)
    );

    for path in [
        format!("/gateways/{gw}/keys/{}", uuid_like()),
        format!("/gateways/{other}/keys/{k}"),
        format!("/gateways/{gw}/keys/not-a-uuid"),
    ] {
        let missing = c.send(Method::GET, &path, Some(&cookie), None).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{path}: {}", missing.body);
    }
}

fn uuid_like() -> &'static str {
    "0b7f3c2e-0000-4000-8000-000000000001"
}

#[tokio::test]
async fn an_operator_resets_a_keys_usage_from_its_page() {
    let c = Console::start().await;
    let gw = gateway(&c, "chat").await;
    let k = key(&c, &gw, json!({"name": "busy"})).await;
    clear_of_a_window_end().await;
    let now = Utc::now();
    let hour = Window::Hour.start_of(now.timestamp_millis());
    let report = UsageReport {
        keys: vec![entry(&k, Window::Hour, hour, usage(5, 500, 50))],
        skipped: vec![],
    };
    c.store
        .record_key_usage(NonZeroU64::new(9).unwrap(), &NodeId("dp".into()), &report, now)
        .await
        .unwrap();

    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let path = format!("/gateways/{gw}/keys/{k}");
    let page = c.send(Method::GET, &path, Some(&cookie), None).await;
    assert!(usage_row(&page.body, "hour").contains(r#"<td class="num">550</td>"#), "{}", page.body);
    let form =
        serde_urlencoded::to_string([("_csrf", page.csrf().as_str()), ("back", "key")]).unwrap();
    let reset =
        c.send(Method::POST, &format!("{path}/reset-usage"), Some(&cookie), Some(&form)).await;
    assert_eq!(reset.status, StatusCode::SEE_OTHER, "{}", reset.body);
    assert_eq!(reset.header("location"), format!("{path}?reset=1"));
    let after = c.send(Method::GET, &format!("{path}?reset=1"), Some(&cookie), None).await;
    assert!(after.body.contains("Usage reset"), "{}", after.body);
    assert!(usage_row(&after.body, "hour").contains(r#"<td class="num">0</td>"#), "{}", after.body);
    // The history before the reset's windows is kept; this hour counts from zero.
    assert!(figure(&after.body, "key-tokens-hour").contains("Nothing from"));
}
