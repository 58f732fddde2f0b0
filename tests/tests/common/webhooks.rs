//! Checking a signed request with the Python `standardwebhooks` package (the
//! library receivers use), for every test of a request the service signs:
//! the worker's webhooks and the gateway's pre-publish hook.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The workspace root, where `scripts/` and `.run/` are.
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The venv's python with `standardwebhooks`, installed by `scripts/lib.sh`
/// (`ensure_standardwebhooks`; PyPI once, then offline). Call it before
/// the request to check is made, so a slow first install does not age it.
pub async fn standardwebhooks_python() -> PathBuf {
    let out = tokio::process::Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            ". scripts/lib.sh && ensure_standardwebhooks",
        ])
        .current_dir(root())
        .output()
        .await
        .expect("run bash");
    assert!(
        out.status.success(),
        "ensure_standardwebhooks failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let venv = std::env::var("CHECK_MANIFESTS_VENV").unwrap_or_else(|_| ".run/venv".into());
    root().join(venv).join("bin/python")
}

/// Runs `tests/python/standard_webhooks_check.py` on one request (its
/// headers and exact body) signed with `secret`: it must verify, and a
/// tampered body, a replayed old timestamp and another key must be refused.
/// Returns the script's report (one line per check).
pub async fn check_standard_webhook(
    python: &Path,
    secret: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> String {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().into()))
        .collect();
    let dump = json!({
        "secret": secret,
        "headers": headers,
        "body": std::str::from_utf8(body).unwrap(),
    });
    let file = super::scratch_dir("standard-webhooks").join("request.json");
    std::fs::write(&file, dump.to_string()).unwrap();
    let out = tokio::process::Command::new(python)
        .arg(root().join("tests/python/standard_webhooks_check.py"))
        .arg(&file)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "standardwebhooks check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "verified",
        "same signature computed by the library",
        "tampered body refused",
        "re-signed at a 10-minute-old",
        "another key refused",
    ] {
        assert!(stdout.contains(check), "{check} missing from:\n{stdout}");
    }
    stdout
}
