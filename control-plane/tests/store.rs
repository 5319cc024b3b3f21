//! Store behaviour, each scenario run on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

#[macro_use]
mod common;

use common::{Backend, TestDb};
use modelgw_control_plane::Store;
use modelgw_control_plane::StoreError;
use modelgw_control_plane::store::{
    AuditAction, AuditContext, AuditEntity, AuditEntry, AuditQuery, AuthMode, AzureImportItem,
    EndpointAuth, EndpointHealthRecord, EndpointPatch, EndpointRecord, GatewayPatch, NewApiToken,
    NewEndpoint, NewGateway,
};
use modelgw_model::wire::{decode_snapshot, encode_snapshot};
use modelgw_model::{
    ConfigVersion, Credential, EndpointId, EndpointState, GatewayId, GatewayKeyId, GatewayMember,
    NodeId, Platform, QuotaPolicy, RoutingPolicy, RoutingStrategy, Secret, Snapshot,
    gateway_key_hash,
};
use sqlx::Row as _;

on_both_backends!(
    endpoint_crud,
    gateway_crud,
    gateway_key_lifecycle,
    failed_calls_change_neither_version_nor_data,
    force_delete_removes_memberships,
    version_and_data_survive_reopening,
    api_key_is_sealed_at_rest,
    a_moved_ciphertext_does_not_decrypt,
    snapshot_round_trips_through_the_wire,
    a_fresh_store_has_a_valid_empty_snapshot,
    admin_token_is_generated_once,
    concurrent_writes_get_distinct_versions,
    gateway_routing_round_trips_and_versions,
    gateways_stored_before_routing_existed_read_as_defaults,
    endpoint_health_is_stored_without_bumping_the_version,
    health_resets_keep_the_latest_and_are_pruned,
    azure_import_upserts_by_arm_resource_id,
    entra_auth_stores_no_key_and_modes_switch,
    every_change_writes_one_audit_row_in_its_transaction,
    api_tokens_are_stored_as_hashes_and_are_not_configuration,
    the_audit_log_filters_and_pages,
    data_plane_tokens_are_stored_as_hashes_unique_while_active_and_revocable,
    every_gateway_gets_a_pin_key_derived_from_the_master_key,
);

const API_KEY: &str = "sk-PLAINTEXT-api-key-3f9a7c21";

fn new_endpoint(name: &str, api_key: &str) -> NewEndpoint {
    NewEndpoint {
        name: name.to_owned(),
        platform: Platform::AzureOpenai,
        endpoint: url::Url::parse(&format!("https://{name}.openai.azure.com")).expect("url"),
        deployment: "gpt-4o".into(),
        model_name: "gpt-4o".into(),
        model_version: "2024-11-20".into(),
        region: "eastus".into(),
        auth: EndpointAuth::ApiKey(Secret::new(api_key)),
    }
}

/// Who the test's changes are recorded as.
fn audit() -> AuditContext {
    AuditContext::system("test")
}

fn member(endpoint_id: EndpointId, priority: u32, weight: u32) -> GatewayMember {
    GatewayMember { endpoint_id, enabled: true, priority, weight }
}

async fn version(store: &Store) -> ConfigVersion {
    store.config_version().await.expect("config version")
}

async fn create_endpoint(store: &Store, name: &str) -> EndpointRecord {
    store
        .create_endpoint(new_endpoint(name, &format!("{API_KEY}-{name}")), &audit())
        .await
        .expect("create endpoint")
        .0
}

fn next(v: ConfigVersion) -> ConfigVersion {
    ConfigVersion(v.0 + 1)
}

async fn endpoint_crud(db: &TestDb) {
    let store = db.open().await;
    let v0 = version(&store).await;

    let (created, v1) =
        store.create_endpoint(new_endpoint("eus", API_KEY), &audit()).await.expect("create");
    assert_eq!(v1, next(v0));
    assert_eq!(version(&store).await, v1);
    assert_eq!(created.name, "eus");
    assert_eq!(created.platform, Platform::AzureOpenai);
    assert_eq!(created.endpoint.as_str(), "https://eus.openai.azure.com/");
    assert_eq!(created.api_key_hint, "…7c21");
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(store.get_endpoint(created.id).await.expect("get"), created);

    let (second, v2) = store
        .create_endpoint(new_endpoint("aus", "sk-another-key-0000"), &audit())
        .await
        .expect("create");
    assert_eq!(v2, next(v1));
    let names: Vec<String> =
        store.list_endpoints().await.expect("list").into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["aus", "eus"], "listed by name");

    // Loaded once before the rotation: the store keeps each opened key (with its sealed form)
    // for the next load, which must see the rotated one.
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let endpoint = snapshot.endpoints.iter().find(|e| e.id == created.id).expect("in snapshot");
    assert_eq!(endpoint.credential, Credential::ApiKey(Secret::new(API_KEY)));

    let patch = EndpointPatch {
        deployment: Some("gpt-4o-mini".into()),
        region: Some("westus".into()),
        auth: Some(EndpointAuth::ApiKey(Secret::new("sk-rotated-key-value-9b8e"))),
        ..EndpointPatch::default()
    };
    let (updated, v3) = store.update_endpoint(created.id, patch, &audit()).await.expect("update");
    assert_eq!(v3, next(v2));
    assert_eq!(updated.deployment, "gpt-4o-mini");
    assert_eq!(updated.region, "westus");
    assert_eq!(updated.name, "eus", "fields not in the patch are kept");
    assert_eq!(updated.model_version, "2024-11-20");
    assert_eq!(updated.api_key_hint, "…9b8e", "rotation changes the hint");
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(store.get_endpoint(created.id).await.expect("get"), updated);
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let endpoint = snapshot.endpoints.iter().find(|e| e.id == created.id).expect("in snapshot");
    assert_eq!(endpoint.credential, Credential::ApiKey(Secret::new("sk-rotated-key-value-9b8e")));

    // A patch without the key keeps the sealed key.
    let (renamed, v4) = store
        .update_endpoint(
            created.id,
            EndpointPatch { name: Some("eus2".into()), ..Default::default() },
            &audit(),
        )
        .await
        .expect("rename");
    assert_eq!(v4, next(v3));
    assert_eq!(renamed.api_key_hint, "…9b8e");
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let endpoint = snapshot.endpoints.iter().find(|e| e.id == created.id).expect("in snapshot");
    assert_eq!(endpoint.credential, Credential::ApiKey(Secret::new("sk-rotated-key-value-9b8e")));

    let v5 = store.delete_endpoint(created.id, false, &audit()).await.expect("delete");
    assert_eq!(v5, next(v4));
    assert!(matches!(
        store.get_endpoint(created.id).await,
        Err(StoreError::NotFound { entity: "inference endpoint", .. })
    ));
    assert_eq!(store.list_endpoints().await.expect("list"), vec![second]);

    // Calls on an unknown id fail without bumping the version.
    let unknown = EndpointId::new();
    assert!(matches!(
        store.delete_endpoint(unknown, true, &audit()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.update_endpoint(unknown, EndpointPatch::default(), &audit()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(version(&store).await, v5);
}

async fn gateway_crud(db: &TestDb) {
    let store = db.open().await;
    let a = create_endpoint(&store, "a").await;
    let b = create_endpoint(&store, "b").await;
    let c = create_endpoint(&store, "c").await;
    let v0 = version(&store).await;

    // Member order is the given order, not id or name order.
    let members = vec![member(c.id, 0, 3), member(a.id, 1, 1), member(b.id, 0, 1)];
    let (gw, v1) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "gpt-4o".into(),
                members: members.clone(),
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("create gateway");
    assert_eq!(v1, next(v0));
    assert_eq!(gw.members, members);
    assert_eq!(store.get_gateway(gw.id).await.expect("get"), gw);

    let (empty, v2) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "empty".into(),
                members: vec![],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("create empty gateway");
    assert_eq!(v2, next(v1));
    assert_eq!(store.list_gateways().await.expect("list"), vec![empty.clone(), gw.clone()]);

    let disabled = GatewayMember { endpoint_id: b.id, enabled: false, priority: 2, weight: 7 };
    let (renamed, v3) = store
        .update_gateway(
            gw.id,
            GatewayPatch {
                routing: None,
                name: Some("gpt-4o-prod".into()),
                members: None,
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("rename");
    assert_eq!(v3, next(v2));
    assert_eq!(renamed.name, "gpt-4o-prod");
    assert_eq!(renamed.members, members, "members kept when not in the patch");
    let (replaced, v4) = store
        .update_gateway(
            gw.id,
            GatewayPatch {
                routing: None,
                name: None,
                members: Some(vec![disabled.clone(), member(a.id, 0, 1)]),
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("replace members");
    assert_eq!(v4, next(v3));
    assert_eq!(replaced.name, "gpt-4o-prod");
    assert_eq!(replaced.members, vec![disabled, member(a.id, 0, 1)]);
    assert_eq!(store.get_gateway(gw.id).await.expect("get"), replaced);

    store.create_gateway_key(gw.id, "ci".into(), &audit()).await.expect("key");
    let v5 = version(&store).await;
    let v6 = store.delete_gateway(gw.id, &audit()).await.expect("delete");
    assert_eq!(v6, next(v5));
    assert!(matches!(
        store.get_gateway(gw.id).await,
        Err(StoreError::NotFound { entity: "gateway", .. })
    ));
    assert!(matches!(store.list_gateway_keys(gw.id).await, Err(StoreError::NotFound { .. })));
    assert_eq!(store.list_gateways().await.expect("list"), vec![empty]);
    // The endpoints themselves stay.
    assert_eq!(store.list_endpoints().await.expect("list").len(), 3);
    let snapshot = store.load_snapshot().await.expect("snapshot");
    assert!(
        snapshot.gateways.iter().all(|g| g.keys.is_empty()),
        "the deleted gateway's keys are gone"
    );

    assert!(matches!(
        store.delete_gateway(gw.id, &audit()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.update_gateway(GatewayId::new(), GatewayPatch::default(), &audit()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(version(&store).await, v6);
}

async fn gateway_key_lifecycle(db: &TestDb) {
    let store = db.open().await;
    let (gw, _) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "gw".into(),
                members: vec![],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    let v0 = version(&store).await;

    let (record, secret, v1) =
        store.create_gateway_key(gw.id, "ci".into(), &audit()).await.expect("create key");
    assert_eq!(v1, next(v0));
    let body = secret.expose().strip_prefix("mgw_").expect("mgw_ prefix");
    assert_eq!(body.len(), 43);
    assert!(body.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    assert_eq!(record.name, "ci");
    assert_eq!(record.gateway_id, gw.id);
    assert_eq!(record.hint, secret.hint());
    assert_eq!(record.revoked_at, None);
    assert!(!format!("{record:?}").contains(secret.expose()));

    let (other, other_secret, v2) =
        store.create_gateway_key(gw.id, "ops".into(), &audit()).await.expect("second key");
    assert_eq!(v2, next(v1));
    assert_ne!(secret, other_secret);
    assert_eq!(
        store.list_gateway_keys(gw.id).await.expect("list"),
        vec![record.clone(), other.clone()]
    );

    let snapshot = store.load_snapshot().await.expect("snapshot");
    let keys = &snapshot.gateways[0].keys;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].id, record.id);
    assert_eq!(keys[0].sha256, gateway_key_hash(secret.expose()), "only the hash is distributed");

    let (revoked, v3) = store.revoke_gateway_key(gw.id, record.id, &audit()).await.expect("revoke");
    assert_eq!(v3, Some(next(v2)));
    assert!(revoked.revoked_at.is_some());
    let listed = store.list_gateway_keys(gw.id).await.expect("list");
    let revoked_at = listed[0].revoked_at.expect("revoked key keeps its row with revoked_at");
    assert_eq!(listed[1], other);
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let ids: Vec<GatewayKeyId> = snapshot.gateways[0].keys.iter().map(|k| k.id).collect();
    assert_eq!(ids, vec![other.id], "revoked keys leave the snapshot");

    // Revoking again succeeds, keeps the first revocation time and commits nothing.
    let (again, v4) =
        store.revoke_gateway_key(gw.id, record.id, &audit()).await.expect("revoke again");
    assert_eq!(v4, None);
    assert_eq!(again.revoked_at, Some(revoked_at));
    assert_eq!(version(&store).await, next(v2));
    assert_eq!(store.list_gateway_keys(gw.id).await.expect("list")[0].revoked_at, Some(revoked_at));

    // Unknown key, key of another gateway, unknown gateway: NotFound, nothing bumped.
    let (gw2, _) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "gw2".into(),
                members: vec![],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    let v5 = version(&store).await;
    assert!(matches!(
        store.revoke_gateway_key(gw.id, GatewayKeyId::new(), &audit()).await,
        Err(StoreError::NotFound { entity: "gateway key", .. })
    ));
    assert!(matches!(
        store.revoke_gateway_key(gw2.id, other.id, &audit()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.create_gateway_key(GatewayId::new(), "x".into(), &audit()).await,
        Err(StoreError::NotFound { entity: "gateway", .. })
    ));
    assert!(matches!(
        store.list_gateway_keys(GatewayId::new()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(version(&store).await, v5);
    assert_eq!(store.list_gateway_keys(gw2.id).await.expect("list"), vec![]);
}

async fn failed_calls_change_neither_version_nor_data(db: &TestDb) {
    let store = db.open().await;
    let a = create_endpoint(&store, "a").await;
    let b = create_endpoint(&store, "b").await;
    let (gw, _) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "gw".into(),
                members: vec![member(a.id, 0, 1)],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "other".into(),
                members: vec![member(a.id, 0, 1)],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");

    let v = version(&store).await;
    let endpoints = store.list_endpoints().await.expect("list");
    let gateways = store.list_gateways().await.expect("list");
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let unchanged = async |what: &str| {
        assert_eq!(version(&store).await, v, "{what}: version bumped");
        assert_eq!(
            store.list_endpoints().await.expect("list"),
            endpoints,
            "{what}: endpoints changed"
        );
        assert_eq!(
            store.list_gateways().await.expect("list"),
            gateways,
            "{what}: gateways changed"
        );
        assert_eq!(
            store.load_snapshot().await.expect("snapshot"),
            snapshot,
            "{what}: snapshot changed"
        );
    };

    let err = store
        .create_endpoint(new_endpoint("a", API_KEY), &audit())
        .await
        .expect_err("duplicate name");
    assert!(matches!(&err, StoreError::Conflict { field, .. } if field == "name"), "{err:?}");
    unchanged("duplicate endpoint name").await;

    let err = store
        .update_endpoint(
            b.id,
            EndpointPatch {
                name: Some("a".into()),
                auth: Some(EndpointAuth::ApiKey(Secret::new("sk-never-stored-1234"))),
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect_err("rename onto an existing name");
    assert!(matches!(&err, StoreError::Conflict { field, .. } if field == "name"), "{err:?}");
    unchanged("rename endpoint onto an existing name").await;

    let err = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "gw".into(),
                members: vec![],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect_err("dup");
    assert!(matches!(&err, StoreError::Conflict { field, .. } if field == "name"), "{err:?}");
    unchanged("duplicate gateway name").await;

    let err = store
        .update_gateway(
            gw.id,
            GatewayPatch {
                routing: None,
                name: Some("other".into()),
                members: None,
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect_err("rename gateway onto an existing name");
    assert!(matches!(&err, StoreError::Conflict { field, .. } if field == "name"), "{err:?}");
    unchanged("rename gateway onto an existing name").await;

    let ghost = EndpointId::new();
    let err = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "new".into(),
                members: vec![member(a.id, 0, 1), member(ghost, 0, 1)],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect_err("unknown member");
    match &err {
        StoreError::UnknownEndpoint { field, endpoint_id } => {
            assert_eq!(field, "endpoints[1].endpoint_id");
            assert_eq!(*endpoint_id, ghost);
        }
        other => panic!("expected UnknownEndpoint, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("endpoints[1].endpoint_id: unknown inference endpoint {ghost}")
    );
    unchanged("create gateway with an unknown member").await;

    let err = store
        .update_gateway(
            gw.id,
            GatewayPatch {
                routing: None,
                name: Some("renamed".into()),
                members: Some(vec![member(ghost, 0, 1)]),
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect_err("unknown member on update");
    assert!(
        matches!(&err, StoreError::UnknownEndpoint { field, .. } if field == "endpoints[0].endpoint_id"),
        "{err:?}"
    );
    unchanged("update gateway with an unknown member").await;

    let err = store
        .update_gateway(
            gw.id,
            GatewayPatch {
                routing: None,
                name: None,
                members: Some(vec![member(b.id, 0, 1), member(b.id, 1, 1)]),
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect_err("repeated member");
    assert!(
        matches!(&err, StoreError::Conflict { field, .. } if field == "endpoints[1].endpoint_id"),
        "{err:?}"
    );
    unchanged("repeated member").await;

    let err = store.delete_endpoint(a.id, false, &audit()).await.expect_err("in use");
    match &err {
        StoreError::InUse { gateways } => assert_eq!(gateways, &["gw", "other"]),
        other => panic!("expected InUse, got {other:?}"),
    }
    unchanged("delete an endpoint in use").await;
}

async fn force_delete_removes_memberships(db: &TestDb) {
    let store = db.open().await;
    let a = create_endpoint(&store, "a").await;
    let b = create_endpoint(&store, "b").await;
    let c = create_endpoint(&store, "c").await;
    let (g1, _) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "g1".into(),
                members: vec![member(a.id, 0, 1), member(b.id, 0, 1), member(c.id, 1, 1)],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    let (g2, _) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "g2".into(),
                members: vec![member(b.id, 0, 1)],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    let v = version(&store).await;

    let v1 = store.delete_endpoint(b.id, true, &audit()).await.expect("forced delete");
    assert_eq!(v1, next(v));
    assert_eq!(
        store.get_gateway(g1.id).await.expect("g1").members,
        vec![member(a.id, 0, 1), member(c.id, 1, 1)]
    );
    assert_eq!(store.get_gateway(g2.id).await.expect("g2").members, vec![]);
    assert!(matches!(store.get_endpoint(b.id).await, Err(StoreError::NotFound { .. })));
    let snapshot = store.load_snapshot().await.expect("snapshot");
    decode_snapshot(&encode_snapshot(&snapshot)).expect("snapshot stays valid");
    // Force on an unused endpoint is a plain delete.
    let d = create_endpoint(&store, "d").await;
    let v2 = version(&store).await;
    assert_eq!(store.delete_endpoint(d.id, true, &audit()).await.expect("delete unused"), next(v2));
    assert_eq!(store.get_gateway(g1.id).await.expect("g1").members.len(), 2);
}

async fn version_and_data_survive_reopening(db: &TestDb) {
    let store = db.open().await;
    let a = create_endpoint(&store, "a").await;
    let (gw, _) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "gw".into(),
                members: vec![member(a.id, 0, 1)],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    let v = store.delete_gateway(gw.id, &audit()).await.expect("delete");
    let before = store.load_snapshot().await.expect("snapshot");
    store.close().await;

    let reopened = db.open().await;
    assert_eq!(version(&reopened).await, v, "the version survives a restart");
    assert_eq!(
        reopened.load_snapshot().await.expect("snapshot"),
        before,
        "keys decrypt after a restart"
    );
    let (_, v1) = reopened
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "gw".into(),
                members: vec![],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    assert_eq!(v1, next(v), "and keeps counting up from there");
    reopened.close().await;

    // A wrong master key cannot read the keys, and says so without leaking anything.
    let wrong =
        Store::connect(&db.url, modelgw_control_plane::MasterKey::generate()).await.expect("open");
    let err = wrong.load_snapshot().await.expect_err("wrong master key");
    assert!(matches!(err, StoreError::Crypto(_)), "{err:?}");
    assert!(!err.to_string().contains(API_KEY));
    assert!(err.to_string().contains(&a.id.to_string()), "names the endpoint: {err}");
}

async fn api_key_is_sealed_at_rest(db: &TestDb) {
    let store = db.open().await;
    let (created, _) =
        store.create_endpoint(new_endpoint("eus", API_KEY), &audit()).await.expect("create");
    let rotated = "sk-ROTATED-plaintext-5d6e";
    let (updated, _) = store
        .update_endpoint(
            created.id,
            EndpointPatch {
                auth: Some(EndpointAuth::ApiKey(Secret::new(rotated))),
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("rotate");

    // Records never carry the key, not even in Debug output.
    for record in [&created, &updated, &store.get_endpoint(created.id).await.expect("get")] {
        let debug = format!("{record:?}");
        assert!(!debug.contains(API_KEY) && !debug.contains(rotated), "{debug}");
    }
    let listed = format!("{:?}", store.list_endpoints().await.expect("list"));
    assert!(!listed.contains(API_KEY) && !listed.contains(rotated));
    // Neither does the snapshot's Debug output (the domain Secret is redacted).
    let snapshot = format!("{:?}", store.load_snapshot().await.expect("snapshot"));
    assert!(!snapshot.contains(rotated));

    let mut raw = db.raw().await;
    let stored: Vec<String> = sqlx::query("SELECT api_key_ciphertext FROM inference_endpoints")
        .fetch_all(&mut raw)
        .await
        .expect("raw select")
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].starts_with("v1:"),
        "sealed format: {}",
        &stored[0][..3.min(stored[0].len())]
    );
    assert!(!stored[0].contains(API_KEY) && !stored[0].contains(rotated));
    assert!(!stored[0].contains("PLAINTEXT") && !stored[0].contains("ROTATED"));

    if db.backend == Backend::Sqlite {
        let path = db.sqlite_path.as_ref().expect("sqlite path");
        let mut files = vec![path.clone()];
        let wal = path.with_extension("db-wal");
        assert!(wal.exists(), "WAL mode is on, so the write-ahead log exists");
        files.push(wal);
        for file in files {
            let bytes = std::fs::read(&file).expect("read database file");
            for needle in [API_KEY, rotated, "PLAINTEXT", "ROTATED"] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{needle:?} found in {}",
                    file.display()
                );
            }
        }
    }
}

async fn a_moved_ciphertext_does_not_decrypt(db: &TestDb) {
    let store = db.open().await;
    let a = create_endpoint(&store, "a").await;
    let b = create_endpoint(&store, "b").await;
    store.load_snapshot().await.expect("both keys decrypt in their own rows");

    let mut raw = db.raw().await;
    let moved = sqlx::query(
        "UPDATE inference_endpoints SET api_key_ciphertext = \
         (SELECT api_key_ciphertext FROM inference_endpoints WHERE id = $1) WHERE id = $2",
    )
    .bind(a.id.to_string())
    .bind(b.id.to_string())
    .execute(&mut raw)
    .await
    .expect("move the ciphertext");
    assert_eq!(moved.rows_affected(), 1);

    let err = store.load_snapshot().await.expect_err("a's ciphertext in b's row");
    match &err {
        StoreError::Crypto(message) => {
            assert!(message.contains(&b.id.to_string()), "names the row: {message}");
            assert!(!message.contains(API_KEY));
        }
        other => panic!("expected Crypto, got {other:?}"),
    }
}

async fn snapshot_round_trips_through_the_wire(db: &TestDb) {
    let store = db.open().await;
    let a = create_endpoint(&store, "a").await;
    let mut compatible = new_endpoint("b", "sk-compatible-key-1111");
    compatible.platform = Platform::OpenaiCompatible;
    compatible.endpoint = url::Url::parse("http://127.0.0.1:8080/v1").expect("url");
    let (b, _) = store.create_endpoint(compatible, &audit()).await.expect("endpoint");
    let members = vec![
        member(b.id, 0, 5),
        GatewayMember { endpoint_id: a.id, enabled: false, priority: 1, weight: 1 },
    ];
    let (g1, _) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "g1".into(),
                members: members.clone(),
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    let (g2, _) = store
        .create_gateway(
            NewGateway {
                routing: RoutingPolicy::default(),
                name: "g2".into(),
                members: vec![member(a.id, 0, 1)],
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("gateway");
    let (k1, s1, _) = store.create_gateway_key(g1.id, "k1".into(), &audit()).await.expect("key");
    let (k2, _, _) = store.create_gateway_key(g1.id, "k2".into(), &audit()).await.expect("key");
    let (k3, s3, _) = store.create_gateway_key(g2.id, "k3".into(), &audit()).await.expect("key");
    let v =
        store.revoke_gateway_key(g1.id, k2.id, &audit()).await.expect("revoke").1.expect("revoked");

    let snapshot = store.load_snapshot().await.expect("snapshot");
    assert_eq!(snapshot.version, v);
    assert_eq!(snapshot.endpoints.len(), 2);
    let eb = snapshot.endpoints.iter().find(|e| e.id == b.id).expect("b");
    assert_eq!(eb.platform, Platform::OpenaiCompatible);
    assert_eq!(eb.base_url.as_str(), "http://127.0.0.1:8080/v1");
    assert_eq!(eb.credential, Credential::ApiKey(Secret::new("sk-compatible-key-1111")));
    let sg1 = snapshot.gateways.iter().find(|g| g.id == g1.id).expect("g1");
    assert_eq!(sg1.members, members, "member order is the given order");
    assert_eq!(sg1.keys.len(), 1);
    assert_eq!((sg1.keys[0].id, sg1.keys[0].sha256), (k1.id, gateway_key_hash(s1.expose())));
    let sg2 = snapshot.gateways.iter().find(|g| g.id == g2.id).expect("g2");
    assert_eq!((sg2.keys[0].id, sg2.keys[0].sha256), (k3.id, gateway_key_hash(s3.expose())));

    let back = decode_snapshot(&encode_snapshot(&snapshot))
        .expect("the store's snapshot is valid on the wire");
    assert_eq!(back.version, v);
    assert_eq!(back, snapshot);
}

async fn a_fresh_store_has_a_valid_empty_snapshot(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(version(&store).await, ConfigVersion(1), "the empty configuration is version 1");
    let snapshot = store.load_snapshot().await.expect("snapshot");
    assert_eq!(
        snapshot,
        Snapshot { version: ConfigVersion(1), endpoints: vec![], gateways: vec![] }
    );
    decode_snapshot(&encode_snapshot(&snapshot)).expect("valid on the wire");
}

async fn admin_token_is_generated_once(db: &TestDb) {
    let store = db.open().await;
    let v = version(&store).await;
    let (hash, generated) = store.admin_token(None).await.expect("admin token");
    let token = generated.expect("first start generates a token");
    let body = token.expose().strip_prefix("mgwadm_").expect("mgwadm_ prefix");
    assert_eq!(body.len(), 43);
    assert_eq!(hash, gateway_key_hash(token.expose()), "the SHA-256 of the token");

    let (again, none) = store.admin_token(None).await.expect("admin token");
    assert_eq!((again, none), (hash, None), "the stored hash, and no plaintext the second time");

    let (from_env, none) =
        store.admin_token(Some("operator-chosen-token")).await.expect("env token");
    assert_eq!((from_env, none), (gateway_key_hash("operator-chosen-token"), None));
    assert_eq!(
        store.admin_token(None).await.expect("admin token").0,
        hash,
        "the env token is not stored"
    );
    assert_eq!(
        store.admin_token(Some("")).await.expect("empty env token").0,
        hash,
        "empty counts as unset"
    );
    assert_eq!(version(&store).await, v, "not a configuration change");

    store.close().await;
    assert_eq!(db.open().await.admin_token(None).await.expect("after restart"), (hash, None));

    let mut raw = db.raw().await;
    let stored: String =
        sqlx::query_scalar("SELECT value FROM settings WHERE name = 'admin_token_sha256'")
            .fetch_one(&mut raw)
            .await
            .expect("stored hash");
    assert!(!stored.contains(body), "only the hash is stored");
}

async fn concurrent_writes_get_distinct_versions(db: &TestDb) {
    let store = db.open().await;
    let v0 = version(&store).await;
    let writes = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store.create_endpoint(new_endpoint(&format!("e{i}"), API_KEY), &audit()).await
        })
    });
    let mut versions: Vec<u64> = Vec::new();
    for w in writes {
        versions.push(w.await.expect("task").expect("create").1.0);
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (v0.0 + 1..=v0.0 + 8).collect();
    assert_eq!(versions, expected, "each write got its own version, none lost");
    assert_eq!(version(&store).await, ConfigVersion(v0.0 + 8));
    assert_eq!(store.load_snapshot().await.expect("snapshot").endpoints.len(), 8);
}

/// The pin key of each gateway (pinned response ids) is derived, not stored: two control
/// planes with the same master key send the same one, a gateway's differs from another's,
/// and another master key gives other keys.
async fn every_gateway_gets_a_pin_key_derived_from_the_master_key(db: &TestDb) {
    let store = db.open().await;
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let gateway = NewGateway { name: name.into(), ..Default::default() };
        ids.push(store.create_gateway(gateway, &audit()).await.expect("gateway").0.id);
    }
    let first = store.load_snapshot().await.expect("snapshot");
    let replica = Store::connect(&db.url, db.master_key.clone()).await.expect("second replica");
    let second = replica.load_snapshot().await.expect("snapshot");
    let keys = |s: &Snapshot| -> Vec<(GatewayId, [u8; 32])> {
        s.gateways.iter().map(|g| (g.id, *g.pin_key.expose())).collect()
    };
    assert_eq!(keys(&first), keys(&second), "every replica derives the same keys");
    assert_eq!(keys(&first).iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    assert_ne!(first.gateways[0].pin_key, first.gateways[1].pin_key, "one key per gateway");
    for (id, key) in keys(&first) {
        assert_eq!(db.master_key.pin_key(id).expose(), &key);
    }
    let rotated = Store::connect(&db.url, modelgw_control_plane::MasterKey::generate())
        .await
        .expect("another master key");
    let other = rotated.load_snapshot().await.expect("no endpoint key to open");
    assert_ne!(other.gateways[0].pin_key, first.gateways[0].pin_key, "bound to the master key");
    // On the wire to data planes, and back.
    assert_eq!(decode_snapshot(&encode_snapshot(&first)).expect("valid"), first);
    replica.close().await;
    rotated.close().await;
}

async fn gateway_routing_round_trips_and_versions(db: &TestDb) {
    let store = db.open().await;
    let a = create_endpoint(&store, "a").await;
    // Every quota field off its default, at the ends of the ranges.
    let quota = QuotaPolicy {
        enabled: false,
        request_window_secs: *QuotaPolicy::WINDOW_SECS_RANGE.start(),
        token_window_secs: *QuotaPolicy::WINDOW_SECS_RANGE.end(),
        reserve_percent: *QuotaPolicy::RESERVE_PERCENT_RANGE.end(),
    };
    let fastest = RoutingPolicy {
        strategy: RoutingStrategy::Fastest,
        wait_for_recovery: true,
        request_timeout_ms: Some(45_000),
        quota,
    };
    let (gw, v1) = store
        .create_gateway(
            NewGateway {
                name: "gw".into(),
                members: vec![member(a.id, 0, 1)],
                routing: fastest,
                ..Default::default()
            },
            &audit(),
        )
        .await
        .expect("create");
    assert_eq!(gw.routing, fastest);
    assert_eq!(store.get_gateway(gw.id).await.expect("get").routing, fastest);
    let snapshot = store.load_snapshot().await.expect("snapshot");
    assert_eq!(snapshot.gateways[0].routing, fastest);
    let wire = decode_snapshot(&encode_snapshot(&snapshot)).expect("valid");
    assert_eq!(wire.gateways[0].routing, fastest, "survives the wire");

    // The audit log's view of the gateway shows the quota settings.
    let entries = store
        .audit_log(&AuditQuery {
            entity_id: Some(gw.id.to_string()),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .expect("audit log");
    let [created] = entries.as_slice() else { panic!("one entry: {entries:?}") };
    assert_eq!(
        created.after.as_ref().expect("after")["routing"]["quota"],
        serde_json::json!({
            "enabled": false, "request_window_secs": 1, "token_window_secs": 86_400,
            "reserve_percent": 50,
        })
    );

    // A patch without routing keeps it; with routing replaces it whole.
    let (renamed, v2) = store
        .update_gateway(
            gw.id,
            GatewayPatch { name: Some("gw2".into()), ..Default::default() },
            &audit(),
        )
        .await
        .expect("rename");
    assert_eq!(v2, next(v1));
    assert_eq!(renamed.routing, fastest);
    let weighted = RoutingPolicy {
        request_timeout_ms: Some(1_000),
        quota: QuotaPolicy { reserve_percent: 10, ..QuotaPolicy::default() },
        ..RoutingPolicy::default()
    };
    let (patched, v3) = store
        .update_gateway(
            gw.id,
            GatewayPatch { routing: Some(weighted), ..Default::default() },
            &audit(),
        )
        .await
        .expect("patch routing");
    assert_eq!(v3, next(v2));
    assert_eq!(patched.routing, weighted);
    assert_eq!(patched.members, vec![member(a.id, 0, 1)]);
    assert_eq!(store.list_gateways().await.expect("list")[0].routing, weighted);
    assert_eq!(store.load_snapshot().await.expect("snapshot").gateways[0].routing, weighted);
}

async fn gateways_stored_before_routing_existed_read_as_defaults(db: &TestDb) {
    let store = db.open().await;
    let id = GatewayId::new();
    // A row as the first schema wrote it: no routing columns given.
    let mut raw = db.raw().await;
    sqlx::query("INSERT INTO gateways (id, name, created_at, updated_at) VALUES ($1, 'old', 1, 1)")
        .bind(id.to_string())
        .execute(&mut raw)
        .await
        .expect("raw insert");
    assert_eq!(store.get_gateway(id).await.expect("get").routing, RoutingPolicy::default());
    let snapshot = store.load_snapshot().await.expect("snapshot");
    assert_eq!(snapshot.gateways[0].routing, RoutingPolicy::default());

    // The schema holds the quota columns to the model's ranges, whoever writes them.
    for (column, value) in [
        ("routing_quota_enabled", 2),
        ("routing_quota_request_window_secs", 0),
        ("routing_quota_request_window_secs", 86_401),
        ("routing_quota_token_window_secs", 0),
        ("routing_quota_reserve_percent", -1),
        ("routing_quota_reserve_percent", 51),
    ] {
        let refused = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE gateways SET {column} = $1 WHERE id = $2"
        )))
        .bind(value)
        .bind(id.to_string())
        .execute(&mut raw)
        .await;
        assert!(refused.is_err(), "{column} = {value} was stored");
    }
    assert_eq!(store.get_gateway(id).await.expect("get").routing, RoutingPolicy::default());
}

fn health_record(
    endpoint_id: EndpointId,
    node: &str,
    state: EndpointState,
    updated_ms: i64,
) -> EndpointHealthRecord {
    let t = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).expect("time");
    EndpointHealthRecord {
        endpoint_id,
        node_id: NodeId(node.into()),
        state,
        until: (state != EndpointState::Healthy).then(|| t(updated_ms + 60_000)),
        reason: Some(format!("{} at {updated_ms}", state.as_str())),
        last_error: Some("429".into()),
        last_error_at: Some(t(updated_ms)),
        updated_at: t(updated_ms),
    }
}

async fn endpoint_health_is_stored_without_bumping_the_version(db: &TestDb) {
    let store = db.open().await;
    let a = create_endpoint(&store, "a").await;
    let b = create_endpoint(&store, "b").await;
    let v = version(&store).await;
    let now = chrono::Utc::now().timestamp_millis();
    let first = health_record(a.id, "dp-1", EndpointState::Throttling, now);
    let other = health_record(a.id, "dp-2", EndpointState::Error, now);
    let on_b = health_record(b.id, "dp-1", EndpointState::Healthy, now);
    store
        .upsert_endpoint_health(&[first.clone(), other.clone(), on_b.clone()])
        .await
        .expect("upsert");
    assert_eq!(version(&store).await, v, "health is not configuration");
    assert_eq!(store.load_endpoint_health().await.expect("load"), {
        let mut all = vec![first.clone(), other.clone(), on_b.clone()];
        all.sort_by_key(|r| (r.endpoint_id.to_string(), r.node_id.0.clone()));
        all
    });

    // A newer report replaces; an older one (a slower replica) does not.
    let newer = health_record(a.id, "dp-1", EndpointState::Healthy, now + 10);
    store.upsert_endpoint_health(std::slice::from_ref(&newer)).await.expect("upsert newer");
    let stale = health_record(a.id, "dp-1", EndpointState::Error, now - 10);
    store.upsert_endpoint_health(&[stale]).await.expect("upsert stale");
    let stored = store.load_endpoint_health().await.expect("load");
    assert!(stored.contains(&newer), "{stored:?}");
    assert_eq!(stored.len(), 3);

    // Survives reopening.
    store.close().await;
    let store = db.open().await;
    assert!(store.load_endpoint_health().await.expect("load").contains(&newer));
    assert_eq!(version(&store).await, v);

    // Deleting an endpoint deletes its health.
    store.delete_endpoint(b.id, false, &audit()).await.expect("delete b");
    let stored = store.load_endpoint_health().await.expect("load");
    assert!(stored.iter().all(|r| r.endpoint_id == a.id), "{stored:?}");
    let mut raw = db.raw().await;
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM endpoint_health WHERE endpoint_id = $1")
            .bind(b.id.to_string())
            .fetch_one(&mut raw)
            .await
            .expect("count");
    assert_eq!(rows, 0);

    // Pruning forgets reports whose reception and window both ended before the cutoff.
    let old = health_record(a.id, "dp-old", EndpointState::Error, now - 3_600_000);
    store.upsert_endpoint_health(&[old]).await.expect("upsert old");
    let cutoff = chrono::DateTime::from_timestamp_millis(now - 60_000).expect("time");
    assert_eq!(store.prune_endpoint_health(cutoff).await.expect("prune"), 1);
    assert_eq!(store.load_endpoint_health().await.expect("load").len(), 2);
    assert_eq!(version(&store).await, next(v), "only the endpoint delete bumped the version");
}

async fn health_resets_keep_the_latest_and_are_pruned(db: &TestDb) {
    let store = db.open().await;
    let a = create_endpoint(&store, "a").await;
    let b = create_endpoint(&store, "b").await;
    let v = version(&store).await;
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).expect("time");
    let now = chrono::Utc::now().timestamp_millis();
    let ctx = AuditContext::new("token:ops");
    store.record_health_reset(a.id, at(now), &ctx).await.expect("reset a");
    // An older reset (a slower replica) does not replace a newer one.
    store.record_health_reset(a.id, at(now - 10), &ctx).await.expect("older reset");
    store.record_health_reset(b.id, at(now - 3_600_000), &ctx).await.expect("reset b");
    assert_eq!(version(&store).await, v, "a reset is not configuration");
    let resets = store
        .audit_log(&AuditQuery {
            action: Some(AuditAction::ResetHealth),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .expect("log");
    assert_eq!(resets.len(), 3, "each reset is audited once");
    assert!(resets.iter().all(|r| r.actor == "token:ops" && r.config_version.is_none()));
    assert_eq!(resets[2].entity_id, a.id.to_string());
    assert_eq!(resets[2].entity_name, "a");
    let unknown = store.record_health_reset(EndpointId::new(), at(now), &ctx).await;
    assert!(matches!(unknown, Err(StoreError::NotFound { .. })), "{unknown:?}");
    let mut expected = vec![(a.id, at(now)), (b.id, at(now - 3_600_000))];
    expected.sort_by_key(|(id, _)| id.to_string());
    assert_eq!(store.load_health_resets().await.expect("load"), expected);

    // Survives reopening; pruning forgets resets older than the cutoff.
    store.close().await;
    let store = db.open().await;
    assert_eq!(store.prune_endpoint_health(at(now - 60_000)).await.expect("prune"), 1);
    assert_eq!(store.load_health_resets().await.expect("load"), [(a.id, at(now))]);
    // A deleted endpoint's reset is not loaded, and the next prune deletes it.
    store.delete_endpoint(a.id, false, &audit()).await.expect("delete a");
    assert!(store.load_health_resets().await.expect("load").is_empty());
    assert_eq!(store.prune_endpoint_health(at(now - 60_000)).await.expect("prune"), 1);
}

fn import_item(
    account: &str,
    deployment: &str,
    sku: &str,
    capacity: u32,
    key: &str,
) -> AzureImportItem {
    AzureImportItem {
        arm_resource_id: format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/{account}/deployments/{deployment}"
        ),
        name: format!("{account}-{deployment}"),
        endpoint: url::Url::parse(&format!("https://{account}.openai.azure.com/")).expect("url"),
        deployment: deployment.into(),
        model_name: "gpt-4o".into(),
        model_version: "2024-11-20".into(),
        region: "eastus".into(),
        sku_name: sku.into(),
        sku_capacity: Some(capacity),
        auth: EndpointAuth::ApiKey(Secret::new(key)),
    }
}

async fn azure_import_upserts_by_arm_resource_id(db: &TestDb) {
    let store = db.open().await;
    // A hand-made endpoint already holds the name a new import wants.
    create_endpoint(&store, "acct-a-gpt").await;
    let v0 = version(&store).await;
    let items = vec![
        import_item("acct-a", "gpt", "Standard", 10, "key-a-1"),
        import_item("acct-b", "gpt", "GlobalProvisionedManaged", 100, "key-b-1"),
    ];
    let first = store.import_azure_endpoints(items.clone(), &audit()).await.expect("import");
    assert_eq!(first.created.len(), 2);
    assert_eq!(first.version, next(v0), "one bump for the whole import");
    let listed = store.list_azure_endpoints().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["acct-a-gpt-2", "acct-b-gpt"], "a taken name gets a suffix");
    assert_eq!(listed[1].sku_name.as_deref(), Some("GlobalProvisionedManaged"));
    assert_eq!(listed[1].sku_capacity, Some(100));

    // Same again: nothing written, no bump.
    let again = store.import_azure_endpoints(items.clone(), &audit()).await.expect("import again");
    assert!(again.created.is_empty() && again.updated.is_empty());
    assert_eq!(again.unchanged.len(), 2);
    assert_eq!(version(&store).await, next(v0));

    // A rotated key and a new capacity update in place; the id (upper-cased by ARM) matches.
    let mut changed = import_item("acct-b", "gpt", "GlobalProvisionedManaged", 200, "key-b-2");
    changed.arm_resource_id = changed.arm_resource_id.to_uppercase();
    let third = store
        .import_azure_endpoints(vec![items[0].clone(), changed], &audit())
        .await
        .expect("import changed");
    assert_eq!(third.updated, [listed[1].id]);
    assert_eq!(third.unchanged, [listed[0].id]);
    assert_eq!(third.version, next(next(v0)));
    assert_eq!(store.list_azure_endpoints().await.expect("list")[1].sku_capacity, Some(200));
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let b = snapshot.endpoints.iter().find(|e| e.id == listed[1].id).expect("b");
    let Credential::ApiKey(key) = &b.credential else {
        panic!("an api-key credential");
    };
    assert_eq!(key.expose(), "key-b-2");
    assert_eq!(store.list_endpoints().await.expect("all").len(), 3, "no duplicates");

    // Importing in Entra mode switches the endpoint and drops its key; again is unchanged;
    // an api_key import switches it back with the key.
    let entra = AzureImportItem { auth: EndpointAuth::Entra, ..items[0].clone() };
    let fourth = store.import_azure_endpoints(vec![entra.clone()], &audit()).await.expect("entra");
    assert_eq!(fourth.updated, [listed[0].id]);
    assert_eq!(fourth.version, next(next(next(v0))));
    let record = store.get_endpoint(listed[0].id).await.expect("get");
    assert_eq!((record.auth, record.api_key_hint.as_str()), (AuthMode::Entra, ""));
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let a = snapshot.endpoints.iter().find(|e| e.id == listed[0].id).expect("a");
    assert!(matches!(a.credential, Credential::Entra { .. }), "no key kept");
    let fifth = store.import_azure_endpoints(vec![entra], &audit()).await.expect("entra again");
    assert_eq!(fifth.unchanged, [listed[0].id]);
    assert_eq!(version(&store).await, next(next(next(v0))), "no bump");
    let sixth =
        store.import_azure_endpoints(vec![items[0].clone()], &audit()).await.expect("key again");
    assert_eq!(sixth.updated, [listed[0].id]);
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let a = snapshot.endpoints.iter().find(|e| e.id == listed[0].id).expect("a");
    let Credential::ApiKey(key) = &a.credential else {
        panic!("an api-key credential again");
    };
    assert_eq!(key.expose(), "key-a-1");
}

async fn entra_auth_stores_no_key_and_modes_switch(db: &TestDb) {
    let store = db.open().await;
    let entra = NewEndpoint { auth: EndpointAuth::Entra, ..new_endpoint("eus", API_KEY) };
    let (created, _) = store.create_endpoint(entra, &audit()).await.expect("create");
    assert_eq!(created.auth, AuthMode::Entra);
    assert_eq!(created.api_key_hint, "");
    let entra_credential = Credential::Entra { scope: modelgw_model::DEFAULT_ENTRA_SCOPE.into() };
    let snapshot = store.load_snapshot().await.expect("snapshot");
    assert_eq!(snapshot.endpoints[0].credential, entra_credential);

    let to_key = EndpointPatch {
        auth: Some(EndpointAuth::ApiKey(Secret::new(API_KEY))),
        ..EndpointPatch::default()
    };
    let (updated, _) = store.update_endpoint(created.id, to_key, &audit()).await.expect("update");
    assert_eq!(updated.auth, AuthMode::ApiKey);
    assert_eq!(updated.api_key_hint, "…7c21");
    let snapshot = store.load_snapshot().await.expect("snapshot");
    assert_eq!(snapshot.endpoints[0].credential, Credential::ApiKey(Secret::new(API_KEY)));

    // Another field alone keeps the mode.
    let rename = EndpointPatch { region: Some("westus".into()), ..EndpointPatch::default() };
    let (renamed, _) = store.update_endpoint(created.id, rename, &audit()).await.expect("update");
    assert_eq!(renamed.auth, AuthMode::ApiKey);

    let back = EndpointPatch { auth: Some(EndpointAuth::Entra), ..EndpointPatch::default() };
    let (updated, _) = store.update_endpoint(created.id, back, &audit()).await.expect("update");
    assert_eq!(updated.auth, AuthMode::Entra);
    assert_eq!(updated.api_key_hint, "");
    let snapshot = store.load_snapshot().await.expect("snapshot");
    assert_eq!(snapshot.endpoints[0].credential, entra_credential);
    // An api_key endpoint beside it keeps its mode.
    let (legacy, _) =
        store.create_endpoint(new_endpoint("aus", API_KEY), &audit()).await.expect("create");
    assert_eq!(legacy.auth, AuthMode::ApiKey);
}

/// Every audit row of the store, oldest first.
async fn audit_rows(store: &Store) -> Vec<AuditEntry> {
    let mut rows =
        store.audit_log(&AuditQuery { limit: 10_000, ..AuditQuery::default() }).await.expect("log");
    rows.reverse();
    rows
}

/// Makes the database refuse, from inside a transaction, inserts into `table` where `column`
/// is `value`: a failure the store cannot see coming.
async fn refuse_inserts(db: &TestDb, table: &str, column: &str, value: &str) {
    let mut raw = db.raw().await;
    let statements = match db.backend {
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} \
             WHEN NEW.{column} = '{value}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )],
        Backend::Postgres => vec![
            format!(
                "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS \
                 'BEGIN RAISE EXCEPTION ''refused by test''; END'"
            ),
            format!(
                "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW \
                 WHEN (NEW.{column} = '{value}') EXECUTE FUNCTION refuse_{table}()"
            ),
        ],
    };
    for sql in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut raw).await.expect("trigger");
    }
}

async fn every_change_writes_one_audit_row_in_its_transaction(db: &TestDb) {
    let store = db.open().await;
    let context = AuditContext {
        actor: "token:ops".into(),
        request_id: Some("req-1".into()),
        client_ip: Some("2001:db8::7".parse().expect("ip")),
    };
    let (e, v1) =
        store.create_endpoint(new_endpoint("eus", API_KEY), &context).await.expect("create");
    let (_, v2) = store
        .update_endpoint(
            e.id,
            EndpointPatch {
                auth: Some(EndpointAuth::ApiKey(Secret::new("sk-second-key-value-7c21"))),
                ..EndpointPatch::default()
            },
            &context,
        )
        .await
        .expect("rotate");
    let (gw, v3) = store
        .create_gateway(
            NewGateway {
                name: "gw".into(),
                members: vec![member(e.id, 0, 1)],
                routing: RoutingPolicy::default(),
                ..Default::default()
            },
            &context,
        )
        .await
        .expect("gateway");
    let (key, gateway_key, v4) =
        store.create_gateway_key(gw.id, "k".into(), &context).await.expect("key");
    let (_, v5) = store.revoke_gateway_key(gw.id, key.id, &context).await.expect("revoke");
    let v6 = store.delete_endpoint(e.id, true, &context).await.expect("forced delete");
    let (token, api_token) = store
        .create_api_token(
            NewApiToken { name: "ci".into(), role: "viewer".into(), expires_at: None },
            &context,
        )
        .await
        .expect("token");
    let rows = audit_rows(&store).await;
    let summary: Vec<(AuditEntity, AuditAction, String, Option<ConfigVersion>)> =
        rows.iter().map(|r| (r.entity, r.action, r.entity_id.clone(), r.config_version)).collect();
    use AuditAction::{Create, Delete, Revoke, Update};
    use AuditEntity::{ApiToken, Gateway, GatewayKey, InferenceEndpoint};
    assert_eq!(
        summary,
        vec![
            (InferenceEndpoint, Create, e.id.to_string(), Some(v1)),
            (InferenceEndpoint, Update, e.id.to_string(), Some(v2)),
            (Gateway, Create, gw.id.to_string(), Some(v3)),
            (GatewayKey, Create, key.id.to_string(), Some(v4)),
            (GatewayKey, Revoke, key.id.to_string(), v5),
            // The forced delete: the gateway it leaves, then the endpoint, in one version.
            (Gateway, Update, gw.id.to_string(), Some(v6)),
            (InferenceEndpoint, Delete, e.id.to_string(), Some(v6)),
            (ApiToken, Create, token.id.to_string(), None),
        ]
    );
    for row in &rows {
        assert_eq!(row.actor, "token:ops");
        assert_eq!(row.request_id.as_deref(), Some("req-1"));
        assert_eq!(row.client_ip.as_deref(), Some("2001:db8::7"));
    }
    assert_eq!(rows[1].before.as_ref().map(|b| b["api_key_hint"].clone()), Some("…7c21".into()));
    assert_eq!(rows[1].after.as_ref().map(|a| a["api_key_hint"].clone()), Some("…7c21".into()));
    assert_eq!(rows[6].before.as_ref().map(|b| b["name"].clone()), Some("eus".into()));
    assert!(rows[6].after.is_none() && rows[0].before.is_none());

    // No secret in any column of any row.
    let mut raw = db.raw().await;
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT actor || entity || entity_id || entity_name || action || \
         COALESCE(before_fields, '') || COALESCE(after_fields, '') FROM audit_log",
    )
    .fetch_all(&mut raw)
    .await
    .expect("rows");
    assert_eq!(texts.len(), rows.len());
    for text in &texts {
        for secret in
            [API_KEY, "sk-second-key-value-7c21", gateway_key.expose(), api_token.expose()]
        {
            assert!(!text.contains(secret), "a secret in the audit log: {text}");
        }
    }

    // Failed calls leave no row.
    let count = rows.len();
    let (other, _) =
        store.create_endpoint(new_endpoint("weu", API_KEY), &context).await.expect("e");
    let (_, _) = store
        .create_gateway(
            NewGateway {
                name: "gw2".into(),
                members: vec![member(other.id, 0, 1)],
                routing: RoutingPolicy::default(),
                ..Default::default()
            },
            &context,
        )
        .await
        .expect("gateway");
    let count = count + 2;
    let v = version(&store).await;
    assert!(matches!(
        store.create_endpoint(new_endpoint("weu", API_KEY), &context).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.delete_endpoint(other.id, false, &context).await,
        Err(StoreError::InUse { .. })
    ));
    assert!(matches!(
        store.update_gateway(GatewayId::new(), GatewayPatch::default(), &context).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.revoke_api_token(uuid::Uuid::new_v4(), &context).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .create_api_token(
                NewApiToken { name: "ci".into(), role: "admin".into(), expires_at: None },
                &context
            )
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(audit_rows(&store).await.len(), count);
    assert_eq!(version(&store).await, v);

    // When the audit row cannot be written, the change is not made either.
    refuse_inserts(db, "audit_log", "entity_name", "doomed").await;
    let err = store.create_endpoint(new_endpoint("doomed", API_KEY), &context).await;
    assert!(matches!(err, Err(StoreError::Database(_))), "{err:?}");
    assert!(store.list_endpoints().await.expect("list").iter().all(|e| e.name != "doomed"));
    let err = store
        .create_api_token(
            NewApiToken { name: "doomed".into(), role: "viewer".into(), expires_at: None },
            &context,
        )
        .await;
    assert!(matches!(err, Err(StoreError::Database(_))), "{err:?}");
    assert!(store.list_api_tokens().await.expect("list").iter().all(|t| t.name != "doomed"));
    assert_eq!(version(&store).await, v);

    // When the change fails after its audit row was written, the row goes with it: an import
    // whose second endpoint the database refuses, after the first one's row was inserted.
    refuse_inserts(db, "inference_endpoints", "deployment", "refused").await;
    let items = vec![
        import_item("acct-a", "gpt", "Standard", 10, "key-a-1"),
        import_item("acct-b", "refused", "Standard", 10, "key-b-1"),
    ];
    let err = store.import_azure_endpoints(items, &context).await;
    assert!(matches!(err, Err(StoreError::Database(_))), "{err:?}");
    assert_eq!(audit_rows(&store).await.len(), count, "the first item's row was rolled back");
    assert!(store.list_azure_endpoints().await.expect("list").is_empty());
    assert_eq!(version(&store).await, v);
}

async fn api_tokens_are_stored_as_hashes_and_are_not_configuration(db: &TestDb) {
    let store = db.open().await;
    let v = version(&store).await;
    let context = AuditContext::system("test");
    let expires = chrono::DateTime::from_timestamp_millis(4_102_444_800_000).expect("2100");
    let (record, token) = store
        .create_api_token(
            NewApiToken { name: "ci".into(), role: "operator".into(), expires_at: Some(expires) },
            &context,
        )
        .await
        .expect("create");
    let body = token.expose().strip_prefix("mgwtok_").expect("prefix");
    assert_eq!(body.len(), 43);
    assert!(!body.contains('.'), "never shaped like a JWT");
    assert_eq!(record.hint, token.hint());
    assert_eq!((record.role.as_str(), record.expires_at), ("operator", Some(expires)));
    assert_eq!(record.created_by, "system:test");
    assert_eq!(version(&store).await, v, "tokens are not configuration");

    // Only the hash is stored.
    let mut raw = db.raw().await;
    let row = sqlx::query("SELECT sha256, hint, name FROM api_tokens")
        .fetch_one(&mut raw)
        .await
        .expect("row");
    let sha: Vec<u8> = row.try_get("sha256").expect("sha256");
    assert_eq!(sha, gateway_key_hash(token.expose()).to_vec());
    let found = store.find_api_token(&gateway_key_hash(token.expose())).await.expect("find");
    assert_eq!(found, Some(record.clone()));
    assert_eq!(store.find_api_token(&[0; 32]).await.expect("find"), None);

    // Last use: written once, then not again within the minute.
    store.touch_api_token(&record).await.expect("touch");
    let used = store.list_api_tokens().await.expect("list")[0].clone();
    let first_use = used.last_used_at.expect("last used");
    store.touch_api_token(&used).await.expect("touch again");
    assert_eq!(store.list_api_tokens().await.expect("list")[0].last_used_at, Some(first_use));

    // Revoke: once it changes something, twice it does not; the name stays taken.
    let (revoked, changed) = store.revoke_api_token(record.id, &context).await.expect("revoke");
    assert!(changed && revoked.revoked_at.is_some());
    let (again, changed) = store.revoke_api_token(record.id, &context).await.expect("again");
    assert!(!changed);
    assert_eq!(again.revoked_at, revoked.revoked_at);
    assert!(matches!(
        store
            .create_api_token(
                NewApiToken { name: "ci".into(), role: "viewer".into(), expires_at: None },
                &context
            )
            .await,
        Err(StoreError::Conflict { field, .. }) if field == "name"
    ));
    let actions: Vec<AuditAction> = audit_rows(&store).await.iter().map(|r| r.action).collect();
    assert_eq!(actions, [AuditAction::Create, AuditAction::Revoke]);
    assert_eq!(version(&store).await, v);
}

async fn the_audit_log_filters_and_pages(db: &TestDb) {
    let store = db.open().await;
    let a = AuditContext::new("token:a");
    let b = AuditContext::new("token:b");
    let (e1, _) = store.create_endpoint(new_endpoint("e1", API_KEY), &a).await.expect("e1");
    let (e2, _) = store.create_endpoint(new_endpoint("e2", API_KEY), &b).await.expect("e2");
    store
        .update_endpoint(
            e1.id,
            EndpointPatch { region: Some("x".into()), ..Default::default() },
            &b,
        )
        .await
        .expect("update");
    store.delete_endpoint(e2.id, false, &a).await.expect("delete");
    let all = store.audit_log(&AuditQuery { limit: 100, ..Default::default() }).await.expect("all");
    let ids: Vec<i64> = all.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let query = |q: AuditQuery| {
        let store = store.clone();
        async move { store.audit_log(&q).await.expect("query").iter().map(|r| r.id).collect::<Vec<_>>() }
    };
    let base = AuditQuery { limit: 100, ..Default::default() };
    assert_eq!(
        query(AuditQuery { actor: Some("token:b".into()), ..base.clone() }).await,
        [ids[1], ids[2]]
    );
    assert_eq!(
        query(AuditQuery { entity_id: Some(e2.id.to_string()), ..base.clone() }).await,
        [ids[0], ids[2]]
    );
    assert_eq!(
        query(AuditQuery { action: Some(AuditAction::Update), ..base.clone() }).await,
        [ids[1]]
    );
    assert_eq!(
        query(AuditQuery { entity: Some(AuditEntity::Gateway), ..base.clone() }).await,
        Vec::<i64>::new()
    );
    assert_eq!(query(AuditQuery { limit: 2, ..base.clone() }).await, ids[..2]);
    assert_eq!(
        query(AuditQuery { limit: 2, before_id: Some(ids[1]), ..base.clone() }).await,
        ids[2..]
    );
    let at = all[1].at;
    let since = query(AuditQuery { since: Some(at), ..base.clone() }).await;
    let until = query(AuditQuery { until: Some(at), ..base.clone() }).await;
    assert!(since.contains(&ids[1]) && !until.contains(&ids[1]));
    assert_eq!(since.len() + until.len(), 4);
    assert_eq!(
        query(AuditQuery {
            actor: Some("token:a".into()),
            entity: Some(AuditEntity::InferenceEndpoint),
            action: Some(AuditAction::Create),
            ..base
        })
        .await,
        [ids[3]]
    );
}

async fn data_plane_tokens_are_stored_as_hashes_unique_while_active_and_revocable(db: &TestDb) {
    let store = db.open().await;
    let version = store.config_version().await.expect("version");
    let (east, secret) =
        store.create_data_plane_token("eastus".into(), 7, &audit()).await.expect("create");
    assert_eq!((east.name.as_str(), east.max_data_planes, east.revoked_at), ("eastus", 7, None));
    assert!(secret.expose().starts_with("mgwdp_"));
    assert_eq!(east.hint, secret.hint());
    let dup =
        store.create_data_plane_token("eastus".into(), 1, &audit()).await.expect_err("same name");
    assert!(matches!(dup, StoreError::Conflict { ref field, .. } if field == "name"), "{dup:?}");
    let (west, _) =
        store.create_data_plane_token("westus".into(), 1, &audit()).await.expect("create");

    // Only the SHA-256 is stored.
    let mut raw = db.raw().await;
    let rows = sqlx::query("SELECT name, sha256, hint FROM data_plane_tokens")
        .fetch_all(&mut raw)
        .await
        .expect("raw select");
    for row in &rows {
        let hash: Vec<u8> = row.get(1);
        assert_eq!(hash.len(), 32);
    }
    let active = store.active_data_plane_tokens().await.expect("active");
    let east_active = active.iter().find(|t| t.id == east.id).expect("listed");
    assert_eq!(east_active.sha256, modelgw_model::gateway_key_hash(secret.expose()));

    // Revoked (idempotently): gone from the active set, kept in the list, name free again.
    let revoked = store.revoke_data_plane_token(east.id, &audit()).await.expect("revoke");
    let first = revoked.revoked_at.expect("revoked_at");
    let again = store.revoke_data_plane_token(east.id, &audit()).await.expect("revoke again");
    assert_eq!(again.revoked_at, Some(first));
    let active = store.active_data_plane_tokens().await.expect("active");
    assert_eq!(active.iter().map(|t| t.id).collect::<Vec<_>>(), [west.id]);
    let (replacement, _) =
        store.create_data_plane_token("eastus".into(), 2, &audit()).await.expect("reuse");
    let listed = store.list_data_plane_tokens().await.expect("list");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().any(|t| t.id == east.id && t.revoked_at.is_some()));
    assert!(listed.iter().any(|t| t.id == replacement.id && t.revoked_at.is_none()));
    let unknown = modelgw_control_plane::store::DataPlaneTokenId::new();
    assert!(matches!(
        store.revoke_data_plane_token(unknown, &audit()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.config_version().await.expect("version"), version, "not configuration");
}
