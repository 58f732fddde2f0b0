//! The JavaScript client's unit tests (`clients/js/test`, node's built-in test
//! runner against a fake socket), run as part of `cargo test` so that
//! `scripts/test` covers them.

use std::path::Path;

#[test]
fn the_js_client_unit_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let out = std::process::Command::new("node")
        .args(["--test", "test/"])
        .current_dir(&dir)
        .output()
        .expect("node is installed (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
