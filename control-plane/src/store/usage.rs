//! Gateway keys' usage as data-plane instances report it (issue #14): NOT configuration.
//! Writes here never bump the configuration version.
//!
//! Reports are cumulative per (instance, key, window, window start), so the store keeps one
//! row per that tuple (`key_usage`): a resent, repeated or reordered report never counts
//! twice, and a restarted data plane (a new instance) never erases what its predecessor
//! charged. A key's usage in a window is the sum over instances of charged + reserved (a
//! request in flight counts with its reservation until it settles), minus the window's reset
//! baseline (`key_windows`), if an operator reset the key's counters in it.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use modelgw_model::keys::{Measure, Usage, UsageReport, Window};
use modelgw_model::{GatewayId, GatewayKeyId, NodeId};
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row as _};

use super::audit::{self, AuditAction, AuditContext, AuditEntity};
use super::{Backend, Store, StoreError, parse_column, time_from_db};

/// How long usage rows of each window are kept: minute rows for a day, hour rows for a month
/// (31 days), day rows for a year and a month (400 days) — enough to compare a day with the
/// same day last year.
pub const USAGE_RETENTION: [Duration; 3] = [
    Duration::from_secs(24 * 3600),
    Duration::from_secs(31 * 24 * 3600),
    Duration::from_secs(400 * 24 * 3600),
];

/// [`USAGE_RETENTION`] of `window`.
pub const fn usage_retention(window: Window) -> Duration {
    USAGE_RETENTION[window.index()]
}

/// Usage rows written by one statement (11 bound values each: far below every backend's
/// limit on parameters).
const USAGE_ROWS_PER_STATEMENT: usize = 200;

/// A key's usage in one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyUsageRow {
    pub window_start: DateTime<Utc>,
    /// Charged + reserved over every instance, minus the reset baseline.
    pub usage: Usage,
}

/// A key's usage in its current windows (minute, hour, day; by `Window::index`).
pub type KeyWindowUsage = [Usage; 3];

/// The four measures in column order (`<prefix>_requests`, …).
const MEASURES: [Measure; 4] = Measure::ALL;

/// A data plane's random instance id as stored: its bits as a signed BIGINT.
pub(super) fn instance_to_db(instance: NonZeroU64) -> i64 {
    i64::from_ne_bytes(instance.get().to_ne_bytes())
}

pub(super) fn instance_from_db(raw: i64) -> u64 {
    u64::from_ne_bytes(raw.to_ne_bytes())
}

/// An amount as stored (BIGINT): beyond `i64::MAX` is beyond every limit.
pub(super) fn amount_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn amount_from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `<prefix>_requests`, … of `row`.
pub(super) fn usage_from_row(row: &AnyRow, prefix: &str) -> Result<Usage, StoreError> {
    let mut usage = Usage::default();
    for m in MEASURES {
        let v: i64 = row.try_get(format!("{prefix}_{}", m.as_str()).as_str())?;
        usage.set(m, amount_from_db(v));
    }
    Ok(usage)
}

/// The column list `<prefix>_requests, <prefix>_prompt_tokens, …`.
pub(super) fn columns(prefix: &str) -> String {
    MEASURES.map(|m| format!("{prefix}_{}", m.as_str())).join(", ")
}

impl Store {
    /// Stores `instance`'s cumulative usage report: per entry, charged keeps the largest value
    /// ever reported and reserved the latest (an entry repeated within the report counts once,
    /// with its largest charges). One transaction.
    #[tracing::instrument(name = "store.record_key_usage", skip_all, fields(entries = report.keys.len()), level = "debug")]
    pub async fn record_key_usage(
        &self,
        instance: NonZeroU64,
        node_id: &NodeId,
        report: &UsageReport,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // One row per (key, window, start): a statement may not update a row twice.
        let mut entries: HashMap<(GatewayKeyId, Window, i64), (Usage, Usage)> = HashMap::new();
        for e in &report.keys {
            let slot = entries.entry((e.key_id, e.window, e.window_start_unix_ms)).or_default();
            *slot = (slot.0.max(e.charged), e.reserved);
        }
        if entries.is_empty() {
            return Ok(());
        }
        let mut entries: Vec<_> = entries.into_iter().collect();
        // A fixed order: concurrent writers of the same rows lock them in the same order.
        entries.sort_unstable_by_key(|((k, w, s), _)| (k.to_string(), *w, *s));
        let greatest = match self.backend {
            Backend::Sqlite => "max",
            Backend::Postgres => "GREATEST",
        };
        let keep_max = MEASURES
            .map(|m| {
                let c = format!("charged_{}", m.as_str());
                format!("{c} = {greatest}(key_usage.{c}, excluded.{c})")
            })
            .join(", ");
        let latest = MEASURES
            .map(|m| format!("reserved_{0} = excluded.reserved_{0}", m.as_str()))
            .join(", ");
        // Per row: key, window, start and the eight amounts; instance, node and time shared.
        const SHARED: usize = 3;
        const PER_ROW: usize = 11;
        let mut tx = self.begin_unversioned_write().await?;
        for chunk in entries.chunks(USAGE_ROWS_PER_STATEMENT) {
            let values = (0..chunk.len())
                .map(|i| {
                    let p = (1..=PER_ROW)
                        .map(|j| format!("${}", SHARED + i * PER_ROW + j))
                        .collect::<Vec<_>>();
                    format!("({}, {}, {}, $1, $2, {}, $3)", p[0], p[1], p[2], p[3..].join(", "))
                })
                .collect::<Vec<_>>();
            let sql = format!(
                "INSERT INTO key_usage (key_id, window_kind, window_start, instance, node_id, \
                 {}, {}, updated_at) VALUES {} \
                 ON CONFLICT (key_id, window_kind, window_start, instance) DO UPDATE SET \
                 node_id = excluded.node_id, {keep_max}, {latest}, updated_at = excluded.updated_at",
                columns("charged"),
                columns("reserved"),
                values.join(", "),
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(instance_to_db(instance))
                .bind(node_id.0.clone())
                .bind(at.timestamp_millis());
            for ((key_id, window, start), (charged, reserved)) in chunk {
                q = q.bind(key_id.to_string()).bind(window.as_str()).bind(*start);
                for m in MEASURES {
                    q = q.bind(amount_to_db(charged.get(m)));
                }
                for m in MEASURES {
                    q = q.bind(amount_to_db(reserved.get(m)));
                }
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The key's usage per window of kind `window` whose start lies in `[from, to)`, oldest
    /// first; windows without usage are left out.
    #[tracing::instrument(name = "store.key_usage_history", skip_all, fields(gateway.id = %gateway_id, key.id = %key_id, window = window.as_str()), level = "debug")]
    pub async fn key_usage_history(
        &self,
        gateway_id: GatewayId,
        key_id: GatewayKeyId,
        window: Window,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<KeyUsageRow>, StoreError> {
        let mut tx = self.begin_read().await?;
        ensure_key(&mut tx, gateway_id, key_id).await?;
        let sums = MEASURES
            .map(|m| {
                format!(
                    "CAST(SUM(u.charged_{0} + u.reserved_{0}) AS BIGINT) AS used_{0}",
                    m.as_str()
                )
            })
            .join(", ");
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT u.window_start, {sums} FROM key_usage u WHERE u.key_id = $1 \
             AND u.window_kind = $2 AND u.window_start >= $3 AND u.window_start < $4 \
             GROUP BY u.window_start ORDER BY u.window_start"
        )))
        .bind(key_id.to_string())
        .bind(window.as_str())
        .bind(from.timestamp_millis())
        .bind(to.timestamp_millis())
        .fetch_all(&mut *tx)
        .await?;
        let baselines = baselines(&mut tx, &[key_id], window, from, to).await?;
        tx.commit().await?;
        let mut history = Vec::with_capacity(rows.len());
        for row in &rows {
            let start: i64 = row.try_get("window_start")?;
            let used = summed(row)?;
            let baseline = baselines.get(&(key_id, start)).copied().unwrap_or_default();
            let usage = used.saturating_sub(baseline);
            if usage.is_zero() {
                continue;
            }
            history.push(KeyUsageRow {
                window_start: time_from_db("key_usage.window_start", start)?,
                usage,
            });
        }
        Ok(history)
    }

    /// Every key's usage of the gateway in the windows holding `now` (keys without usage are
    /// left out).
    #[tracing::instrument(name = "store.current_key_usage", skip_all, fields(gateway.id = %gateway_id), level = "debug")]
    pub async fn current_key_usage(
        &self,
        gateway_id: GatewayId,
        now: DateTime<Utc>,
    ) -> Result<HashMap<GatewayKeyId, KeyWindowUsage>, StoreError> {
        let now = now.timestamp_millis();
        let sums = MEASURES
            .map(|m| {
                format!(
                    "CAST(SUM(u.charged_{0} + u.reserved_{0}) AS BIGINT) AS used_{0}",
                    m.as_str()
                )
            })
            .join(", ");
        let mut tx = self.begin_read().await?;
        let mut usage: HashMap<GatewayKeyId, KeyWindowUsage> = HashMap::new();
        for window in Window::ALL {
            let start = window.start_of(now);
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT u.key_id, {sums}, w.baseline_requests, w.baseline_prompt_tokens, \
                 w.baseline_completion_tokens, w.baseline_total_tokens \
                 FROM key_usage u JOIN gateway_keys k ON k.id = u.key_id \
                 LEFT JOIN key_windows w ON w.key_id = u.key_id \
                 AND w.window_kind = u.window_kind AND w.window_start = u.window_start \
                 WHERE k.gateway_id = $1 AND u.window_kind = $2 AND u.window_start = $3 \
                 GROUP BY u.key_id, w.baseline_requests, w.baseline_prompt_tokens, \
                 w.baseline_completion_tokens, w.baseline_total_tokens"
            )))
            .bind(gateway_id.to_string())
            .bind(window.as_str())
            .bind(start)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                let key_id: String = row.try_get("key_id")?;
                let key_id: GatewayKeyId = parse_column("key_usage.key_id", &key_id)?;
                let mut baseline = Usage::default();
                for m in MEASURES {
                    let v: Option<i64> =
                        row.try_get(format!("baseline_{}", m.as_str()).as_str())?;
                    baseline.set(m, v.map_or(0, amount_from_db));
                }
                usage.entry(key_id).or_default()[window.index()] =
                    summed(row)?.saturating_sub(baseline);
            }
        }
        tx.commit().await?;
        Ok(usage)
    }

    /// Resets the key's counters for the windows holding `at`: the fleet's usage so far
    /// becomes the baseline, so the key's usage (and the budget data planes are lent) counts
    /// from zero again until the windows end. Recorded in the audit log (`reset_usage`, with
    /// the usage that was discarded); not configuration. Returns the discarded usage, per
    /// window.
    #[tracing::instrument(name = "store.reset_key_usage", skip_all, fields(gateway.id = %gateway_id, key.id = %key_id))]
    pub async fn reset_key_usage(
        &self,
        gateway_id: GatewayId,
        key_id: GatewayKeyId,
        at: DateTime<Utc>,
        audit: &AuditContext,
    ) -> Result<KeyWindowUsage, StoreError> {
        let now = at.timestamp_millis();
        let mut tx = self.begin_unversioned_write().await?;
        let name = ensure_key(&mut tx, gateway_id, key_id).await?;
        let sums = MEASURES
            .map(|m| {
                format!("CAST(SUM(charged_{0} + reserved_{0}) AS BIGINT) AS used_{0}", m.as_str())
            })
            .join(", ");
        let mut discarded = KeyWindowUsage::default();
        let mut before = Map::new();
        for window in Window::ALL {
            let start = window.start_of(now);
            // Locks the window's row like an allocation does, so the baseline and the
            // leases computed from it are never interleaved.
            lock_windows(&mut tx, self.backend, window, start, &[key_id]).await?;
            let used = sqlx::query(AssertSqlSafe(format!(
                "SELECT {sums} FROM key_usage WHERE key_id = $1 AND window_kind = $2 \
                 AND window_start = $3"
            )))
            .bind(key_id.to_string())
            .bind(window.as_str())
            .bind(start)
            .fetch_one(&mut *tx)
            .await?;
            let used = summed_optional(&used)?;
            let previous = baselines(
                &mut tx,
                &[key_id],
                window,
                DateTime::from_timestamp_millis(start).unwrap_or(at),
                DateTime::from_timestamp_millis(start + 1).unwrap_or(at),
            )
            .await?
            .remove(&(key_id, start))
            .unwrap_or_default();
            // A baseline never goes down (a later report could otherwise make usage jump).
            let baseline = used.max(previous);
            let sets = MEASURES
                .map(|m| format!("baseline_{} = ${}", m.as_str(), m.index() + 4))
                .join(", ");
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE key_windows SET {sets}, reset_at = $8 WHERE key_id = $1 \
                 AND window_kind = $2 AND window_start = $3"
            )))
            .bind(key_id.to_string())
            .bind(window.as_str())
            .bind(start);
            for m in MEASURES {
                q = q.bind(amount_to_db(baseline.get(m)));
            }
            q.bind(now).execute(&mut *tx).await?;
            let counted = used.saturating_sub(previous);
            discarded[window.index()] = counted;
            before.insert(
                window.as_str().to_owned(),
                serde_json::to_value(counted).unwrap_or_default(),
            );
        }
        let mut after = Map::new();
        after.insert("usage_reset_at".to_owned(), audit::time_value(at));
        let change = audit::Change {
            entity: AuditEntity::GatewayKey,
            entity_id: key_id.to_string(),
            entity_name: name.clone(),
            action: AuditAction::ResetUsage,
            before: Some(Map::from_iter([("usage".to_owned(), Value::Object(before))])),
            after: Some(after),
        };
        audit::record(&mut tx, audit, change, None).await?;
        tx.commit().await?;
        tracing::info!(key.name = %name, "gateway key usage reset for the current windows");
        Ok(discarded)
    }

    /// Deletes usage rows older than their window's retention ([`USAGE_RETENTION`]), window
    /// rows likewise, and leases of windows that ended and expired before `now`. Returns the
    /// rows deleted.
    #[tracing::instrument(name = "store.prune_key_usage", skip_all, level = "debug")]
    pub async fn prune_key_usage(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = now.timestamp_millis();
        let mut deleted = 0;
        let mut tx = self.begin_unversioned_write().await?;
        for window in Window::ALL {
            let retention = i64::try_from(usage_retention(window).as_millis()).unwrap_or(i64::MAX);
            let cutoff = now.saturating_sub(retention);
            for table in ["key_usage", "key_windows"] {
                deleted += sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE window_kind = $1 AND window_start < $2"
                )))
                .bind(window.as_str())
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            // A lease is only needed while its window runs (and it counts).
            deleted += sqlx::query(
                "DELETE FROM key_leases WHERE window_kind = $1 AND window_start < $2 \
                 AND expires_at < $3",
            )
            .bind(window.as_str())
            .bind(now - window.len_ms())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }
}

/// The key's name, or `NotFound` when it is not a key of the gateway.
async fn ensure_key(
    conn: &mut AnyConnection,
    gateway_id: GatewayId,
    key_id: GatewayKeyId,
) -> Result<String, StoreError> {
    sqlx::query_scalar::<_, String>(
        "SELECT name FROM gateway_keys WHERE id = $1 AND gateway_id = $2",
    )
    .bind(key_id.to_string())
    .bind(gateway_id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound { entity: "gateway key", id: key_id.to_string() })
}

/// `used_requests`, … of an aggregate row.
fn summed(row: &AnyRow) -> Result<Usage, StoreError> {
    let mut usage = Usage::default();
    for m in MEASURES {
        let v: i64 = row.try_get(format!("used_{}", m.as_str()).as_str())?;
        usage.set(m, amount_from_db(v));
    }
    Ok(usage)
}

/// Like [`summed`], where no row matched (SUM of nothing is NULL).
fn summed_optional(row: &AnyRow) -> Result<Usage, StoreError> {
    let mut usage = Usage::default();
    for m in MEASURES {
        let v: Option<i64> = row.try_get(format!("used_{}", m.as_str()).as_str())?;
        usage.set(m, v.map_or(0, amount_from_db));
    }
    Ok(usage)
}

/// The reset baselines of `keys` in windows of kind `window` starting in `[from, to)`.
async fn baselines(
    conn: &mut AnyConnection,
    keys: &[GatewayKeyId],
    window: Window,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<HashMap<(GatewayKeyId, i64), Usage>, StoreError> {
    let mut out = HashMap::new();
    for key_id in keys {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT window_start, {} FROM key_windows WHERE key_id = $1 AND window_kind = $2 \
             AND window_start >= $3 AND window_start < $4 AND reset_at IS NOT NULL",
            columns("baseline")
        )))
        .bind(key_id.to_string())
        .bind(window.as_str())
        .bind(from.timestamp_millis())
        .bind(to.timestamp_millis())
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            let start: i64 = row.try_get("window_start")?;
            out.insert((*key_id, start), usage_from_row(row, "baseline")?);
        }
    }
    Ok(out)
}

/// Creates the `key_windows` rows of `keys` in one window if missing and locks them, in key
/// order (every writer locks in that order, so two never deadlock). On SQLite the
/// transaction already holds the database's write lock.
pub(super) async fn lock_windows(
    conn: &mut AnyConnection,
    backend: Backend,
    window: Window,
    start: i64,
    keys: &[GatewayKeyId],
) -> Result<(), StoreError> {
    let mut keys = keys.to_vec();
    keys.sort_unstable_by_key(|k| k.to_string());
    for chunk in keys.chunks(super::leases::KEYS_PER_STATEMENT) {
        let values = (0..chunk.len()).map(|i| format!("(${}, $1, $2)", i + 3)).collect::<Vec<_>>();
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO key_windows (key_id, window_kind, window_start) VALUES {} \
             ON CONFLICT (key_id, window_kind, window_start) DO NOTHING",
            values.join(", ")
        )))
        .bind(window.as_str())
        .bind(start);
        for k in chunk {
            q = q.bind(k.to_string());
        }
        q.execute(&mut *conn).await?;
        if backend == Backend::Postgres {
            let list = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect::<Vec<_>>();
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "SELECT key_id FROM key_windows WHERE window_kind = $1 AND window_start = $2 \
                 AND key_id IN ({}) ORDER BY key_id FOR UPDATE",
                list.join(", ")
            )))
            .bind(window.as_str())
            .bind(start);
            for k in chunk {
                q = q.bind(k.to_string());
            }
            q.fetch_all(&mut *conn).await?;
        }
    }
    Ok(())
}
