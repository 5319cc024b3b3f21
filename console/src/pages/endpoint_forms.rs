//! Inference endpoint detail, create, edit, delete and health reset (`/endpoints/new`, `/endpoints/{id}`, …).

use axum::Router;

use crate::Console;

/// This section's routes (behind the session guard).
pub(crate) fn routes() -> Router<Console> {
    Router::new()
}
