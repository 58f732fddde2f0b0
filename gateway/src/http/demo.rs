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
    ("/", HTML, include_str!("../../demo/index.html")),
    ("/demo/app.js", JS, include_str!("../../demo/app.js")),
    ("/demo/style.css", CSS, include_str!("../../demo/style.css")),
    (
        "/client/index.js",
        JS,
        include_str!("../../../clients/js/index.js"),
    ),
    (
        "/client/store.js",
        JS,
        include_str!("../../../clients/js/store.js"),
    ),
    (
        "/client/backoff.js",
        JS,
        include_str!("../../../clients/js/backoff.js"),
    ),
    (
        "/client/sse.js",
        JS,
        include_str!("../../../clients/js/sse.js"),
    ),
];

/// The page may only load its own files, and open WebSockets only to its own
/// origin and the gateways listed in `DEMO_GATEWAYS` (`?gateways=` is
/// filtered the same way by the page itself).
fn csp(gateways: &[String]) -> String {
    let mut connect = String::from("'self'");
    for g in gateways {
        connect.push(' ');
        connect.push_str(g);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; \
         img-src 'self' data:; connect-src {connect}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The origins of `DEMO_GATEWAYS` (a comma list of `ws(s)://` or
/// `http(s)://` origins), as CSP sources; malformed entries are dropped.
fn gateway_origins(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|g| {
            ["ws://", "wss://", "http://", "https://"]
                .iter()
                .any(|scheme| g.starts_with(scheme))
                && !g.contains([' ', ';', '\'', '"', '<', '>'])
        })
        .map(|g| {
            let scheme_end = g.find("://").map_or(0, |i| i + 3);
            match g[scheme_end..].find('/') {
                Some(i) => g[..scheme_end + i].to_owned(),
                None => g.to_owned(),
            }
        })
        .collect()
}

/// The demo routes, merged into the gateway's router when `DEMO_PAGE` is on;
/// `demo_gateways` is `DEMO_GATEWAYS`.
pub fn routes<S: Clone + Send + Sync + 'static>(demo_gateways: &str) -> Router<S> {
    let gateways = gateway_origins(demo_gateways);
    let policy: &'static str = Box::leak(csp(&gateways).into_boxed_str());
    let meta = format!(
        "<meta name=\"chat-gateways\" content=\"{}\">\n</head>",
        gateways.join(",")
    );
    ASSETS
        .iter()
        .fold(Router::new(), |router, &(path, content_type, body)| {
            let body: &'static str = if path == "/" {
                Box::leak(body.replacen("</head>", &meta, 1).into_boxed_str())
            } else {
                body
            };
            router.route(
                path,
                get(move || async move {
                    (
                        [
                            (CONTENT_TYPE, content_type),
                            // Revalidate: a new gateway version serves new files.
                            (CACHE_CONTROL, "no-cache"),
                            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
                            (HeaderName::from_static("content-security-policy"), policy),
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
    fn only_listed_gateways_are_allowed() {
        assert_eq!(
            gateway_origins(
                "wss://a.example/ws, https://b.example, ftp://x, ws://e;vil, junk, ws://127.0.0.1:*"
            ),
            ["wss://a.example", "https://b.example", "ws://127.0.0.1:*"]
        );
        let policy = csp(&gateway_origins(""));
        assert!(policy.contains("connect-src 'self';"), "{policy}");
        assert!(
            !policy.contains("ws:;") && !policy.contains(" wss:"),
            "{policy}"
        );
    }

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
