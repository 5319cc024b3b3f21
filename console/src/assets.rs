//! The console's static files, embedded in the binary and served under `/assets/` with a
//! content hash in the name, so they can be cached forever and a new build is never served a
//! stale copy.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

/// One embedded file.
pub(crate) struct Asset {
    /// The name in the source tree, e.g. `console.css`.
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

pub(crate) static CSS: Asset = Asset {
    name: "console.css",
    content_type: "text/css; charset=utf-8",
    bytes: include_bytes!("../assets/console.css"),
};
pub(crate) static JS: Asset = Asset {
    name: "console.js",
    content_type: "text/javascript; charset=utf-8",
    bytes: include_bytes!("../assets/console.js"),
};
pub(crate) static ICON: Asset = Asset {
    name: "icon.svg",
    content_type: "image/svg+xml",
    bytes: include_bytes!("../assets/icon.svg"),
};
/// htmx, pinned in `assets/vendor/package.json` (refresh with `assets/vendor/update.sh`).
pub(crate) static HTMX: Asset = Asset {
    name: "htmx.min.js",
    content_type: "text/javascript; charset=utf-8",
    bytes: include_bytes!("../assets/vendor/htmx-2.0.11.min.js"),
};
/// htmx's server-sent-events extension, pinned with htmx.
pub(crate) static HTMX_SSE: Asset = Asset {
    name: "htmx-ext-sse.min.js",
    content_type: "text/javascript; charset=utf-8",
    bytes: include_bytes!("../assets/vendor/htmx-ext-sse-2.2.4.min.js"),
};

static ALL: [&Asset; 5] = [&CSS, &JS, &ICON, &HTMX, &HTMX_SSE];

/// `(served name, asset)`: `console.css` is served as `console.<hash>.css`.
fn table() -> &'static [(String, &'static Asset)] {
    static TABLE: OnceLock<Vec<(String, &'static Asset)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        ALL.iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.bytes);
                let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
                let served = match asset.name.split_once('.') {
                    Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
                    None => format!("{}.{hash}", asset.name),
                };
                (served, *asset)
            })
            .collect()
    })
}

/// The URL a page links `asset` by.
pub(crate) fn url(asset: &Asset) -> String {
    let served = table()
        .iter()
        .find(|(_, a)| std::ptr::eq(*a, asset))
        .map_or(asset.name, |(s, _)| s.as_str());
    format!("/assets/{served}")
}

/// `GET /assets/{name}`.
pub(crate) async fn serve(Path(name): Path<String>) -> Response {
    let Some((_, asset)) = table().iter().find(|(served, _)| *served == name) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut response = asset.bytes.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_hashed_url_that_serves_it() {
        for asset in ALL {
            let asset: &Asset = asset;
            let u = url(asset);
            assert!(u.starts_with("/assets/") && u != format!("/assets/{}", asset.name), "{u}");
            let name = u.trim_start_matches("/assets/");
            assert!(table().iter().any(|(s, a)| s == name && std::ptr::eq(*a, asset)));
        }
    }
}
