//! Token keys and claims against real processes: key settings that must stop
//! the gateway (exit 64), `nbf`, user ids reserved for anonymous sessions and
//! API keys, and JWKS keys (RS256 and ES256, made with `openssl`) rotated by
//! a local JWKS server without restarting the gateway.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// 32 bytes: the shortest `JWT_SECRET` the gateway accepts.
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Asserts that opening `url` is refused with 401 `unauthorized`.
async fn unauthorized(url: &str, what: &str) {
    match open(url, &[]).await {
        Ok(_) => panic!("{what}: accepted; expected 401 unauthorized"),
        Err((status, body)) => {
            assert_eq!(status, 401, "{what}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        }
    }
}

/// Asserts that opening `url` is accepted (the join's history frame arrives).
async fn accepted(url: &str, what: &str) {
    let mut ws = open(url, &[])
        .await
        .unwrap_or_else(|(s, b)| panic!("{what}: refused with {s} {b}"));
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "history", "{what}: {first}");
}

async fn next_json(ws: &mut Ws) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("the socket stays open")
            .expect("a frame");
        if let Message::Text(t) = frame {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Environment variables of a process.
type Env = &'static [(&'static str, &'static str)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_secret_or_two_key_settings_exit_64() {
    let redis = Redis::start().await;
    let cases: [(&str, Env, &str); 4] = [
        (
            "a 31-byte JWT_SECRET",
            &[("JWT_SECRET", "0123456789abcdef0123456789abcde")],
            "JWT_SECRET",
        ),
        (
            "JWT_SECRET and JWT_JWKS_URL",
            &[
                ("JWT_SECRET", SECRET),
                ("JWT_JWKS_URL", "http://127.0.0.1:9/jwks"),
            ],
            "JWT_JWKS_URL",
        ),
        (
            "JWT_SECRET and JWT_PUBLIC_KEY_FILE",
            &[
                ("JWT_SECRET", SECRET),
                ("JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem"),
            ],
            "JWT_PUBLIC_KEY_FILE",
        ),
        (
            "JWT_PUBLIC_KEY_FILE and JWT_JWKS_URL",
            &[
                ("JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem"),
                ("JWT_JWKS_URL", "http://127.0.0.1:9/jwks"),
            ],
            "JWT_JWKS_URL",
        ),
    ];
    for (what, env, named) in cases {
        let (_, mut proc) = spawn_service(
            "chat-gateway",
            "gateway-bad-keys",
            "PORT",
            &redis.url(),
            &[],
            env,
        );
        let status = proc
            .wait_exit(DEADLINE)
            .await
            .unwrap_or_else(|| panic!("{what}: the gateway kept running"));
        let log = proc.log_text();
        assert_eq!(status.code(), Some(64), "{what}: {log}");
        assert!(
            log.contains(named),
            "{what}: the message names {named}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_in_the_future_and_reserved_user_ids_are_refused() {
    let redis = Redis::start().await;
    let gw = start_gateway(&redis.url(), "gw1", &[("JWT_SECRET", SECRET)]).await;
    assert!(
        gw.proc.log_text().contains("JWT_AUDIENCE is unset"),
        "a warning without JWT_AUDIENCE: {}",
        gw.proc.log_text()
    );
    let url = |claims: Value| gw.ws_url(&format!("room=r&token={}", sign_token(SECRET, &claims)));
    unauthorized(
        &url(json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 300})),
        "nbf in 5 minutes",
    )
    .await;
    accepted(
        &url(json!({"sub": "u1", "exp": now() + 600, "nbf": now() - 5})),
        "nbf 5 s ago",
    )
    .await;
    for sub in ["anon-x", "api:x"] {
        unauthorized(&url(json!({"sub": sub, "exp": now() + 600})), sub).await;
    }
}

/// A private key made by `openssl genpkey` with `args`, as PEM.
fn generate_key(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let ok = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok, "openssl generated {name}");
    std::fs::read(path).unwrap()
}

/// A signing key with its `kid` and its public half as a JWK.
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
    public: Jwk,
}

impl SigningKey {
    fn new(kid: &str, algorithm: Algorithm, key: EncodingKey) -> Self {
        let mut public = Jwk::from_encoding_key(&key, algorithm).unwrap();
        public.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            algorithm,
            key,
            public,
        }
    }

    fn rsa(dir: &Path, kid: &str) -> Self {
        let pem = generate_key(
            dir,
            kid,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        Self::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
    }

    fn p256(dir: &Path, kid: &str) -> Self {
        let pem = generate_key(
            dir,
            kid,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        Self::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem).unwrap(),
        )
    }

    /// A token for `sub` signed with this key, its header naming `kid`.
    fn token_as(&self, kid: &str, sub: &str) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.to_owned());
        let claims = json!({"sub": sub, "exp": now() + 600, "iss": "idp", "aud": "chat"});
        encode(&header, &claims, &self.key).unwrap()
    }

    fn token(&self, sub: &str) -> String {
        self.token_as(&self.kid, sub)
    }
}

/// A JWKS server: serves the current document (503 while there is none)
/// and counts the requests.
#[derive(Clone, Default)]
struct JwksServer {
    document: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(&self) -> SocketAddr {
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(serve_jwks))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn publish(&self, keys: &[&SigningKey]) {
        let set = JwkSet {
            keys: keys.iter().map(|k| k.public.clone()).collect(),
        };
        *self.document.lock().unwrap() = Some(serde_json::to_string(&set).unwrap());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn serve_jwks(State(server): State<JwksServer>) -> Result<String, StatusCode> {
    server.fetches.fetch_add(1, Ordering::SeqCst);
    let document = server.document.lock().unwrap().clone();
    document.ok_or(StatusCode::SERVICE_UNAVAILABLE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_without_a_restart() {
    let dir = scratch_dir("jwks");
    let a = SigningKey::rsa(&dir, "key-a");
    let b = SigningKey::p256(&dir, "key-b");
    let c = SigningKey::rsa(&dir, "key-c");
    let server = JwksServer::default();
    let addr = server.start().await;
    let jwks_url = format!("http://{addr}/jwks");
    let redis = Redis::start().await;
    let env = [
        ("JWT_JWKS_URL", jwks_url.as_str()),
        ("JWT_ISSUER", "idp"),
        ("JWT_AUDIENCE", "chat"),
    ];

    server.publish(&[&a]);
    let gw = start_gateway(&redis.url(), "gw1", &env).await;
    let url = |gw: &Gateway, token: &str| gw.ws_url(&format!("room=r&token={token}"));
    accepted(&url(&gw, &a.token("u1")), "RS256 key A").await;

    // Rotation: B replaces A. The first token naming B makes the gateway
    // fetch the document again (its periodic refresh is 300 s away).
    server.publish(&[&b]);
    let before = server.fetches();
    accepted(&url(&gw, &b.token("u2")), "ES256 key B after the rotation").await;
    assert_eq!(server.fetches(), before + 1, "one fetch for the new kid");

    // An unknown kid within 30 s of that fetch causes none, and is refused;
    // so is A, gone from the document.
    let fetches = server.fetches();
    unauthorized(&url(&gw, &b.token_as("no-such-key", "u3")), "unknown kid").await;
    unauthorized(&url(&gw, &a.token("u1")), "key A after its removal").await;
    assert_eq!(
        server.fetches(),
        fetches,
        "no fetch within 30 s of the last"
    );

    // A gateway that starts while the JWKS server fails runs anyway, refuses
    // tokens, and picks the keys up as soon as the server answers.
    *server.document.lock().unwrap() = None;
    let env2 = [env.as_slice(), &[("JWT_JWKS_REFRESH_S", "1")]].concat();
    let gw2 = start_gateway(&redis.url(), "gw2", &env2).await;
    unauthorized(&url(&gw2, &b.token("u2")), "no keys yet").await;
    server.publish(&[&b]);
    eventually(
        "gw2 accepts key B once the JWKS server answers",
        DEADLINE,
        || {
            let url = url(&gw2, &b.token("u2"));
            async move { open(&url, &[]).await.ok().map(|_| ()) }
        },
    )
    .await;
    // The unknown-kid fetch is spent for 30 s; the periodic refresh
    // (1 s here) still brings a new key within the deadline.
    unauthorized(&url(&gw2, &c.token("u4")), "key C before it is published").await;
    server.publish(&[&b, &c]);
    eventually(
        "gw2 accepts key C after a periodic refresh",
        DEADLINE,
        || {
            let url = url(&gw2, &c.token("u4"));
            async move { open(&url, &[]).await.ok().map(|_| ()) }
        },
    )
    .await;
}
