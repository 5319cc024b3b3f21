//! Happy paths of every resource, on a real store.

use http::{Method, StatusCode, header};
use modelgw_model::ConfigVersion;
use serde_json::json;

use crate::harness::{Harness, endpoint_body, id_of};

const KEY_A: &str = "azkey-AAAA-0123456789abcdef-1111";
const KEY_B: &str = "azkey-BBBB-fedcba9876543210-2222";

#[tokio::test]
async fn inference_endpoint_crud() {
    let h = Harness::start().await;
    let v0 = h.version().await;

    let created = h
        .call(Method::POST, "/api/v1/inference-endpoints", Some(endpoint_body("eus", KEY_A)))
        .await
        .expect(StatusCode::CREATED);
    let body = created.json();
    let id = id_of(&body);
    let location =
        created.headers.get(header::LOCATION).expect("Location").to_str().expect("ascii");
    assert_eq!(location, format!("/api/v1/inference-endpoints/{id}"));
    assert_eq!(created.content_type(), "application/json");
    assert_eq!(body["name"], "eus");
    assert_eq!(body["platform"], "azure_openai");
    assert_eq!(
        body["endpoint"], "https://contoso-eastus.openai.azure.com",
        "trailing slash stripped"
    );
    assert_eq!(body["deployment"], "gpt-4o");
    assert_eq!(body["model_name"], "gpt-4o");
    assert_eq!(body["model_version"], "2024-11-20");
    assert_eq!(body["region"], "eastus");
    assert_eq!(body["api_key_hint"], "…1111");
    assert_eq!(body["state"], "healthy");
    assert!(body.get("state_reason").is_none());
    assert!(body.get("api_key").is_none());
    assert!(body["created_at"].is_string() && body["updated_at"].is_string());
    assert_eq!(h.version().await, ConfigVersion(v0.0 + 1));

    let fetched = h.get(location).await.expect(StatusCode::OK).json();
    assert_eq!(fetched, body);
    let list = h.get("/api/v1/inference-endpoints").await.expect(StatusCode::OK).json();
    assert_eq!(list, json!([body]));

    let patched = h
        .call(
            Method::PATCH,
            location,
            Some(
                json!({"name": "eus-2", "region": "eastus2", "endpoint": "http://127.0.0.1:9/v1/"}),
            ),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(patched["name"], "eus-2");
    assert_eq!(patched["region"], "eastus2");
    assert_eq!(patched["endpoint"], "http://127.0.0.1:9/v1");
    assert_eq!(patched["deployment"], "gpt-4o", "fields not in the patch stay");
    assert_eq!(patched["api_key_hint"], "…1111");
    assert_eq!(h.version().await, ConfigVersion(v0.0 + 2));
    let fetched = h.get(location).await.expect(StatusCode::OK).json();
    assert_eq!(fetched, patched, "GET after PATCH shows the change");

    h.call(Method::DELETE, location, None).await.expect(StatusCode::NO_CONTENT);
    assert_eq!(h.version().await, ConfigVersion(v0.0 + 3));
    let gone = h.get(location).await.expect(StatusCode::NOT_FOUND);
    assert_eq!(gone.content_type(), "application/problem+json");
    assert_eq!(h.get("/api/v1/inference-endpoints").await.json(), json!([]));
}

#[tokio::test]
async fn patching_the_api_key_rotates_it_and_changes_the_hint() {
    let h = Harness::start().await;
    let id = id_of(&h.create_endpoint(endpoint_body("eus", KEY_A)).await);
    let path = format!("/api/v1/inference-endpoints/{id}");
    let before = h.version().await;

    let patched = h
        .call(Method::PATCH, &path, Some(json!({"api_key": KEY_B})))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(patched["api_key_hint"], "…2222");
    assert_eq!(h.get(&path).await.json()["api_key_hint"], "…2222");
    assert_eq!(h.version().await, ConfigVersion(before.0 + 1));

    // The data planes get the new key.
    let snapshot = h.store.load_snapshot().await.expect("snapshot");
    let modelgw_model::Credential::ApiKey(key) = &snapshot.endpoints[0].credential else {
        panic!("an api-key credential");
    };
    assert_eq!(key.expose(), KEY_B);
}

#[tokio::test]
async fn gateway_crud_with_member_defaults() {
    let h = Harness::start().await;
    let e1 = id_of(&h.create_endpoint(endpoint_body("eus", KEY_A)).await);
    let e2 = id_of(&h.create_endpoint(endpoint_body("weu", KEY_B)).await);
    let v0 = h.version().await;

    let created = h
        .call(
            Method::POST,
            "/api/v1/gateways",
            Some(json!({"name": "gpt-4o", "endpoints": [
                {"endpoint_id": e1},
                {"endpoint_id": e2, "enabled": false, "priority": 5, "weight": 300},
            ]})),
        )
        .await
        .expect(StatusCode::CREATED);
    let body = created.json();
    let id = id_of(&body);
    let location =
        created.headers.get(header::LOCATION).expect("Location").to_str().expect("ascii");
    assert_eq!(location, format!("/api/v1/gateways/{id}"));
    assert_eq!(body["name"], "gpt-4o");
    assert_eq!(
        body["endpoints"],
        json!([
            {"endpoint_id": e1, "enabled": true, "priority": 0, "weight": 1},
            {"endpoint_id": e2, "enabled": false, "priority": 5, "weight": 300},
        ]),
        "defaults applied, order kept"
    );
    assert_eq!(body["state"], "healthy");
    assert_eq!(h.version().await, ConfigVersion(v0.0 + 1));
    assert_eq!(h.get(location).await.expect(StatusCode::OK).json(), body);
    assert_eq!(h.get("/api/v1/gateways").await.json(), json!([body]));

    // Rename, and replace the members with only e2.
    let patched = h
        .call(
            Method::PATCH,
            location,
            Some(json!({"name": "gpt-4o-mini", "endpoints": [{"endpoint_id": e2, "weight": 7}]})),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(patched["name"], "gpt-4o-mini");
    assert_eq!(
        patched["endpoints"],
        json!([{"endpoint_id": e2, "enabled": true, "priority": 0, "weight": 7}])
    );
    assert_eq!(h.get(location).await.json(), patched, "GET after PATCH shows the change");

    // No enabled member: the gateway cannot serve.
    let disabled = h
        .call(
            Method::PATCH,
            location,
            Some(json!({"endpoints": [{"endpoint_id": e2, "enabled": false}]})),
        )
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(disabled["state"], "error");

    h.call(Method::DELETE, location, None).await.expect(StatusCode::NO_CONTENT);
    h.get(location).await.expect(StatusCode::NOT_FOUND);
    assert_eq!(h.get("/api/v1/gateways").await.json(), json!([]));
    // Its endpoints stay.
    assert_eq!(h.get("/api/v1/inference-endpoints").await.json().as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn gateway_keys_are_shown_once_and_can_be_revoked() {
    let h = Harness::start().await;
    let gw = id_of(&h.create_gateway(json!({"name": "gpt-4o", "endpoints": []})).await);
    let keys_path = format!("/api/v1/gateways/{gw}/keys");
    let v0 = h.version().await;

    let created = h
        .call(Method::POST, &keys_path, Some(json!({"name": "billing"})))
        .await
        .expect(StatusCode::CREATED)
        .json();
    let key = created["key"].as_str().expect("key shown once").to_owned();
    let key_id = id_of(&created);
    assert!(key.starts_with("mgw_"), "{key}");
    assert_eq!(created["name"], "billing");
    assert_eq!(created["hint"], format!("…{}", &key[key.len() - 4..]));
    assert!(created["created_at"].is_string());
    assert_eq!(h.version().await, ConfigVersion(v0.0 + 1));

    let listed = h.get(&keys_path).await.expect(StatusCode::OK);
    assert!(!listed.text.contains(&key), "list shows the key: {}", listed.text);
    let listed = listed.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["id"], key_id.as_str());
    assert_eq!(listed[0]["name"], "billing");
    assert_eq!(listed[0]["hint"], created["hint"]);
    assert!(listed[0].get("key").is_none());
    assert!(listed[0]["revoked_at"].is_null());

    // The data planes know the key by its hash.
    let snapshot = h.store.load_snapshot().await.expect("snapshot");
    assert_eq!(snapshot.gateways[0].keys[0].sha256, modelgw_model::gateway_key_hash(&key));

    h.call(Method::DELETE, &format!("{keys_path}/{key_id}"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(h.version().await, ConfigVersion(v0.0 + 2));
    let listed = h.get(&keys_path).await.expect(StatusCode::OK).json();
    assert!(listed[0]["revoked_at"].is_string(), "revoked key listed with revoked_at: {listed}");
    let snapshot = h.store.load_snapshot().await.expect("snapshot");
    assert!(snapshot.gateways[0].keys.is_empty(), "revoked keys leave the snapshot");
}

#[tokio::test]
async fn deleting_an_endpoint_in_use_needs_force() {
    let h = Harness::start().await;
    let e1 = id_of(&h.create_endpoint(endpoint_body("eus", KEY_A)).await);
    let e2 = id_of(&h.create_endpoint(endpoint_body("weu", KEY_B)).await);
    let gw = id_of(
        &h.create_gateway(
            json!({"name": "gpt-4o", "endpoints": [{"endpoint_id": e1}, {"endpoint_id": e2}]}),
        )
        .await,
    );
    let path = format!("/api/v1/inference-endpoints/{e1}");
    let before = (h.version().await, h.lists().await);

    let refused = h.call(Method::DELETE, &path, None).await.expect(StatusCode::CONFLICT);
    assert_eq!(refused.content_type(), "application/problem+json");
    let problem = refused.json();
    assert_eq!(problem["gateways"], json!(["gpt-4o"]));
    assert!(problem["detail"].as_str().expect("detail").contains("gpt-4o"), "{problem}");
    assert_eq!((h.version().await, h.lists().await), before, "nothing changed");

    h.call(Method::DELETE, &format!("{path}?force=true"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(h.version().await, ConfigVersion(before.0.0 + 1));
    h.get(&path).await.expect(StatusCode::NOT_FOUND);
    let gateway = h.get(&format!("/api/v1/gateways/{gw}")).await.expect(StatusCode::OK).json();
    assert_eq!(
        gateway["endpoints"],
        json!([{"endpoint_id": e2, "enabled": true, "priority": 0, "weight": 1}]),
        "the gateway no longer lists it"
    );
}

#[tokio::test]
async fn status_shows_the_config_version() {
    let h = Harness::start().await;
    h.create_endpoint(endpoint_body("eus", KEY_A)).await;
    let status = h.get("/api/v1/status").await.expect(StatusCode::OK).json();
    assert_eq!(status["config_version"], h.version().await.0);
    assert_eq!(status["data_planes"], json!([]));
}

#[tokio::test]
async fn every_mutation_is_announced_to_distribution() {
    let h = Harness::start().await;
    let e = id_of(&h.create_endpoint(endpoint_body("eus", KEY_A)).await);
    h.wait_for_published(h.version().await).await;
    let gw = id_of(
        &h.create_gateway(json!({"name": "gpt-4o", "endpoints": [{"endpoint_id": e}]})).await,
    );
    h.wait_for_published(h.version().await).await;
    h.call(
        Method::PATCH,
        &format!("/api/v1/inference-endpoints/{e}"),
        Some(json!({"region": "x"})),
    )
    .await
    .expect(StatusCode::OK);
    h.wait_for_published(h.version().await).await;
    let key = h
        .call(Method::POST, &format!("/api/v1/gateways/{gw}/keys"), Some(json!({"name": "k"})))
        .await
        .expect(StatusCode::CREATED)
        .json();
    h.wait_for_published(h.version().await).await;
    h.call(Method::DELETE, &format!("/api/v1/gateways/{gw}/keys/{}", id_of(&key)), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    h.wait_for_published(h.version().await).await;
    h.call(Method::PATCH, &format!("/api/v1/gateways/{gw}"), Some(json!({"name": "gpt-4o-b"})))
        .await
        .expect(StatusCode::OK);
    h.wait_for_published(h.version().await).await;
    h.call(Method::DELETE, &format!("/api/v1/gateways/{gw}"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    h.wait_for_published(h.version().await).await;
    h.call(Method::DELETE, &format!("/api/v1/inference-endpoints/{e}"), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    h.wait_for_published(h.version().await).await;
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let h = Harness::start().await;
    let ok = h.get("/api/v1/status").await.expect(StatusCode::OK);
    let id = ok.headers.get("x-request-id").expect("x-request-id").to_str().expect("ascii");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let missing = h.get("/api/v1/gateways/0190a3b4-0000-7000-8000-000000000000").await;
    let missing = missing.expect(StatusCode::NOT_FOUND);
    let header_id =
        missing.headers.get("x-request-id").expect("x-request-id").to_str().expect("ascii");
    assert_eq!(missing.json()["request_id"], header_id, "problem names the request id");
}

#[tokio::test]
async fn internal_errors_answer_a_generic_problem() {
    use sqlx::Connection;
    let h = Harness::start().await;
    let version = h.version().await;
    // Break the database under the store: the table its queries need is gone.
    let mut conn = sqlx::SqliteConnection::connect(&h.database_url).await.expect("connect");
    sqlx::query("DROP TABLE inference_endpoints").execute(&mut conn).await.expect("drop");
    conn.close().await.expect("close");

    for reply in [
        h.get("/api/v1/inference-endpoints").await,
        h.call(Method::POST, "/api/v1/inference-endpoints", Some(endpoint_body("eus", KEY_A)))
            .await,
    ] {
        let reply = reply.expect(StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.content_type(), "application/problem+json");
        let problem = reply.json();
        assert_eq!(problem["type"], "urn:modelgw:problem:internal");
        let header_id =
            reply.headers.get("x-request-id").expect("x-request-id").to_str().expect("ascii");
        assert_eq!(problem["request_id"], header_id);
        for internal in ["inference_endpoints", "table", "sql", "SQL", "database", KEY_A] {
            assert!(!reply.text.contains(internal), "leaks {internal:?}: {}", reply.text);
        }
    }
    assert_eq!(h.version().await, version, "the failed create wrote nothing");
}

#[tokio::test]
async fn an_endpoint_can_use_entra_auth_and_switch_modes() {
    use modelgw_model::{Credential, DEFAULT_ENTRA_SCOPE};
    let h = Harness::start().await;
    let credential = |snapshot: &modelgw_model::Snapshot| snapshot.endpoints[0].credential.clone();

    // Entra mode takes no key; api_key mode needs one.
    let mut with_key = endpoint_body("eus", KEY_A);
    with_key["auth"] = json!("entra");
    let reply = h
        .call(Method::POST, "/api/v1/inference-endpoints", Some(with_key))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["api_key"]);
    assert!(!reply.text.contains(KEY_A), "the key is never echoed");
    let mut keyless = endpoint_body("eus", KEY_A);
    keyless.as_object_mut().expect("object").remove("api_key");
    let reply = h
        .call(Method::POST, "/api/v1/inference-endpoints", Some(keyless.clone()))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["api_key"]);

    keyless["auth"] = json!("entra");
    let created = h
        .call(Method::POST, "/api/v1/inference-endpoints", Some(keyless))
        .await
        .expect(StatusCode::CREATED)
        .json();
    assert_eq!(created["auth"], "entra");
    assert!(created.get("api_key_hint").is_none(), "no key, no hint: {created}");
    let snapshot = h.store.load_snapshot().await.expect("snapshot");
    assert_eq!(credential(&snapshot), Credential::Entra { scope: DEFAULT_ENTRA_SCOPE.to_owned() });

    // Setting a key switches to api_key mode; `auth: entra` switches back and drops it.
    let path = format!("/api/v1/inference-endpoints/{}", id_of(&created));
    let patched =
        h.call(Method::PATCH, &path, Some(json!({"api_key": KEY_B}))).await.expect(StatusCode::OK);
    assert_eq!(patched.json()["auth"], "api_key");
    assert_eq!(patched.json()["api_key_hint"], "…2222");
    let Credential::ApiKey(key) = credential(&h.store.load_snapshot().await.expect("snapshot"))
    else {
        panic!("an api-key credential");
    };
    assert_eq!(key.expose(), KEY_B);
    let reply = h
        .call(Method::PATCH, &path, Some(json!({"auth": "entra", "api_key": KEY_A})))
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["api_key"]);
    let patched =
        h.call(Method::PATCH, &path, Some(json!({"auth": "entra"}))).await.expect(StatusCode::OK);
    assert_eq!(patched.json()["auth"], "entra");
    assert!(patched.json().get("api_key_hint").is_none());
    assert_eq!(
        credential(&h.store.load_snapshot().await.expect("snapshot")),
        Credential::Entra { scope: DEFAULT_ENTRA_SCOPE.to_owned() }
    );
    let listed = h.get("/api/v1/inference-endpoints").await.json();
    assert_eq!(listed[0]["auth"], "entra");
}

#[tokio::test]
async fn a_gateways_pin_key_goes_to_data_planes_only() {
    use base64::Engine as _;
    let h = Harness::start().await;
    let e1 = id_of(&h.create_endpoint(endpoint_body("eus", KEY_A)).await);
    let gw = id_of(
        &h.create_gateway(json!({"name": "gpt-4o", "endpoints": [{"endpoint_id": e1}]})).await,
    );
    let snapshot = h.store.load_snapshot().await.expect("snapshot");
    let key = snapshot.gateways[0].pin_key.expose().to_vec();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let spellings = [
        hex.clone(),
        hex.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(&key),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key),
        format!("{key:?}"),
        serde_json::to_string(&key).expect("json"),
    ];
    for path in [
        "/api/v1/gateways".to_owned(),
        format!("/api/v1/gateways/{gw}"),
        "/api/v1/audit-log".to_owned(),
        "/api/v1/status".to_owned(),
    ] {
        let reply = h.get(&path).await.expect(StatusCode::OK);
        assert!(!reply.text.contains("pin_key"), "{path}: {}", reply.text);
        for spelling in &spellings {
            assert!(!reply.text.contains(spelling.as_str()), "{path} shows the pin key");
        }
    }
    assert!(!format!("{snapshot:?}").contains(&format!("{key:?}")), "Debug redacts it");
}
