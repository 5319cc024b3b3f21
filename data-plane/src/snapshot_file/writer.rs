//! Saving the snapshot the data plane serves, off the path that applies snapshots.
//!
//! The control-plane client hands each snapshot it applied (or was sent again as current) to
//! a `watch`, which never blocks it and keeps only the newest; one task seals and writes it
//! on the blocking pool. A burst of versions while a write is under way ends in one more
//! write, of the newest.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use modelgw_model::Snapshot;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{SnapshotFileConfig, SnapshotFileError, now_unix_ms, seal_snapshot};
use crate::apply::ApplyOutcome;
use crate::metrics::Metrics;

/// Longest time between two writes of an unchanged snapshot while the control-plane stream
/// is up. The file's time says when a control plane last vouched for the snapshot; without
/// this a configuration unchanged for longer than the maximum age would be refused after a
/// restart although it was current until the moment the data plane stopped. 5 minutes costs
/// one small write and makes the age at most that much too old.
const REFRESH_INTERVAL_MAX: Duration = Duration::from_secs(5 * 60);

/// Shortest refresh interval, for tiny maximum ages (tests).
const REFRESH_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// A snapshot to write and when a control plane sent or confirmed it.
#[derive(Clone)]
struct ToSave {
    snapshot: Arc<Snapshot>,
    confirmed_unix_ms: i64,
}

/// The handle the control-plane client offers snapshots to; the writing task runs until the
/// handle is dropped.
#[derive(Debug)]
pub(crate) struct SnapshotSaver {
    tx: watch::Sender<Option<ToSave>>,
    /// Files written so far (the task counts them; tests read them).
    #[cfg(test)]
    writes: Arc<AtomicU64>,
}

impl std::fmt::Debug for ToSave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToSave")
            .field("version", &self.snapshot.version)
            .field("confirmed_unix_ms", &self.confirmed_unix_ms)
            .finish()
    }
}

impl SnapshotSaver {
    /// Starts the writing task for `config`; `metrics` says whether the control plane is
    /// connected (when an unchanged snapshot's time is refreshed).
    pub(crate) fn start(config: SnapshotFileConfig, metrics: Arc<Metrics>) -> SnapshotSaver {
        let (tx, rx) = watch::channel(None);
        let writes = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(rx, Arc::new(config), metrics, Arc::clone(&writes)));
        SnapshotSaver {
            tx,
            #[cfg(test)]
            writes,
        }
    }

    /// After applying `snapshot` with `outcome`: saves it when it is what the data plane now
    /// serves (applied, or sent again while current, which confirms it). Never waits.
    pub(crate) fn offer(&self, outcome: &ApplyOutcome, snapshot: Arc<Snapshot>) {
        if matches!(outcome, ApplyOutcome::Applied { .. } | ApplyOutcome::AlreadyCurrent { .. }) {
            self.tx.send_replace(Some(ToSave { snapshot, confirmed_unix_ms: now_unix_ms() }));
        }
    }

    /// Files written so far (tests).
    #[cfg(test)]
    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// How often an unchanged snapshot's time is refreshed while connected: a quarter of the
/// maximum age, within [`REFRESH_INTERVAL_MIN`, `REFRESH_INTERVAL_MAX`].
fn refresh_interval(max_age: Duration) -> Duration {
    (max_age / 4).clamp(REFRESH_INTERVAL_MIN, REFRESH_INTERVAL_MAX)
}

async fn run(
    mut rx: watch::Receiver<Option<ToSave>>,
    config: Arc<SnapshotFileConfig>,
    metrics: Arc<Metrics>,
    writes: Arc<AtomicU64>,
) {
    let mut refresh = tokio::time::interval(refresh_interval(config.max_age));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh.tick().await; // The first tick is immediate.
    let mut last: Option<Arc<Snapshot>> = None;
    loop {
        let (to_save, refreshing) = tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return; // The data plane stopped.
                }
                let Some(to_save) = rx.borrow_and_update().clone() else { continue };
                (to_save, false)
            }
            _ = refresh.tick() => {
                let Some(snapshot) = last.clone() else { continue };
                if !metrics.control_plane_connected() {
                    continue;
                }
                (ToSave { snapshot, confirmed_unix_ms: now_unix_ms() }, true)
            }
        };
        let version = to_save.snapshot.version.0;
        let job = {
            let config = Arc::clone(&config);
            let to_save = to_save.clone();
            tokio::task::spawn_blocking(move || write(&config, &to_save))
        };
        match job.await {
            Ok(Ok(bytes)) => {
                let first = writes.fetch_add(1, Ordering::Relaxed) == 0;
                let path = config.path.display();
                if first {
                    info!(%path, version, bytes, "snapshot saved to disk, sealed");
                } else if refreshing {
                    debug!(%path, version, "saved snapshot confirmed current");
                } else {
                    debug!(%path, version, bytes, "snapshot saved to disk, sealed");
                }
                last = Some(to_save.snapshot);
                // Only a successful write restarts the clock of the next refresh.
                refresh.reset();
            }
            Ok(Err(error)) => warn!(
                path = %config.path.display(),
                version,
                %error,
                "could not save the snapshot to disk; a restart without a control plane would not serve it"
            ),
            Err(error) => warn!(%error, "the snapshot writer failed"),
        }
    }
}

/// Seals and writes one snapshot; its size in bytes.
fn write(config: &SnapshotFileConfig, to_save: &ToSave) -> Result<usize, SnapshotFileError> {
    let bytes = seal_snapshot(&config.key, &to_save.snapshot, to_save.confirmed_unix_ms)?;
    write_atomic(&config.path, config.directory(), &bytes).map_err(|source| {
        SnapshotFileError::Io { path: config.path.display().to_string(), source }
    })?;
    Ok(bytes.len())
}

/// Replaces `path` with `bytes` so that a reader (or a crash) sees the old file or the new
/// one, never a mix: a temp file in the same directory (mode 0600 from its creation), synced,
/// renamed over the file, and the directory synced so the rename itself survives a crash.
pub(crate) fn write_atomic(path: &Path, directory: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the snapshot path names no file")
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".tmp");
    let temp = directory.join(temp_name);
    // Left by a crash mid-write: sealed, but not to be kept.
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    std::fs::File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::super::{SnapshotKey, load};
    use super::*;
    use crate::routing_table::tests::one_gateway as snapshot;
    use modelgw_model::ConfigVersion;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_atomic_write_leaves_one_private_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        write_atomic(&path, dir.path(), b"first").unwrap();
        // A temp file left by a crash is replaced, an existing file overwritten.
        std::fs::write(dir.path().join(".snap.tmp"), b"left over").unwrap();
        write_atomic(&path, dir.path(), b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["snap"]);
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        // A directory it cannot write into is an error, not a panic; nothing is left.
        let err = write_atomic(&dir.path().join("absent/snap"), &dir.path().join("absent"), b"x")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn applied_snapshots_are_saved_newest_first_and_rejected_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let config = SnapshotFileConfig::new(
            dir.path().join("snapshot.sealed"),
            SnapshotKey::from_bytes([9; 32]),
        );
        let saver = SnapshotSaver::start(config.clone(), Arc::new(Metrics::default()));
        let rejected = ApplyOutcome::Rejected { version: ConfigVersion(1), reason: "x".into() };
        saver.offer(&rejected, Arc::new(snapshot(1)));
        // A burst: the writer (on this single-threaded runtime) runs only after it, so only
        // the newest is written.
        for v in 2..=40 {
            saver
                .offer(&ApplyOutcome::Applied { version: ConfigVersion(v) }, Arc::new(snapshot(v)));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while saver.writes() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "nothing written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(load(&config).unwrap().snapshot.version, ConfigVersion(40));
        assert_eq!(saver.writes(), 1, "the burst was coalesced into one write");
        // Sent again as current: written again (a newer confirmation time).
        let before = load(&config).unwrap().confirmed_unix_ms;
        tokio::time::sleep(Duration::from_millis(5)).await;
        saver.offer(
            &ApplyOutcome::AlreadyCurrent { version: ConfigVersion(40) },
            Arc::new(snapshot(40)),
        );
        while saver.writes() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "not written again");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(load(&config).unwrap().confirmed_unix_ms > before);
    }

    #[test]
    fn the_refresh_interval_follows_the_maximum_age_within_bounds() {
        assert_eq!(refresh_interval(Duration::from_secs(24 * 3600)), REFRESH_INTERVAL_MAX);
        assert_eq!(refresh_interval(Duration::from_secs(60)), Duration::from_secs(15));
        assert_eq!(refresh_interval(Duration::from_millis(10)), REFRESH_INTERVAL_MIN);
    }
}
