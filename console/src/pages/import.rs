//! Import from Azure (`/import`): discovery with live progress, the deployment table, the import and its result.

use axum::Router;

use crate::Console;

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new()
}
