//! Change notifications between control-plane replicas sharing PostgreSQL (issue #15).
//!
//! Each replica `LISTEN`s on two channels its database triggers `NOTIFY` at commit
//! (migration `20261208000000_change_notifications.sql`):
//! - `modelgw_config`, payload the committed version: announced to this replica's publisher
//!   like one of its own commits, so a change made through any replica reaches every
//!   replica's data planes in one database round trip instead of up to a poll interval;
//! - `modelgw_health`: a health report or reset was stored; the publisher merges the stored
//!   fleet health at once (several notifications while it merges fold into one).
//!
//! Notifications are transient: while the listening connection is down none arrive, so the
//! poll stays as the fallback, and after every reconnect the publisher checks once at once.
//! SQLite has no listener (one process owns the file).

use std::sync::Arc;
use std::time::Duration;

use modelgw_model::ConfigVersion;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::ConfigChanges;

/// Channel of committed configuration versions.
pub(super) const CONFIG_CHANNEL: &str = "modelgw_config";
/// Channel of stored health changes (reports, resets).
pub(super) const HEALTH_CHANNEL: &str = "modelgw_health";

/// Wait before opening the listening connection again after it failed (the poll covers the
/// gap).
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// What a notification asks of the publisher.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    /// A version was committed (by any replica, this one included: the publisher ignores
    /// versions it already has).
    Config(ConfigVersion),
    /// Stored health changed.
    Health,
    /// Not ours, or a payload that does not parse: check everything, as a poll would.
    Check,
}

fn heard(channel: &str, payload: &str) -> Heard {
    match channel {
        CONFIG_CHANNEL => payload.parse().map_or(Heard::Check, |v| Heard::Config(ConfigVersion(v))),
        HEALTH_CHANNEL => Heard::Health,
        _ => Heard::Check,
    }
}

/// Listens on `url` forever (until aborted): config versions go to `changes`, everything
/// else (health, a reconnect after which notifications may have been missed) wakes `check`,
/// on which the publisher merges stored health and compares versions.
pub(super) async fn listen(url: Arc<str>, changes: ConfigChanges, check: Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        let mut listener = match open(&url).await {
            Ok(listener) => listener,
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(error = %e, retry_in_ms = RELISTEN_DELAY.as_millis() as u64, "listening for other replicas' changes failed; polling meanwhile");
                }
                tokio::time::sleep(RELISTEN_DELAY).await;
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(attempts = failures, "listening for other replicas' changes again");
        } else {
            tracing::info!(
                channels = %format_args!("{CONFIG_CHANNEL},{HEALTH_CHANNEL}"),
                "listening for other replicas' changes"
            );
        }
        // Whatever was committed before LISTEN took effect was not announced to us.
        check.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    match heard(notification.channel(), notification.payload()) {
                        Heard::Config(version) => {
                            tracing::debug!(config_version = %version, "another replica committed a change");
                            changes.committed(version);
                        }
                        Heard::Health | Heard::Check => check.notify_one(),
                    }
                }
                // The connection dropped; try_recv reconnects on the next call. What was
                // committed meanwhile was not announced.
                Ok(None) => {
                    tracing::warn!("the listening connection dropped; reconnecting");
                    check.notify_one();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for other replicas' changes failed; polling meanwhile");
                    failures = 1;
                    tokio::time::sleep(RELISTEN_DELAY).await;
                    break;
                }
            }
        }
    }
}

async fn open(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen_all([CONFIG_CHANNEL, HEALTH_CHANNEL]).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_read_strictly() {
        assert_eq!(heard(CONFIG_CHANNEL, "42"), Heard::Config(ConfigVersion(42)));
        assert_eq!(heard(HEALTH_CHANNEL, ""), Heard::Health);
        assert_eq!(heard(CONFIG_CHANNEL, "not a number"), Heard::Check);
        assert_eq!(heard(CONFIG_CHANNEL, "-1"), Heard::Check);
        assert_eq!(heard("other", "1"), Heard::Check);
    }
}
