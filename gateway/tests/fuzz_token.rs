//! Property tests of the `token` a client passes on `/ws?token=` (or as a
//! bearer header): arbitrary strings, JWT-shaped junk and correctly signed
//! tokens with arbitrary claims. Verification never panics; it returns an
//! identity whose fields are valid, or `Expired` / `Invalid` (both answered
//! 401 `unauthorized`). 512 cases per property.

use chat_gateway::edge::auth::{AuthError, Authenticator};
use chat_gateway::GatewayConfig;
use clap::Parser;
use proptest::prelude::*;

/// At least 32 bytes, the shortest `JWT_SECRET` the gateway accepts.
const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret";

fn authenticator() -> Authenticator {
    let config = GatewayConfig::try_parse_from([
        "chat-gateway",
        "--jwt-secret",
        SECRET,
        "--jwt-issuer",
        "app",
    ])
    .expect("config parses");
    Authenticator::from_args(&config.access)
        .expect("key is usable")
        .expect("authentication is on")
}

/// base64url without padding, as JWT segments are encoded.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Any JSON value, nested a little.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Claims near the valid ones: each claim present or not, with a value of
/// the right type or of any type.
fn claims() -> impl Strategy<Value = serde_json::Value> {
    let far_future = 4_000_000_000u64;
    (
        proptest::option::of(prop_oneof![
            ".{0,140}".prop_map(serde_json::Value::from),
            json()
        ]),
        proptest::option::of(prop_oneof![
            Just(serde_json::Value::from(far_future)),
            Just(serde_json::Value::from(1u64)),
            json(),
        ]),
        proptest::option::of(prop_oneof![
            ".{0,80}".prop_map(serde_json::Value::from),
            json()
        ]),
        proptest::option::of(prop_oneof![
            proptest::collection::vec("[a-z*]{0,6}", 0..4).prop_map(serde_json::Value::from),
            json(),
        ]),
        proptest::option::of(prop_oneof![
            Just(serde_json::Value::from("moderator")),
            json()
        ]),
        proptest::option::of(prop_oneof![Just(serde_json::Value::from("app")), json()]),
    )
        .prop_map(|(sub, exp, name, rooms, role, iss)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("sub", sub),
                ("exp", exp),
                ("name", name),
                ("rooms", rooms),
                ("role", role),
                ("iss", iss),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            serde_json::Value::Object(m)
        })
}

fn check(
    result: Result<chat_gateway::edge::auth::Identity, AuthError>,
) -> Result<(), TestCaseError> {
    match result {
        Ok(id) => {
            let chars = id.user_id.chars().count();
            prop_assert!((1..=128).contains(&chars));
            prop_assert!(!id.user_id.chars().any(char::is_control));
            prop_assert!(!id.user_id.starts_with("anon-") && !id.user_id.starts_with("api:"));
        }
        Err(AuthError::Expired | AuthError::Invalid(_)) => {}
        Err(AuthError::Missing) => prop_assert!(false, "a given token is never `Missing`"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_string(token in any::<String>()) {
        check(authenticator().verify(&token))?;
    }

    #[test]
    fn jwt_shaped_junk(
        header in prop_oneof![
            json().prop_map(|v| v.to_string().into_bytes()),
            Just(br#"{"alg":"HS256","typ":"JWT"}"#.to_vec()),
            Just(br#"{"alg":"none"}"#.to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ],
        payload in prop_oneof![
            claims().prop_map(|v| v.to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..80),
        ],
        signature in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let token = format!("{}.{}.{}", b64url(&header), b64url(&payload), b64url(&signature));
        check(authenticator().verify(&token))?;
    }

    #[test]
    fn signed_tokens_with_any_claims(claims in claims()) {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        check(authenticator().verify(&token))?;
    }
}

#[test]
fn the_base64url_helper_matches_known_values() {
    assert_eq!(b64url(b"hello"), "aGVsbG8");
    assert_eq!(b64url(br#"{"alg":"HS256"}"#), "eyJhbGciOiJIUzI1NiJ9");
}
