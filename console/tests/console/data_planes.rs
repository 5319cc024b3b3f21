//! The data planes page, with and without data planes.

use http::{Method, StatusCode};

use crate::harness::{ADMIN_TOKEN, Console};

#[tokio::test]
async fn the_data_planes_page_says_when_none_has_connected() {
    let c = Console::start().await;
    let cookie = c.sign_in(ADMIN_TOKEN).await;
    let page = c.send(Method::GET, "/data-planes", Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("<title>Data Planes"));
    assert!(page.body.contains("No data plane has connected"));
    assert!(page.body.contains(r#"id="config-version""#));
}
