//! The Model Gateway control plane.
//!
//! Owns: the configuration store (SQLite by default, PostgreSQL in production) and its
//! migrations, secrets at rest, the monotonic configuration version, and the distribution
//! of versioned routing snapshots to data planes over gRPC, with the registry of connected
//! data planes and the health they report: aggregated per endpoint across the fleet, pushed
//! to every data plane when it changes, and stored (outside the versioned configuration) so
//! restarts and other replicas see it; the quota spend they report, summed per endpoint and
//! pushed back at most once a second; the request traces data planes ship (stored in batches
//! by a writer off the stream, pruned by a retention job); and its Prometheus metrics
//! (`metrics`).
//!
//! Never: proxies inference traffic, or lets a secret reach a log line or an error message.

pub mod azure;
pub mod distribution;
pub mod metrics;
pub mod secrets;
pub mod store;

pub use distribution::{
    ClientAuth, ConfigChanges, DEFAULT_MAX_HEALTH_WINDOW, DataPlaneHealth, DataPlaneRegistry,
    DataPlaneStatus, Distribution, DistributionSettings, EndpointHealthView, GrpcSecurity,
    GrpcSettings, LastError, QuotaSharingSettings, RegistrationLimits, TlsFiles,
};
pub use metrics::ControlPlaneMetrics;
pub use secrets::MasterKey;
pub use store::{Store, StoreError};
