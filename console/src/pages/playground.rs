//! The playground (`/playground`): a chat through a real data plane, streamed token by token.

use axum::Router;

use crate::Console;

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new()
}
