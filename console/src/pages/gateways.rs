//! Gateways (`/gateways`): list, create (by hand or from a proposal), members and routing, the Gateway URL with snippets, and gateway keys.

use axum::Router;

use crate::Console;

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new()
}
