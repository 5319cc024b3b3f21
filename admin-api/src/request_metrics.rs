//! Counts every admin API response by status class (`modelgw_admin_requests_total`), the
//! routes' own answers and the router's (404, 405, 413) alike.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use modelgw_control_plane::ControlPlaneMetrics;

/// Middleware: counts the response's status class once it is known.
pub(crate) async fn count_request(
    State(metrics): State<ControlPlaneMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    metrics.admin_request(response.status().as_u16());
    response
}
