//! TLS and credentials between the services and Redis: `rediss://` against a
//! real TLS-only `redis-server` whose certificates the test makes (private CA,
//! optionally mutual TLS), a password and an ACL user in the URL, and what the
//! services do when the TLS files or the credentials are wrong.

mod common;

use common::*;
use redis::AsyncCommands;

/// A worker and a gateway on `url` with `env`; a client on the gateway gets
/// its own message back with `seq` 1 in a fresh room.
async fn chat_round_trip(redis: &Redis, url: &str, env: &[(&str, &str)], room: &str) {
    let _worker = start_worker(url, &format!("w-{room}"), env).await;
    let gw = start_gateway(url, &format!("gw-{room}"), env).await;
    let (mut a, _) = Client::join(&gw.ws_url(&format!("room={room}"))).await;
    a.say(room, "over tls", "c1").await;
    let got = a.messages(1).await;
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[0]["message"], "over tls");
    let stored: Vec<String> = redis
        .conn()
        .await
        .lrange(format!("messages:{room}"), 0, -1)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "history holds the message");
}

/// Whether a redis-rs client built by `client` can PING.
async fn pings(client: redis::Client) -> bool {
    let ping = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    matches!(tokio::time::timeout(DEADLINE, ping).await, Ok(Ok(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_carries_chat() {
    let redis = Redis::start_with(RedisOptions {
        tls: TlsMode::Server,
        ..RedisOptions::default()
    })
    .await;
    let certs = redis.certs.clone().unwrap();
    // The server speaks TLS only: a plain connection to it gets nowhere.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    assert!(!pings(plain).await, "the TLS port answered plain RESP");

    let url = redis.url();
    assert!(url.starts_with("rediss://"));
    let ca = certs.ca.to_str().unwrap();
    chat_round_trip(&redis, &url, &[("REDIS_CA_FILE", ca)], "tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate() {
    let redis = Redis::start_with(RedisOptions {
        tls: TlsMode::Mutual,
        ..RedisOptions::default()
    })
    .await;
    let certs = redis.certs.clone().unwrap();
    // Without a client certificate the server refuses the handshake.
    chat_shared::tls::install_crypto_provider();
    let anonymous = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&certs.ca).unwrap()),
        },
    )
    .unwrap();
    assert!(
        !pings(anonymous).await,
        "mutual TLS accepted a client without a certificate"
    );

    let env = [
        ("REDIS_CA_FILE", certs.ca.to_str().unwrap()),
        (
            "REDIS_CLIENT_CERT_FILE",
            certs.client_cert.to_str().unwrap(),
        ),
        ("REDIS_CLIENT_KEY_FILE", certs.client_key.to_str().unwrap()),
    ];
    chat_round_trip(&redis, &redis.url(), &env, "mtls").await;
}

/// A Redis with `requirepass` and the ACL user `alice`.
async fn redis_with_auth() -> Redis {
    Redis::start_with(RedisOptions {
        password: Some("s3cret".into()),
        users: vec![("alice".into(), "alice-pw".into())],
        ..RedisOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_acl_user_in_the_url() {
    let redis = redis_with_auth().await;
    let as_default = redis.url_with(":s3cret");
    let as_alice = redis.url_with("alice:alice-pw");
    let _worker = start_worker(&as_default, "w1", &[]).await;
    let gw_default = start_gateway(&as_default, "gw-default", &[]).await;
    let gw_alice = start_gateway(&as_alice, "gw-alice", &[]).await;

    let (mut a, _) = Client::join(&gw_default.ws_url("room=auth")).await;
    let (mut b, _) = Client::join(&gw_alice.ws_url("room=auth")).await;
    a.say("auth", "from default", "a1").await;
    assert_eq!(b.messages(1).await[0]["seq"], 1);
    b.say("auth", "from alice", "b1").await;
    let got = a.messages(2).await;
    assert_eq!(got[1]["seq"], 2);
    assert_eq!(got[1]["message"], "from alice");

    // The alice gateway really is logged in as alice.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert!(clients.contains(" user=alice "), "{clients}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_start_up_with_ex_usage() {
    let redis = redis_with_auth().await;
    for (what, userinfo) in [
        ("wrong password", Some(":bad-pw-7f3a")),
        ("wrong ACL password", Some("alice:bad-pw-7f3a")),
        ("unknown ACL user", Some("mallory:x")),
        ("no password", None),
    ] {
        let url = match userinfo {
            Some(u) => redis.url_with(u),
            None => format!("redis://127.0.0.1:{}", redis.port),
        };
        for (bin, port_env) in [
            ("chat-gateway", "PORT"),
            ("chat-fanout-worker", "METRICS_PORT"),
        ] {
            let (_, mut proc) = spawn_service(bin, bin, port_env, &url, &[], &[]);
            let status = proc
                .wait_exit(DEADLINE)
                .await
                .unwrap_or_else(|| panic!("{bin} with {what} kept running"));
            let log = proc.log_text();
            assert_eq!(status.code(), Some(64), "{bin} with {what}: {log}");
            assert!(
                log.contains("Redis refused the credentials in REDIS_URL"),
                "{bin} with {what}: {log}"
            );
            assert!(
                !log.contains("bad-pw-7f3a"),
                "{bin} printed the password: {log}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_while_running_turns_health_503_until_restored() {
    let redis = redis_with_auth().await;
    let worker = start_worker(&redis.url(), "w1", &[]).await;
    let gw = start_gateway(&redis.url(), "gw1", &[]).await;
    let status = |addr: String| async move { http_get(&addr, "/health").await.ok().map(|r| r.0) };
    let gw_addr = gw.addr();
    let worker_addr = worker.addr();

    // Rotate the password on the server and drop every connection but ours:
    // the services reconnect with the old one and are refused.
    let mut admin = redis.conn().await;
    let set_pass = |pw: &'static str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg("requirepass").arg(pw);
        cmd
    };
    let () = set_pass("rotated").query_async(&mut admin).await.unwrap();
    for kind in ["normal", "pubsub"] {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    for addr in [&gw_addr, &worker_addr] {
        eventually(&format!("{addr} /health is 503"), DEADLINE, || {
            let addr = addr.clone();
            async move { (status(addr).await? == 503).then_some(()) }
        })
        .await;
    }

    let () = set_pass("s3cret").query_async(&mut admin).await.unwrap();
    for addr in [&gw_addr, &worker_addr] {
        eventually(&format!("{addr} /health is 200 again"), DEADLINE, || {
            let addr = addr.clone();
            async move { (status(addr).await? == 200).then_some(()) }
        })
        .await;
    }
    let (mut a, _) = Client::join(&gw.ws_url("room=rotated")).await;
    a.say("rotated", "back", "c1").await;
    assert_eq!(a.messages(1).await[0]["seq"], 1);
}

#[test]
fn unusable_tls_files_exit_with_ex_usage() {
    let dir = scratch_dir("tls-files");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.join("missing.pem");
    let (not_pem, missing) = (not_pem.to_str().unwrap(), missing.to_str().unwrap());
    let tls_url = "rediss://127.0.0.1:1";
    for (url, env, expect) in [
        (tls_url, vec![("REDIS_CA_FILE", missing)], "REDIS_CA_FILE"),
        (
            tls_url,
            vec![("REDIS_CA_FILE", not_pem)],
            "no PEM CERTIFICATE",
        ),
        (
            tls_url,
            vec![("REDIS_CLIENT_CERT_FILE", not_pem)],
            "--redis-client-key-file",
        ),
        (
            tls_url,
            vec![
                ("REDIS_CLIENT_CERT_FILE", not_pem),
                ("REDIS_CLIENT_KEY_FILE", not_pem),
            ],
            "REDIS_CLIENT_CERT_FILE",
        ),
        (
            "redis://127.0.0.1:1",
            vec![("REDIS_CA_FILE", not_pem)],
            "need a rediss:// REDIS_URL",
        ),
    ] {
        for bin in ["chat-gateway", "chat-fanout-worker"] {
            let out = std::process::Command::new(bin_path(bin))
                .env_clear()
                .env("REDIS_URL", url)
                .envs(env.iter().copied())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{bin} {env:?}: {stderr}");
            assert!(stderr.contains(expect), "{bin} {env:?}: {stderr}");
        }
    }
}
