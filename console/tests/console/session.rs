//! Signing in and out, the session cookie, CSRF, roles, and what the console serves beside
//! the JSON API.

use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use tower::ServiceExt;

use crate::harness::{ADMIN_TOKEN, Console, HOST};

#[tokio::test]
async fn pages_need_a_session_and_the_sign_in_page_gives_one() {
    let c = Console::start().await;
    let page = c.send(Method::GET, "/", None, None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(page.header("location").starts_with("/sign-in"), "{:?}", page.headers);

    let form = c.send(Method::GET, "/sign-in", None, None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains(r#"name="token""#));
    assert!(form.header("content-security-policy").contains("script-src 'self'"));

    // A wrong token: refused next to the field, no session.
    let refused = c
        .send(Method::POST, "/sign-in", None, Some("token=mgwadm_not-a-real-token-000000000000"))
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.body.contains("error-token") && refused.body.contains("not accepted"));
    assert!(refused.headers.get(header::SET_COOKIE).is_none());

    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let overview = c.send(Method::GET, "/", Some(&cookie), None).await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.body);
    assert!(overview.body.contains("<title>Overview"));
    assert!(overview.body.contains("bootstrap"), "the operator's name is shown");
    assert_eq!(overview.header("cache-control"), "no-store");
    // The credential never reaches the page.
    assert!(!overview.body.contains(ADMIN_TOKEN));
}

#[tokio::test]
async fn the_session_cookie_is_http_only_strict_and_secure_off_loopback() {
    let c = Console::start().await;
    let page = c.send(Method::POST, "/sign-in", None, Some(&format!("token={ADMIN_TOKEN}"))).await;
    let set = page.header("set-cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains(ADMIN_TOKEN), "the credential is sealed: {set}");

    let req = Request::builder()
        .method(Method::POST)
        .uri("/sign-in")
        .header(header::HOST, "console.example.com")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={ADMIN_TOKEN}")))
        .unwrap();
    let res = c.router.clone().oneshot(req).await.unwrap();
    let set = res.headers().get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(set.starts_with("__Host-modelgw_session=") && set.contains("; Secure"), "{set}");
}

#[tokio::test]
async fn a_form_post_without_the_csrf_token_or_from_another_site_is_refused() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let overview = c.send(Method::GET, "/", Some(&cookie), None).await;
    let csrf = overview.csrf();

    let missing = c.send(Method::POST, "/sign-out", Some(&cookie), Some("")).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN, "{}", missing.body);
    let wrong = c.send(Method::POST, "/sign-out", Some(&cookie), Some("_csrf=not-the-token")).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    // Still signed in: the refused posts did nothing.
    assert_eq!(c.send(Method::GET, "/", Some(&cookie), None).await.status, StatusCode::OK);

    // The right token from another site (the browser says so): refused too.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/sign-out")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &cookie)
        .header("sec-fetch-site", "cross-site")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("_csrf={csrf}")))
        .unwrap();
    assert_eq!(c.router.clone().oneshot(req).await.unwrap().status(), StatusCode::FORBIDDEN);

    let out =
        c.send(Method::POST, "/sign-out", Some(&cookie), Some(&format!("_csrf={csrf}"))).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
}

#[tokio::test]
async fn a_revoked_token_ends_its_console_session() {
    let c = Console::start().await;
    let token = c.api_token("viewer").await;
    let cookie = c.sign_in(&token).await;
    assert_eq!(c.send(Method::GET, "/endpoints", Some(&cookie), None).await.status, StatusCode::OK);
    // Revoke it through the API as the admin.
    let list = Request::builder()
        .uri("/api/v1/api-tokens")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let res = c.router.clone().oneshot(list).await.unwrap();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    let tokens: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let id = tokens.as_array().unwrap()[0]["id"].as_str().unwrap().to_owned();
    let revoke = Request::builder()
        .method(Method::DELETE)
        .uri(format!("/api/v1/api-tokens/{id}"))
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert!(c.router.clone().oneshot(revoke).await.unwrap().status().is_success());

    let after = c.send(Method::GET, "/endpoints", Some(&cookie), None).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.header("location"), "/sign-in?signed_out=revoked");
}

#[tokio::test]
async fn a_viewer_is_offered_no_changes() {
    let c = Console::start().await;
    let viewer = c.sign_in(&c.api_token("viewer").await).await;
    let operator = c.sign_in(&c.api_token("operator").await).await;
    let as_viewer = c.send(Method::GET, "/endpoints", Some(&viewer), None).await;
    let as_operator = c.send(Method::GET, "/endpoints", Some(&operator), None).await;
    assert!(as_operator.body.contains(r#"href="/import""#));
    assert!(!as_viewer.body.contains(r#"href="/import""#), "{}", as_viewer.body);
    assert!(as_viewer.body.contains("viewer"));
}

#[tokio::test]
async fn the_json_api_is_still_served_beside_the_console() {
    let c = Console::start().await;
    let doc = c.send(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body.contains("\"openapi\""));
    let unknown = c.send(Method::GET, "/api/v1/nope", None, None).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "unknown API routes still need a token");
}

#[tokio::test]
async fn assets_are_served_with_long_lived_caching() {
    let c = Console::start().await;
    let page = c.send(Method::GET, "/sign-in", None, None).await;
    let re = regex::Regex::new(r#"src="(/assets/htmx\.[0-9a-f]+\.min\.js)""#).unwrap();
    let url = re.captures(&page.body).expect("htmx is linked")[1].to_owned();
    let js = c.send(Method::GET, &url, None, None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.header("cache-control").contains("immutable"));
    assert!(js.body.contains("htmx"));
    assert_eq!(
        c.send(Method::GET, "/assets/nope.js", None, None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_large_form_still_passes_the_csrf_check_and_a_huge_one_is_refused_as_too_large() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let csrf = c.send(Method::GET, "/", Some(&cookie), None).await.csrf();
    // A gateway form over 1,000 endpoints sends ~100 KiB; the token comes last.
    let filler: String =
        (0..1000).map(|i| format!("priority_{i:036}=0&weight_{i:036}=1&")).collect();
    assert!(filler.len() > 64 * 1024);
    let large = c
        .send(Method::POST, "/sign-out", Some(&cookie), Some(&format!("{filler}_csrf={csrf}")))
        .await;
    assert_eq!(large.status, StatusCode::SEE_OTHER, "{}", large.body);
    let huge = "x".repeat(2 * 1024 * 1024);
    let refused = c
        .send(Method::POST, "/sign-out", Some(&cookie), Some(&format!("{huge}&_csrf={csrf}")))
        .await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", refused.body);
}

#[tokio::test]
async fn behind_a_proxy_that_rewrites_host_a_same_origin_post_is_accepted() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let csrf = c.send(Method::GET, "/", Some(&cookie), None).await.csrf();
    // The browser talks to console.example.com; the proxy sends the backend's Host.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/sign-out")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &cookie)
        .header("sec-fetch-site", "same-origin")
        .header(header::ORIGIN, "https://console.example.com")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("_csrf={csrf}")))
        .unwrap();
    assert_eq!(c.router.clone().oneshot(req).await.unwrap().status(), StatusCode::SEE_OTHER);
    // Without Sec-Fetch-Site (an old browser), a foreign Origin is still refused.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/sign-out")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &cookie)
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("_csrf={csrf}")))
        .unwrap();
    assert_eq!(c.router.clone().oneshot(req).await.unwrap().status(), StatusCode::FORBIDDEN);
}
