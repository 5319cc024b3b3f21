//! Azure discovery jobs (issue #15, item 3): NOT configuration. A job is started and run by one
//! control-plane replica and read by any replica on the same database, so an operator behind a
//! load balancer sees the same job whichever replica answers, and a job whose replica died is
//! seen to have failed instead of vanishing.
//!
//! Only the replica running a job writes its progress, heartbeat and outcome (every such write
//! names the replica's instance id and requires the job to be `running`); any replica may mark
//! a running job failed once its heartbeat is too old ([`Store::fail_stale_discovery_job`]).
//! Both are compare-and-set on `state`, so a replica that lost its job (it was marked failed, or
//! pruned) learns it from its next write and stops, and two replicas noticing the same stale job
//! do not both fail it.
//!
//! A stored report never holds an account key: [`DiscoveryReport`] serializes without them.
//! Writes here never bump the configuration version nor write audit rows.

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Store, StoreError, decode_error, now_ms, parse_column, time_from_db};
use crate::azure::{DiscoveryError, DiscoveryProgress, DiscoveryReport};

/// The control-plane replica that runs a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryReplica {
    /// Random per control-plane process: a restarted replica is another one.
    pub instance_id: String,
    /// The replica's host name (the pod name on Kubernetes), for operators.
    pub host: String,
}

/// Where a discovery job is (column `state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoveryJobState {
    Running,
    Succeeded,
    Failed,
}

impl DiscoveryJobState {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryJobState::Running => "running",
            DiscoveryJobState::Succeeded => "succeeded",
            DiscoveryJobState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for DiscoveryJobState {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "running" => Ok(DiscoveryJobState::Running),
            "succeeded" => Ok(DiscoveryJobState::Succeeded),
            "failed" => Ok(DiscoveryJobState::Failed),
            _ => Err(()),
        }
    }
}

/// A stored discovery job.
#[derive(Clone, Debug)]
pub struct DiscoveryJobRecord {
    pub id: Uuid,
    pub started_at: DateTime<Utc>,
    pub started_by: DiscoveryReplica,
    pub state: DiscoveryJobState,
    /// As of the replica's last write.
    pub progress: DiscoveryProgress,
    /// The last write of the replica running it (progress or heartbeat).
    pub heartbeat_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the job failed as a whole, when it did (no credential worked; its replica stopped).
    pub error: Option<DiscoveryError>,
    /// What it found, once finished (absent when it failed as a whole).
    pub report: Option<DiscoveryReport>,
}

/// How a job ended, as the replica running it writes it.
#[derive(Clone, Debug)]
pub struct DiscoveryJobOutcome {
    /// `Succeeded` or `Failed`.
    pub state: DiscoveryJobState,
    pub progress: DiscoveryProgress,
    pub error: Option<DiscoveryError>,
    pub report: Option<DiscoveryReport>,
}

const SELECT_JOB: &str = "SELECT id, started_at, instance_id, host, state, progress, \
                          heartbeat_at, finished_at, error, report FROM discovery_jobs";

impl Store {
    /// Records a job `started_by` starts now as running, and deletes all but the newest `keep`
    /// jobs (by start), in one transaction. Returns the job and how many were deleted.
    #[tracing::instrument(name = "store.insert_discovery_job", skip_all, fields(discovery.id = %id), level = "debug")]
    pub async fn insert_discovery_job(
        &self,
        id: Uuid,
        started_by: &DiscoveryReplica,
        keep: usize,
    ) -> Result<(DiscoveryJobRecord, u64), StoreError> {
        let now = now_ms();
        let progress = DiscoveryProgress::default();
        let mut tx = self.begin_unversioned_write().await?;
        sqlx::query(
            "INSERT INTO discovery_jobs (id, started_at, instance_id, host, state, progress, \
             heartbeat_at) VALUES ($1, $2, $3, $4, $5, $6, $2)",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(started_by.instance_id.clone())
        .bind(started_by.host.clone())
        .bind(DiscoveryJobState::Running.as_str())
        .bind(to_json("progress", &progress)?)
        .execute(&mut *tx)
        .await?;
        let pruned = sqlx::query(
            "DELETE FROM discovery_jobs WHERE id NOT IN (SELECT id FROM discovery_jobs \
             ORDER BY started_at DESC, id DESC LIMIT $1)",
        )
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        let started_at = time_from_db("started_at", now)?;
        let record = DiscoveryJobRecord {
            id,
            started_at,
            started_by: started_by.clone(),
            state: DiscoveryJobState::Running,
            progress,
            heartbeat_at: started_at,
            finished_at: None,
            error: None,
            report: None,
        };
        Ok((record, pruned))
    }

    /// The running replica's heartbeat, with the progress so far. `false` when the job is no
    /// longer this replica's running job (another replica marked it failed, or it was pruned):
    /// the replica should stop running it.
    #[tracing::instrument(name = "store.heartbeat_discovery_job", skip_all, fields(discovery.id = %id), level = "debug")]
    pub async fn heartbeat_discovery_job(
        &self,
        id: Uuid,
        instance_id: &str,
        progress: &DiscoveryProgress,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE discovery_jobs SET progress = $1, heartbeat_at = $2 \
             WHERE id = $3 AND instance_id = $4 AND state = 'running'",
        )
        .bind(to_json("progress", progress)?)
        .bind(now_ms())
        .bind(id.to_string())
        .bind(instance_id.to_owned())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Writes how the job ended. `false` when it is no longer this replica's running job (it
    /// was marked failed meanwhile, or pruned): the stored outcome stays what it is.
    #[tracing::instrument(name = "store.finish_discovery_job", skip_all, fields(discovery.id = %id, state = outcome.state.as_str()), level = "debug")]
    pub async fn finish_discovery_job(
        &self,
        id: Uuid,
        instance_id: &str,
        outcome: &DiscoveryJobOutcome,
    ) -> Result<bool, StoreError> {
        if outcome.state == DiscoveryJobState::Running {
            return Err(StoreError::Invalid {
                field: "state".to_owned(),
                reason: "a finished job is succeeded or failed".to_owned(),
            });
        }
        let now = now_ms();
        let error = outcome.error.as_ref().map(|e| to_json("error", e)).transpose()?;
        let report = outcome.report.as_ref().map(|r| to_json("report", r)).transpose()?;
        let updated = sqlx::query(
            "UPDATE discovery_jobs SET state = $1, progress = $2, heartbeat_at = $3, \
             finished_at = $3, error = $4, report = $5 \
             WHERE id = $6 AND instance_id = $7 AND state = 'running'",
        )
        .bind(outcome.state.as_str())
        .bind(to_json("progress", &outcome.progress)?)
        .bind(now)
        .bind(error)
        .bind(report)
        .bind(id.to_string())
        .bind(instance_id.to_owned())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Marks the job failed with `error` if it is still running and its heartbeat is older
    /// than `heartbeat_before`. `true` for the one caller that did (so exactly one replica
    /// logs and counts it).
    #[tracing::instrument(name = "store.fail_stale_discovery_job", skip_all, fields(discovery.id = %id), level = "debug")]
    pub async fn fail_stale_discovery_job(
        &self,
        id: Uuid,
        heartbeat_before: DateTime<Utc>,
        error: &DiscoveryError,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE discovery_jobs SET state = 'failed', finished_at = $1, error = $2 \
             WHERE id = $3 AND state = 'running' AND heartbeat_at < $4",
        )
        .bind(now_ms())
        .bind(to_json("error", error)?)
        .bind(id.to_string())
        .bind(heartbeat_before.timestamp_millis())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// The job, or `None` when there is none by that id (never started, or pruned).
    #[tracing::instrument(name = "store.discovery_job", skip_all, fields(discovery.id = %id), level = "debug")]
    pub async fn discovery_job(&self, id: Uuid) -> Result<Option<DiscoveryJobRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_JOB} WHERE id = $1")))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Ids of the jobs that finished with a report, newest first: where an import looks for
    /// the deployments it is asked for.
    #[tracing::instrument(name = "store.reported_discovery_jobs", skip_all, level = "debug")]
    pub async fn reported_discovery_jobs(&self) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM discovery_jobs WHERE state <> 'running' AND report IS NOT NULL \
             ORDER BY started_at DESC, id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| parse_column("discovery_jobs.id", id)).collect()
    }
}

fn to_json(column: &str, value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| decode_error(column, e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| decode_error(column, e.to_string()))
}

fn job_from_row(row: &AnyRow) -> Result<DiscoveryJobRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let progress: String = row.try_get("progress")?;
    let finished_at: Option<i64> = row.try_get("finished_at")?;
    let error: Option<String> = row.try_get("error")?;
    let report: Option<String> = row.try_get("report")?;
    Ok(DiscoveryJobRecord {
        id: parse_column("discovery_jobs.id", &id)?,
        started_at: time_from_db("started_at", row.try_get("started_at")?)?,
        started_by: DiscoveryReplica {
            instance_id: row.try_get("instance_id")?,
            host: row.try_get("host")?,
        },
        state: parse_column("discovery_jobs.state", &state)?,
        progress: from_json("progress", &progress)?,
        heartbeat_at: time_from_db("heartbeat_at", row.try_get("heartbeat_at")?)?,
        finished_at: finished_at.map(|ms| time_from_db("finished_at", ms)).transpose()?,
        error: error.as_deref().map(|e| from_json("error", e)).transpose()?,
        report: report.as_deref().map(|r| from_json("report", r)).transpose()?,
    })
}
