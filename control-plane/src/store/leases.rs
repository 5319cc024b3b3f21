//! Budget leases of gateway keys' limits (issue #14): NOT configuration. The allocation rules
//! are `distribution::leases`; this is their transaction.

use std::collections::HashMap;
use std::num::NonZeroU64;

use modelgw_model::keys::{Measure, Usage, Window, WindowLimits};
use modelgw_model::{GatewayKeyId, NodeId};
use sqlx::{AnyConnection, AssertSqlSafe, Row as _};

use super::usage::{
    amount_from_db, amount_to_db, instance_from_db, instance_to_db, lock_windows, usage_from_row,
};
use super::{Store, StoreError, parse_column};
use crate::distribution::leases::{Budget, Grant, Holder, RELEASE_GRACE, VALID_FOR, grant};

/// Keys named in one statement (bound parameters: far below every backend's limit).
pub(super) const KEYS_PER_STATEMENT: usize = 500;

/// One (key, window, window start) an instance asks budget for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    pub key_id: GatewayKeyId,
    pub window: Window,
    pub window_start: i64,
    /// The key's limits in that window.
    pub limits: WindowLimits,
    /// One typical request while the window has no traffic (`distribution::leases`).
    pub default_typical: Usage,
    /// The reservation the instance last reported refusing for a short grant (zero: none).
    pub wanted: Usage,
}

/// How long a lease counts after it was written or renewed: what the data plane may use it
/// for, and the grace for transit and clocks.
fn live_for_ms() -> i64 {
    i64::try_from((VALID_FOR + RELEASE_GRACE).as_millis()).unwrap_or(i64::MAX)
}

/// A grant's measure columns in the order `granted_requests, …`.
const MEASURES: [Measure; 4] = Measure::ALL;

impl Store {
    /// Computes `instance`'s grant for each request, writes it (live for
    /// [`VALID_FOR`] + [`RELEASE_GRACE`] from `now_ms`, which also renews an unchanged one) and
    /// returns the grants in the order of `requests`. One transaction that locks every
    /// (key, window, start) row it reads first (in a fixed order), so replicas sharing the
    /// database never lend the same budget twice.
    #[tracing::instrument(name = "store.allocate_leases", skip_all, fields(requests = requests.len()), level = "debug")]
    pub async fn allocate_leases(
        &self,
        instance: NonZeroU64,
        node_id: &NodeId,
        requests: &[LeaseRequest],
        now_ms: i64,
    ) -> Result<Vec<Grant>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_unversioned_write().await?;
        // Data-plane instances holding live leases anywhere: the fleet the limit is spread on.
        let connected: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT instance) FROM key_leases WHERE expires_at > $1 AND instance <> $2",
        )
        .bind(now_ms)
        .bind(instance_to_db(instance))
        .fetch_one(&mut *tx)
        .await?;
        let connected = usize::try_from(connected).unwrap_or(0) + 1;
        // Grouped by window; groups and keys in a fixed order (the lock order).
        let mut groups: Vec<((Window, i64), Vec<usize>)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let group = (r.window, r.window_start);
            match groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, members)) => members.push(i),
                None => groups.push((group, vec![i])),
            }
        }
        groups.sort_by_key(|(g, _)| *g);
        let mut grants: Vec<Option<Grant>> = vec![None; requests.len()];
        for ((window, start), members) in &groups {
            let keys: Vec<GatewayKeyId> = members.iter().map(|i| requests[*i].key_id).collect();
            lock_windows(&mut tx, self.backend, *window, *start, &keys).await?;
            let state = window_state(&mut tx, *window, *start, &keys).await?;
            let mut written = Vec::with_capacity(members.len());
            for i in members {
                let r = &requests[*i];
                let empty = WindowState::default();
                let s = state.get(&r.key_id).unwrap_or(&empty);
                let budget = Budget {
                    limits: r.limits,
                    baseline: s.baseline,
                    holders: &s.holders,
                    connected,
                    default_typical: r.default_typical,
                    wanted: r.wanted,
                };
                let g = grant(&budget, instance.get(), now_ms);
                written.push((r.key_id, g.granted));
                grants[*i] = Some(g);
            }
            write_leases(
                &mut tx,
                instance,
                node_id,
                *window,
                *start,
                &written,
                now_ms,
                now_ms.saturating_add(live_for_ms()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(grants.into_iter().flatten().collect())
    }
}

/// What the database holds for one key in one window.
#[derive(Debug, Default)]
struct WindowState {
    baseline: Usage,
    holders: Vec<Holder>,
}

/// Baselines, usage and leases of `keys` in one window, read after their rows were locked.
async fn window_state(
    conn: &mut AnyConnection,
    window: Window,
    start: i64,
    keys: &[GatewayKeyId],
) -> Result<HashMap<GatewayKeyId, WindowState>, StoreError> {
    let mut state: HashMap<GatewayKeyId, WindowState> = HashMap::new();
    let mut holders: HashMap<(GatewayKeyId, u64), Holder> = HashMap::new();
    let columns = |prefix: &str| MEASURES.map(|m| format!("{prefix}_{}", m.as_str())).join(", ");
    for chunk in keys.chunks(KEYS_PER_STATEMENT) {
        let list = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect::<Vec<_>>().join(", ");
        let queries = [
            format!(
                "SELECT key_id, {} FROM key_windows WHERE window_kind = $1 AND window_start = $2 \
                 AND key_id IN ({list})",
                columns("baseline")
            ),
            format!(
                "SELECT key_id, instance, {}, {} FROM key_usage WHERE window_kind = $1 \
                 AND window_start = $2 AND key_id IN ({list})",
                columns("charged"),
                columns("reserved")
            ),
            format!(
                "SELECT key_id, instance, {}, expires_at FROM key_leases WHERE window_kind = $1 \
                 AND window_start = $2 AND key_id IN ({list})",
                columns("granted")
            ),
        ];
        for (q, sql) in queries.into_iter().enumerate() {
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(window.as_str()).bind(start);
            for k in chunk {
                query = query.bind(k.to_string());
            }
            for row in query.fetch_all(&mut *conn).await? {
                let key_id: String = row.try_get("key_id")?;
                let key_id: GatewayKeyId = parse_column("key_id", &key_id)?;
                if q == 0 {
                    state.entry(key_id).or_default().baseline = usage_from_row(&row, "baseline")?;
                    continue;
                }
                let instance = instance_from_db(row.try_get("instance")?);
                let h = holders.entry((key_id, instance)).or_insert(Holder {
                    instance,
                    used: Usage::default(),
                    granted: None,
                    expires_at_ms: 0,
                });
                if q == 1 {
                    let charged = usage_from_row(&row, "charged")?;
                    h.used = charged.saturating_add(usage_from_row(&row, "reserved")?);
                } else {
                    let mut granted = WindowLimits::default();
                    for m in MEASURES {
                        let v: Option<i64> =
                            row.try_get(format!("granted_{}", m.as_str()).as_str())?;
                        granted.set(m, v.map(amount_from_db));
                    }
                    h.granted = Some(granted);
                    h.expires_at_ms = row.try_get("expires_at")?;
                }
            }
        }
    }
    for ((key_id, _), h) in holders {
        state.entry(key_id).or_default().holders.push(h);
    }
    Ok(state)
}

/// Upserts the instance's grants of one window, all live until `expires_at`.
#[allow(clippy::too_many_arguments)]
async fn write_leases(
    conn: &mut AnyConnection,
    instance: NonZeroU64,
    node_id: &NodeId,
    window: Window,
    start: i64,
    grants: &[(GatewayKeyId, WindowLimits)],
    now_ms: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    let granted = MEASURES.map(|m| format!("granted_{}", m.as_str()));
    let updates = granted.iter().map(|c| format!("{c} = excluded.{c}")).collect::<Vec<_>>();
    // Per row: key_id and the four grants; the rest is shared ($1..$6).
    const SHARED: usize = 6;
    const PER_ROW: usize = 5;
    for chunk in grants.chunks(KEYS_PER_STATEMENT / PER_ROW) {
        let values = (0..chunk.len())
            .map(|i| {
                let p = |j: usize| format!("${}", SHARED + i * PER_ROW + j);
                format!(
                    "({}, $1, $2, $3, $4, {}, {}, {}, {}, $5, $6)",
                    p(1),
                    p(2),
                    p(3),
                    p(4),
                    p(5)
                )
            })
            .collect::<Vec<_>>();
        let sql = format!(
            "INSERT INTO key_leases (key_id, window_kind, window_start, instance, node_id, {}, \
             expires_at, updated_at) VALUES {} ON CONFLICT (key_id, window_kind, window_start, \
             instance) DO UPDATE SET node_id = excluded.node_id, {}, \
             expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            granted.join(", "),
            values.join(", "),
            updates.join(", ")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(window.as_str())
            .bind(start)
            .bind(instance_to_db(instance))
            .bind(node_id.0.clone())
            .bind(expires_at)
            .bind(now_ms);
        for (key_id, g) in chunk {
            q = q.bind(key_id.to_string());
            for m in MEASURES {
                q = q.bind(g.get(m).map(amount_to_db));
            }
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
