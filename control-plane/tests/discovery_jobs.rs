//! Stored Azure discovery jobs (issue #15, item 3), each scenario on SQLite and PostgreSQL:
//! two stores over one database stand for two control-plane replicas.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

#[macro_use]
mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Backend, TestDb};
use modelgw_control_plane::azure::{
    DiscoveredDeployment, DiscoveryError, DiscoveryProgress, DiscoveryReport,
};
use modelgw_control_plane::store::{DiscoveryJobOutcome, DiscoveryJobState, DiscoveryReplica};
use modelgw_model::Secret;
use sqlx::Row as _;
use uuid::Uuid;

on_both_backends!(
    a_job_written_by_one_replica_is_read_by_another,
    only_the_running_replica_writes_and_a_stale_job_fails_once,
    the_newest_jobs_are_kept,
    a_stored_report_holds_no_account_key,
);

const ACCOUNT_KEY: &str = "acct-key-PLAINTEXT-7d1e55b0c4";

fn replica(name: &str) -> DiscoveryReplica {
    DiscoveryReplica { instance_id: Uuid::new_v4().simple().to_string(), host: name.to_owned() }
}

fn deployment(name: &str, key: Option<&str>) -> DiscoveredDeployment {
    DiscoveredDeployment {
        id: format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a/deployments/{name}"
        ),
        subscription_id: "s".into(),
        resource_group: "rg".into(),
        account: "a".into(),
        account_kind: "OpenAI".into(),
        location: "eastus".into(),
        endpoint: "https://a.openai.azure.com/".into(),
        deployment: name.into(),
        model_name: "gpt-4o".into(),
        model_version: "2024-11-20".into(),
        model_format: "OpenAI".into(),
        sku: "Standard".into(),
        capacity: Some(50),
        version_upgrade_option: Some("NoAutoUpgrade".into()),
        provisioning_state: "Succeeded".into(),
        rate_limits: Vec::new(),
        warnings: vec!["a warning".into()],
        api_key: key.map(Secret::new),
    }
}

fn report(key: Option<&str>) -> DiscoveryReport {
    DiscoveryReport {
        deployments: vec![deployment("gpt-4o", key), deployment("mini", key)],
        errors: vec![DiscoveryError {
            scope: "/subscriptions/t".into(),
            permission: Some("Microsoft.CognitiveServices/accounts/read".into()),
            message: "forbidden".into(),
        }],
        skipped_accounts: Vec::new(),
        progress: DiscoveryProgress {
            subscriptions_total: 2,
            subscriptions_scanned: 2,
            accounts_total: 1,
            accounts_scanned: 1,
            deployments_found: 2,
            errors: 1,
            finished: true,
        },
    }
}

fn succeeded(report: DiscoveryReport) -> DiscoveryJobOutcome {
    DiscoveryJobOutcome {
        state: DiscoveryJobState::Succeeded,
        progress: report.progress.clone(),
        error: None,
        report: Some(report),
    }
}

async fn a_job_written_by_one_replica_is_read_by_another(db: &TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    let ra = replica("cp-a");
    let version = a.config_version().await.unwrap();
    let id = Uuid::now_v7();
    let (started, pruned) = a.insert_discovery_job(id, &ra, 20).await.unwrap();
    assert_eq!(pruned, 0);
    assert_eq!(started.state, DiscoveryJobState::Running);

    let seen = b.discovery_job(id).await.unwrap().expect("the other replica sees the job");
    assert_eq!(seen.started_by, ra);
    assert_eq!(seen.state, DiscoveryJobState::Running);
    assert_eq!(seen.started_at, started.started_at);
    assert_eq!(seen.progress, DiscoveryProgress::default());
    assert!(seen.report.is_none() && seen.error.is_none() && seen.finished_at.is_none());

    let progress = DiscoveryProgress {
        subscriptions_total: 2,
        subscriptions_scanned: 1,
        ..Default::default()
    };
    assert!(a.heartbeat_discovery_job(id, &ra.instance_id, &progress).await.unwrap());
    let seen = b.discovery_job(id).await.unwrap().unwrap();
    assert_eq!(seen.progress, progress, "progress reaches the other replica");
    assert!(seen.heartbeat_at >= started.heartbeat_at);
    assert!(b.reported_discovery_jobs().await.unwrap().is_empty(), "nothing reported yet");

    assert!(a.finish_discovery_job(id, &ra.instance_id, &succeeded(report(None))).await.unwrap());
    let done = b.discovery_job(id).await.unwrap().unwrap();
    assert_eq!(done.state, DiscoveryJobState::Succeeded);
    assert!(done.finished_at.is_some());
    assert_eq!(done.progress.deployments_found, 2);
    let stored = done.report.expect("report");
    let names: Vec<&str> = stored.deployments.iter().map(|d| d.deployment.as_str()).collect();
    assert_eq!(names, ["gpt-4o", "mini"]);
    assert_eq!(stored.deployments[0].capacity, Some(50));
    assert_eq!(stored.deployments[0].warnings, ["a warning"]);
    assert_eq!(stored.errors, report(None).errors);
    assert_eq!(b.reported_discovery_jobs().await.unwrap(), [id]);
    assert!(b.discovery_job(Uuid::now_v7()).await.unwrap().is_none());
    assert_eq!(a.config_version().await.unwrap(), version, "jobs are not configuration");
}

async fn only_the_running_replica_writes_and_a_stale_job_fails_once(db: &TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    let (ra, rb) = (replica("cp-a"), replica("cp-b"));
    let id = Uuid::now_v7();
    a.insert_discovery_job(id, &ra, 20).await.unwrap();
    let progress = DiscoveryProgress::default();
    assert!(
        !b.heartbeat_discovery_job(id, &rb.instance_id, &progress).await.unwrap(),
        "another replica's heartbeat does not count"
    );
    assert!(!b.finish_discovery_job(id, &rb.instance_id, &succeeded(report(None))).await.unwrap());

    let error = DiscoveryError {
        scope: "control_plane".into(),
        permission: None,
        message: "the control-plane replica running this discovery stopped (cp-a)".into(),
    };
    // A heartbeat newer than the cut-off: not stale, nothing changes.
    let job = b.discovery_job(id).await.unwrap().unwrap();
    assert!(!b.fail_stale_discovery_job(id, job.heartbeat_at, &error).await.unwrap());
    assert_eq!(b.discovery_job(id).await.unwrap().unwrap().state, DiscoveryJobState::Running);

    // Stale: of two replicas noticing at once, exactly one fails it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = Utc::now();
    let (first, second) = tokio::join!(
        b.fail_stale_discovery_job(id, cutoff, &error),
        a.fail_stale_discovery_job(id, cutoff, &error),
    );
    assert_eq!(
        [first.unwrap(), second.unwrap()].iter().filter(|won| **won).count(),
        1,
        "compare-and-set: one winner"
    );
    let failed = a.discovery_job(id).await.unwrap().unwrap();
    assert_eq!(failed.state, DiscoveryJobState::Failed);
    assert_eq!(failed.error.as_ref(), Some(&error));
    assert!(failed.finished_at.is_some());

    // The replica that ran it comes back (it was only slow): it learns it lost the job, and
    // its late outcome does not overwrite the failure.
    assert!(!a.heartbeat_discovery_job(id, &ra.instance_id, &progress).await.unwrap());
    assert!(!a.finish_discovery_job(id, &ra.instance_id, &succeeded(report(None))).await.unwrap());
    let still = b.discovery_job(id).await.unwrap().unwrap();
    assert_eq!(still.state, DiscoveryJobState::Failed);
    assert!(still.report.is_none());
    assert!(!b.fail_stale_discovery_job(id, Utc::now(), &error).await.unwrap(), "failed once");
    assert!(b.reported_discovery_jobs().await.unwrap().is_empty());

    // A finished job is never stale.
    let done = Uuid::now_v7();
    a.insert_discovery_job(done, &ra, 20).await.unwrap();
    assert!(a.finish_discovery_job(done, &ra.instance_id, &succeeded(report(None))).await.unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(!b.fail_stale_discovery_job(done, Utc::now(), &error).await.unwrap());
    assert_eq!(b.discovery_job(done).await.unwrap().unwrap().state, DiscoveryJobState::Succeeded);
}

async fn the_newest_jobs_are_kept(db: &TestDb) {
    let store = db.open().await;
    let r = replica("cp-a");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = Uuid::now_v7();
        let (_, pruned) = store.insert_discovery_job(id, &r, 3).await.unwrap();
        ids.push((id, pruned));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pruned: Vec<u64> = ids.iter().map(|(_, p)| *p).collect();
    assert_eq!(pruned, [0, 0, 0, 1, 1]);
    for (i, (id, _)) in ids.iter().enumerate() {
        let kept = store.discovery_job(*id).await.unwrap().is_some();
        assert_eq!(kept, i >= 2, "job {i} of 5 with 3 kept");
    }
    // A pruned running job's replica learns it from its next heartbeat.
    let progress = DiscoveryProgress::default();
    assert!(!store.heartbeat_discovery_job(ids[0].0, &r.instance_id, &progress).await.unwrap());
    assert!(store.heartbeat_discovery_job(ids[4].0, &r.instance_id, &progress).await.unwrap());
}

async fn a_stored_report_holds_no_account_key(db: &TestDb) {
    let store = db.open().await;
    let r = replica("cp-a");
    let id = Uuid::now_v7();
    store.insert_discovery_job(id, &r, 20).await.unwrap();
    // Even a report still holding keys is stored without them.
    let outcome = succeeded(report(Some(ACCOUNT_KEY)));
    assert!(store.finish_discovery_job(id, &r.instance_id, &outcome).await.unwrap());
    let read = store.discovery_job(id).await.unwrap().unwrap().report.unwrap();
    assert!(read.deployments.iter().all(|d| d.api_key.is_none()));

    let mut raw = db.raw().await;
    let row = sqlx::query("SELECT progress, report, host FROM discovery_jobs WHERE id = $1")
        .bind(id.to_string())
        .fetch_one(&mut raw)
        .await
        .unwrap();
    let report: String = row.get("report");
    assert!(report.contains("gpt-4o"), "the report is stored: {report}");
    assert!(!report.contains(ACCOUNT_KEY) && !report.contains("PLAINTEXT"), "{report}");
    assert!(!report.contains("api_key"), "{report}");
    if db.backend == Backend::Sqlite {
        let path = db.sqlite_path.as_ref().expect("sqlite path");
        for file in [path.clone(), path.with_extension("db-wal")] {
            let Ok(bytes) = std::fs::read(&file) else { continue };
            assert!(
                !bytes.windows(ACCOUNT_KEY.len()).any(|w| w == ACCOUNT_KEY.as_bytes()),
                "the key is in {}",
                file.display()
            );
        }
    }
}
