//! The demo page (`/`) and the JavaScript client it runs on (`/client/…`),
//! embedded in the binary with `include_str!`: nothing is read from disk or
//! built at run time, so the page always matches the gateway that serves it.
//! `DEMO_PAGE=false` leaves these routes out (then `/` is 404).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::HeaderName;
use axum::routing::get;
use axum::Router;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Path, content type and body of every embedded file. The client modules
/// import each other by relative path, so they share one directory.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../demo/index.html")),
    ("/demo/app.js", JS, include_str!("../demo/app.js")),
    ("/demo/style.css", CSS, include_str!("../demo/style.css")),
    (
        "/client/index.js",
        JS,
        include_str!("../../clients/js/index.js"),
    ),
    (
        "/client/store.js",
        JS,
        include_str!("../../clients/js/store.js"),
    ),
    (
        "/client/backoff.js",
        JS,
        include_str!("../../clients/js/backoff.js"),
    ),
];

/// The page may only load its own files; its WebSockets may go to any gateway
/// (the page takes a list of them for failover).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self' ws: wss:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The demo routes, merged into the gateway's router when `DEMO_PAGE` is on.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS
        .iter()
        .fold(Router::new(), |router, &(path, content_type, body)| {
            router.route(
                path,
                get(move || async move {
                    (
                        [
                            (CONTENT_TYPE, content_type),
                            // Revalidate: a new gateway version serves new files.
                            (CACHE_CONTROL, "no-cache"),
                            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
                            (HeaderName::from_static("content-security-policy"), CSP),
                        ],
                        body,
                    )
                }),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relative_import_of_a_served_module_is_served() {
        for &(path, _, body) in ASSETS.iter().filter(|a| a.1 == JS) {
            let dir = &path[..=path.rfind('/').unwrap()];
            for spec in body.split("from \"").skip(1) {
                let spec = &spec[..spec.find('"').unwrap()];
                let target = if let Some(rel) = spec.strip_prefix("./") {
                    format!("{dir}{rel}")
                } else if let Some(rel) = spec.strip_prefix("../") {
                    let parent = &dir[..dir[..dir.len() - 1].rfind('/').unwrap() + 1];
                    format!("{parent}{rel}")
                } else {
                    spec.to_owned()
                };
                assert!(
                    ASSETS.iter().any(|a| a.0 == target),
                    "{path} imports {spec} ({target}), which is not served"
                );
            }
        }
    }
}
