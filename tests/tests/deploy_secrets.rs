//! No secret is committed under `deploy/`: no line other than a comment
//! assigns a non-empty value to `JWT_SECRET`, `API_KEYS` or `WEBHOOK_SECRET`,
//! in any form the files use (`KEY=value` in env files and kustomize
//! literals, `KEY: value` in YAML and compose files, a Kubernetes
//! `- name: KEY` followed by `value: …`). A value computed when the command
//! runs (`$(openssl rand …)`, `${VAR}`) is not a committed secret.

use std::path::{Path, PathBuf};

/// The settings that hold secrets.
const SECRET_SETTINGS: [&str; 3] = ["JWT_SECRET", "API_KEYS", "WEBHOOK_SECRET"];

/// Whether `value` (what follows `=` or `:`) is a committed secret.
fn is_committed(value: &str) -> bool {
    let value = value.trim();
    // A trailing comment is not part of a YAML value.
    let value = value.split(" #").next().unwrap_or("").trim();
    let unquoted = value.trim_matches(|c| c == '"' || c == '\'');
    !(unquoted.is_empty() || unquoted.starts_with('$'))
}

/// The value `line` assigns to `key`, if it assigns one.
fn assigned<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = line;
    while let Some(at) = rest.find(key) {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + key.len()..];
        rest = after;
        // Whole names only: API_KEYS_FILE and MY_JWT_SECRET are other settings.
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            || after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let after = after.trim_start_matches(['"', '\'']).trim_start();
        if let Some(value) = after.strip_prefix('=').or_else(|| after.strip_prefix(':')) {
            return Some(value);
        }
    }
    None
}

/// The offending lines of `text`, as `line number: line`.
fn offending_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.starts_with("//") {
            continue;
        }
        for key in SECRET_SETTINGS {
            let direct = assigned(trimmed, key).is_some_and(is_committed);
            // `- name: KEY` then `value: …` on one of the next lines.
            let env_entry = assigned(trimmed, "name").is_some_and(|n| n.trim() == key)
                && lines[i + 1..]
                    .iter()
                    .take(2)
                    .filter_map(|l| l.trim_start().strip_prefix("value:"))
                    .any(is_committed);
            if direct || env_entry {
                found.push(format!("{}: {}", i + 1, line.trim()));
            }
        }
    }
    found
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_secret_is_assigned_under_deploy() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = Vec::new();
    files_under(&deploy, &mut files);
    assert!(files.len() > 10, "deploy/ was found: {}", deploy.display());
    let mut found = Vec::new();
    for file in files {
        // Binary files (none today) hold no settings.
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let rel = file.strip_prefix(&deploy).unwrap().display().to_string();
        found.extend(
            offending_lines(&text)
                .into_iter()
                .map(|l| format!("deploy/{rel}:{l}")),
        );
    }
    assert!(
        found.is_empty(),
        "secrets are assigned under deploy/ (create them at deploy time instead, \
         see deploy/README.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_finds_every_form_and_only_those() {
    let bad = [
        "JWT_SECRET=hunter2",
        "export API_KEYS=bot:k1",
        "  - WEBHOOK_SECRET=s3cret",
        "      JWT_SECRET: \"x\"",
        "--from-literal=API_KEYS=k1",
        "- name: JWT_SECRET\n  value: hunter2",
    ];
    for text in bad {
        assert_eq!(offending_lines(text).len(), 1, "{text}");
    }
    let fine = [
        "JWT_SECRET=",
        "API_KEYS=\"\"",
        "# JWT_SECRET=in-a-comment",
        "API_KEYS_FILE=/etc/chat/keys",
        "WEBHOOK_SECRET_FILE: /run/secrets/hook",
        "--from-literal=JWT_SECRET=\"$(openssl rand -base64 48)\"",
        "JWT_SECRET: ${JWT_SECRET:-}",
        "the `JWT_SECRET` setting: at least 32 bytes",
        "- name: JWT_SECRET\n  valueFrom:\n    secretKeyRef: {name: s, key: k}",
    ];
    for text in fine {
        assert_eq!(offending_lines(text), Vec::<String>::new(), "{text}");
    }
}
