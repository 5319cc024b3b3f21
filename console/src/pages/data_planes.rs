//! Data planes (`/data-planes`): node id, identity, applied version, connection, last seen.

use axum::Router;

use crate::Console;

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new()
}
