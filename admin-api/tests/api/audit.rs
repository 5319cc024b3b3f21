//! The audit log: every change appears once with its actor, request id and address, a secret
//! never does, a refused change leaves no entry, and `GET /api/v1/audit-log` filters and pages.

use std::collections::BTreeSet;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN, Harness, Reply, endpoint_body, id_of};

const KEY_1: &str = "azkey-FIRST-0123456789abcdef";
const KEY_2: &str = "azkey-SECOND-0123456789abcdef";
const KEY_3: &str = "azkey-ROTATED-0123456789abcdef";

/// The request id a reply carries.
fn request_id(reply: &Reply) -> String {
    reply.headers["x-request-id"].to_str().expect("ascii").to_owned()
}

/// Every file of the SQLite database (main file, WAL, shared memory), as text.
fn database_bytes(h: &Harness) -> String {
    let path = h.database_url.trim_start_matches("sqlite://").to_owned();
    let mut text = String::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

#[tokio::test]
async fn every_change_appears_once_with_its_actor_and_no_secret_ever_does() {
    let h = Harness::start().await;
    // (actor, entity, action, entity id, request id) of each change, in order.
    let mut expected: Vec<(String, &str, &str, String, String)> = Vec::new();
    let mut secrets: Vec<String> =
        vec![ADMIN_TOKEN.into(), KEY_1.into(), KEY_2.into(), KEY_3.into()];
    let boot = "bootstrap".to_owned();
    let ops_actor = "token:ops".to_owned();
    let sec_actor = "token:sec".to_owned();

    let create_token = async |name: &str, role: &str, as_token: &str| {
        let reply = h
            .call_as(
                as_token,
                Method::POST,
                "/api/v1/api-tokens",
                Some(json!({"name": name, "role": role})),
            )
            .await
            .expect(StatusCode::CREATED);
        let body = reply.json();
        (id_of(&body), body["token"].as_str().expect("token").to_owned(), request_id(&reply))
    };
    let (ops_id, ops, rid) = create_token("ops", "operator", ADMIN_TOKEN).await;
    expected.push((boot.clone(), "api_token", "create", ops_id, rid));
    let (sec_id, sec, rid) = create_token("sec", "admin", ADMIN_TOKEN).await;
    expected.push((boot.clone(), "api_token", "create", sec_id, rid));
    secrets.extend([ops.clone(), sec.clone()]);

    let call = async |token: &str, method: Method, path: &str, body: Option<Value>, status| {
        let reply = h.call_as(token, method, path, body).await.expect(status);
        let rid = request_id(&reply);
        (reply, rid)
    };
    let (r, rid) = call(
        &ops,
        Method::POST,
        "/api/v1/inference-endpoints",
        Some(endpoint_body("eus", KEY_1)),
        StatusCode::CREATED,
    )
    .await;
    let eus = id_of(&r.json());
    expected.push((ops_actor.clone(), "inference_endpoint", "create", eus.clone(), rid));
    let (r, rid) = call(
        &ops,
        Method::POST,
        "/api/v1/inference-endpoints",
        Some(endpoint_body("weu", KEY_2)),
        StatusCode::CREATED,
    )
    .await;
    let weu = id_of(&r.json());
    expected.push((ops_actor.clone(), "inference_endpoint", "create", weu.clone(), rid));
    let eus_path = format!("/api/v1/inference-endpoints/{eus}");
    let (_, rid) =
        call(&ops, Method::PATCH, &eus_path, Some(json!({"api_key": KEY_3})), StatusCode::OK).await;
    expected.push((ops_actor.clone(), "inference_endpoint", "update", eus.clone(), rid));
    let (_, rid) =
        call(&ops, Method::PATCH, &eus_path, Some(json!({"name": "eus2"})), StatusCode::OK).await;
    expected.push((ops_actor.clone(), "inference_endpoint", "update", eus.clone(), rid));
    let members = json!([{"endpoint_id": eus}, {"endpoint_id": weu}]);
    let (r, rid) = call(
        &ops,
        Method::POST,
        "/api/v1/gateways",
        Some(json!({"name": "gw", "endpoints": members})),
        StatusCode::CREATED,
    )
    .await;
    let gw = id_of(&r.json());
    expected.push((ops_actor.clone(), "gateway", "create", gw.clone(), rid));
    let gw_path = format!("/api/v1/gateways/{gw}");
    let (_, rid) = call(
        &ops,
        Method::PATCH,
        &gw_path,
        Some(json!({"routing": {"strategy": "fastest"}})),
        StatusCode::OK,
    )
    .await;
    expected.push((ops_actor.clone(), "gateway", "update", gw.clone(), rid));
    let (r, rid) = call(
        &ops,
        Method::POST,
        &format!("{gw_path}/keys"),
        Some(json!({"name": "billing"})),
        StatusCode::CREATED,
    )
    .await;
    let key = r.json();
    secrets.push(key["key"].as_str().expect("key").to_owned());
    let key_id = id_of(&key);
    expected.push((ops_actor.clone(), "gateway_key", "create", key_id.clone(), rid));
    let key_path = format!("{gw_path}/keys/{key_id}");
    let (_, rid) = call(&ops, Method::DELETE, &key_path, None, StatusCode::NO_CONTENT).await;
    expected.push((ops_actor.clone(), "gateway_key", "revoke", key_id.clone(), rid));
    // Revoking again changes nothing, so it is not an entry.
    call(&ops, Method::DELETE, &key_path, None, StatusCode::NO_CONTENT).await;
    let (ci_id, ci, rid) = create_token("ci", "viewer", &sec).await;
    expected.push((sec_actor.clone(), "api_token", "create", ci_id.clone(), rid));
    secrets.push(ci);
    let (_, rid) = call(
        &sec,
        Method::DELETE,
        &format!("/api/v1/api-tokens/{ci_id}"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    expected.push((sec_actor.clone(), "api_token", "revoke", ci_id.clone(), rid));
    // A forced delete also changes the gateway it leaves: an entry for each.
    let (_, rid) = call(
        &ops,
        Method::DELETE,
        &format!("/api/v1/inference-endpoints/{weu}?force=true"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    expected.push((ops_actor.clone(), "gateway", "update", gw.clone(), rid.clone()));
    expected.push((ops_actor.clone(), "inference_endpoint", "delete", weu.clone(), rid));
    let (_, rid) = call(&ops, Method::DELETE, &gw_path, None, StatusCode::NO_CONTENT).await;
    expected.push((ops_actor.clone(), "gateway", "delete", gw.clone(), rid));
    let (_, rid) =
        call(&ops, Method::PATCH, &eus_path, Some(json!({"auth": "entra"})), StatusCode::OK).await;
    expected.push((ops_actor.clone(), "inference_endpoint", "update", eus.clone(), rid));

    let log = h.audit_log().await;
    let seen: Vec<(String, &str, &str, String, String)> = log
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().expect("actor").to_owned(),
                e["entity"].as_str().expect("entity"),
                e["action"].as_str().expect("action"),
                e["entity_id"].as_str().expect("entity_id").to_owned(),
                e["request_id"].as_str().expect("request_id").to_owned(),
            )
        })
        .collect();
    assert_eq!(seen, expected, "each change once, in order, with its actor and request id");
    for e in &log {
        assert_eq!(e["client_ip"], "192.0.2.7", "{e}");
        let config = e["entity"] != "api_token";
        assert_eq!(e["config_version"].is_u64(), config, "{e}");
        for side in ["before", "after"] {
            if let Some(fields) = e[side].as_object() {
                for forbidden in ["api_key", "key", "token", "sha256", "api_key_ciphertext"] {
                    assert!(!fields.contains_key(forbidden), "{side}.{forbidden} in {e}");
                }
            }
        }
    }

    // What the entries say, for a few of them.
    let rotation = &log[4];
    assert_eq!(rotation["before"], json!({"api_key_hint": "…cdef"}));
    assert_eq!(rotation["after"], json!({"api_key_hint": "…cdef"}), "a rotation keeps its entry");
    assert_eq!(log[5]["before"], json!({"name": "eus"}));
    assert_eq!(log[5]["after"], json!({"name": "eus2"}));
    assert_eq!(log[2]["after"]["api_key_hint"], "…cdef");
    assert_eq!(log[2]["after"]["region"], "eastus");
    assert!(log[2].get("before").is_none());
    let forced = &log[12];
    assert_eq!(forced["entity_name"], "gw");
    assert_eq!(forced["before"]["endpoints"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        forced["after"]["endpoints"],
        json!([{"endpoint_id": eus, "enabled": true, "priority": 0, "weight": 1}])
    );
    let entra = log.last().expect("entry");
    assert_eq!(entra["after"], json!({"auth": "entra", "api_key_hint": ""}));

    // No secret anywhere: not in the log's answer, not in any byte of the database.
    let text = serde_json::to_string(&log).expect("json");
    let database = database_bytes(&h);
    assert!(database.contains("token:ops"), "the database files were read");
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret is in the audit log: {text}");
        assert!(!database.contains(secret.as_str()), "a secret is in the database files");
    }
}

#[tokio::test]
async fn a_refused_change_leaves_no_entry() {
    let h = Harness::start().await;
    let e = id_of(&h.create_endpoint(endpoint_body("eus", KEY_1)).await);
    let gw =
        id_of(&h.create_gateway(json!({"name": "gw", "endpoints": [{"endpoint_id": e}]})).await);
    h.api_token("ci", "viewer").await;
    let before = (h.audit_log().await, h.version().await);
    let unknown = uuid::Uuid::new_v4();
    let refused: Vec<(Method, String, Option<Value>, StatusCode)> = vec![
        // Validation, before the store is called.
        (
            Method::POST,
            "/api/v1/inference-endpoints".into(),
            Some(json!({"name": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // Store errors inside the transaction: a unique name, an unknown member, in use.
        (
            Method::POST,
            "/api/v1/inference-endpoints".into(),
            Some(endpoint_body("eus", KEY_2)),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            "/api/v1/gateways".into(),
            Some(json!({"name": "gw2", "endpoints": [{"endpoint_id": unknown}]})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (Method::DELETE, format!("/api/v1/inference-endpoints/{e}"), None, StatusCode::CONFLICT),
        (
            Method::PATCH,
            format!("/api/v1/inference-endpoints/{unknown}"),
            Some(json!({"region": "x"})),
            StatusCode::NOT_FOUND,
        ),
        (Method::DELETE, format!("/api/v1/gateways/{unknown}"), None, StatusCode::NOT_FOUND),
        (
            Method::POST,
            format!("/api/v1/gateways/{unknown}/keys"),
            Some(json!({"name": "k"})),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            format!("/api/v1/gateways/{gw}/keys/{unknown}"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/v1/api-tokens".into(),
            Some(json!({"name": "ci", "role": "admin"})),
            StatusCode::CONFLICT,
        ),
        (Method::DELETE, format!("/api/v1/api-tokens/{unknown}"), None, StatusCode::NOT_FOUND),
    ];
    for (method, path, body, status) in refused {
        h.call(method.clone(), &path, body).await.expect(status);
        assert_eq!((h.audit_log().await, h.version().await), before, "{method} {path}");
    }
}

/// Fetches `query` page by page (`limit` per page); every page but the last is full.
async fn all_pages(h: &Harness, query: &str, limit: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/audit-log?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = h.get(&path).await.expect(StatusCode::OK).json();
        let got = page["entries"].as_array().expect("entries").clone();
        assert!(got.len() <= limit, "{path}: {} entries", got.len());
        entries.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(got.len(), limit, "{path}: a page before the last is full");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    entries
}

fn ids(entries: &[Value]) -> Vec<i64> {
    entries.iter().map(|e| e["id"].as_i64().expect("id")).collect()
}

#[tokio::test]
async fn the_log_filters_and_pages() {
    let h = Harness::start().await;
    let (_, a) = h.api_token("a", "operator").await;
    let (_, b) = h.api_token("b", "operator").await;
    let mut endpoints = Vec::new();
    for name in ["e1", "e2", "e3"] {
        let reply = h
            .call_as(
                &a,
                Method::POST,
                "/api/v1/inference-endpoints",
                Some(endpoint_body(name, KEY_1)),
            )
            .await
            .expect(StatusCode::CREATED);
        endpoints.push(id_of(&reply.json()));
    }
    let gw = id_of(
        &h.call_as(
            &b,
            Method::POST,
            "/api/v1/gateways",
            Some(json!({"name": "g", "endpoints": []})),
        )
        .await
        .expect(StatusCode::CREATED)
        .json(),
    );
    h.call_as(&b, Method::PATCH, &format!("/api/v1/gateways/{gw}"), Some(json!({"name": "g2"})))
        .await
        .expect(StatusCode::OK);
    h.call_as(&a, Method::DELETE, &format!("/api/v1/inference-endpoints/{}", endpoints[2]), None)
        .await
        .expect(StatusCode::NO_CONTENT);

    let all = h.get("/api/v1/audit-log").await.expect(StatusCode::OK).json();
    assert_eq!(all["next_cursor"], json!(null));
    let all = all["entries"].as_array().expect("entries").clone();
    assert_eq!(all.len(), 8, "2 tokens, 3 endpoints, a gateway and its rename, a delete");
    let all_ids = ids(&all);
    assert!(all_ids.windows(2).all(|w| w[0] > w[1]), "newest first: {all_ids:?}");

    let matching = |f: &dyn Fn(&Value) -> bool| -> Vec<i64> {
        all.iter().filter(|e| f(e)).map(|e| e["id"].as_i64().expect("id")).collect()
    };
    let filtered = async |query: &str| ids(&all_pages(&h, query, 500).await);
    assert_eq!(
        filtered("&entity=inference_endpoint").await,
        matching(&|e| e["entity"] == "inference_endpoint")
    );
    assert_eq!(filtered("&entity=inference_endpoint").await.len(), 4);
    let e3 = &endpoints[2];
    assert_eq!(
        filtered(&format!("&entity_id={e3}")).await,
        matching(&|e| e["entity_id"] == e3.as_str())
    );
    assert_eq!(filtered(&format!("&entity_id={e3}")).await.len(), 2);
    assert_eq!(filtered("&actor=token:b").await, matching(&|e| e["actor"] == "token:b"));
    assert_eq!(filtered("&actor=token:b").await.len(), 2);
    assert_eq!(filtered("&action=delete").await, matching(&|e| e["action"] == "delete"));
    assert_eq!(
        filtered("&actor=token:a&action=create&entity=inference_endpoint").await.len(),
        3,
        "filters combine"
    );
    assert!(filtered("&actor=token:nobody").await.is_empty());

    // Time: `since` is inclusive, `until` exclusive; together they split the log.
    let middle = all[4]["at"].as_str().expect("at").to_owned();
    let encoded = middle.replace('+', "%2B");
    let since = filtered(&format!("&since={encoded}")).await;
    let until = filtered(&format!("&until={encoded}")).await;
    assert!(since.contains(&all_ids[4]) && !until.contains(&all_ids[4]));
    let mut both: Vec<i64> = since.iter().chain(&until).copied().collect();
    both.sort_unstable_by(|x, y| y.cmp(x));
    assert_eq!(both, all_ids, "since and until split the log: {since:?} {until:?}");
    let window = filtered(&format!("&since={encoded}&until={encoded}")).await;
    assert!(window.is_empty());

    // Paging: any page size walks the same entries, each once, newest first.
    for limit in [1, 2, 3, 7, 8, 500] {
        assert_eq!(ids(&all_pages(&h, "", limit).await), all_ids, "limit {limit}");
    }
    assert_eq!(
        ids(&all_pages(&h, "&entity=inference_endpoint", 1).await),
        matching(&|e| e["entity"] == "inference_endpoint"),
        "paging keeps the filter"
    );

    // Refused queries name the problem; an unknown cursor of the right shape is just "older
    // than everything there is".
    for query in [
        "limit=0",
        "limit=501",
        "limit=x",
        "cursor=nope",
        "entity=endpoint",
        "action=erase",
        "since=yesterday",
        "colour=blue",
    ] {
        let reply = h.get(&format!("/api/v1/audit-log?{query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}: {}", reply.text);
        assert_eq!(reply.error_fields(), ["query"], "{query}");
    }
    let far =
        h.get("/api/v1/audit-log?cursor=7fffffffffffffff").await.expect(StatusCode::OK).json();
    assert_eq!(far["entries"].as_array().map(Vec::len), Some(8));
    let ids_seen: BTreeSet<i64> = all_ids.iter().copied().collect();
    assert_eq!(ids_seen.len(), 8);
}
