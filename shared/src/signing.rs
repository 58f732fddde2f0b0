//! The signatures an outgoing request to an application carries, and the
//! keys that make them: the worker's webhooks and the gateway's pre-publish
//! hook sign the same way, with this one implementation.
//!
//! A webhook request carries two, so that a receiver can check either (the
//! pre-publish hook sends only the Standard Webhooks headers):
//! - `X-Chat-Signature: sha256=<hex>`: the HMAC-SHA256 of the exact body
//!   bytes keyed with the `WEBHOOK_SECRET` string as given (our own scheme,
//!   kept for existing receivers).
//! - The [Standard Webhooks] headers `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64>`, the HMAC-SHA256 of
//!   `"<id>.<timestamp>.<body>"`, which its libraries verify
//!   (`standardwebhooks` on PyPI and npm, and others). A secret of the form
//!   `whsec_<base64>` is decoded to that key, as those libraries do; any
//!   other secret is used as raw bytes. Base64 that does not decode (or
//!   decodes to nothing) is refused at start-up rather than signing with a
//!   key no receiver can hold.
//!
//! The caller picks the `webhook-id` (the worker: the batch's, the same for
//! every attempt); the timestamp is the attempt's own, so each attempt is
//! signed anew and a receiver's replay window (5 minutes in those libraries)
//! counts from the attempt, not from the first try.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Our own signature header.
pub const CHAT_SIGNATURE_HEADER: &str = "X-Chat-Signature";
/// Standard Webhooks: the message id, the same for every attempt of a batch.
pub const ID_HEADER: &str = "webhook-id";
/// Standard Webhooks: Unix seconds of the attempt.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Standard Webhooks: `v1,<base64 signature>`.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// Prefix of a Standard Webhooks secret whose key follows in base64.
const STANDARD_SECRET_PREFIX: &str = "whsec_";

/// Standard base64 with or without padding: the `standardwebhooks`
/// libraries accept `whsec_` secrets either way.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signing secret as configured (`WEBHOOK_SECRET`, `PUBLISH_HOOK_SECRET`);
/// its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret from its configured text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret's bytes as given: the key of `X-Chat-Signature`, and of
    /// `webhook-signature` unless it is a `whsec_<base64>` secret.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether the secret is empty (refused at start-up).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The two HMAC keys of one secret; `Debug` never shows them.
#[derive(Clone)]
pub struct Keys {
    /// The secret's bytes as given: the key of `X-Chat-Signature`.
    chat: Vec<u8>,
    /// The key of `webhook-signature`.
    standard: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// The keys of `secret`.
    ///
    /// # Errors
    /// When a `whsec_` secret is not valid base64 or decodes to no bytes
    /// (the message names the prefix, never the secret).
    pub fn new(secret: &Secret) -> Result<Self, String> {
        let chat = secret.expose().to_vec();
        let standard = match secret
            .expose()
            .strip_prefix(STANDARD_SECRET_PREFIX.as_bytes())
        {
            Some(encoded) => {
                let key = SECRET_BASE64.decode(encoded).map_err(|e| {
                    format!("the webhook secret starts with {STANDARD_SECRET_PREFIX} but the rest is not base64: {e}")
                })?;
                if key.is_empty() {
                    return Err(format!(
                        "the webhook secret {STANDARD_SECRET_PREFIX}… decodes to an empty key"
                    ));
                }
                key
            }
            None => chat.clone(),
        };
        Ok(Self { chat, standard })
    }

    /// `sha256=<hex HMAC-SHA256 of body>`, keyed with the secret as given.
    pub fn chat_signature(&self, body: &[u8]) -> String {
        format!("sha256={}", hex::encode(hmac(&self.chat, &[body])))
    }

    /// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
    pub fn standard_signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mac = hmac(
            &self.standard,
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        );
        format!("v1,{}", STANDARD.encode(mac))
    }
}

/// HMAC-SHA256 of the concatenation of `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Unix seconds now: the `webhook-timestamp` of an attempt.
pub fn unix_now() -> u64 {
    // A clock before 1970 signs with 0, which every receiver refuses as too old.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> Result<Keys, String> {
        Keys::new(&secret.parse().unwrap())
    }

    #[test]
    fn chat_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            keys("Jefe")
                .unwrap()
                .chat_signature(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn standard_signature_matches_the_specs_example() {
        // The example of the Standard Webhooks specification.
        let k = keys("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            k.standard_signature(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_whsec_secret_is_decoded_with_or_without_padding() {
        // "key!" is 4 bytes: base64 "a2V5IQ==".
        let padded = keys("whsec_a2V5IQ==").unwrap();
        let unpadded = keys("whsec_a2V5IQ").unwrap();
        assert_eq!(padded.standard, b"key!");
        assert_eq!(unpadded.standard, b"key!");
        // X-Chat-Signature keeps the whole string, prefix included.
        assert_eq!(padded.chat, b"whsec_a2V5IQ==");
        assert_eq!(
            padded.standard_signature("i", 1, b"b"),
            keys("key!").unwrap().standard_signature("i", 1, b"b")
        );
    }

    #[test]
    fn any_other_secret_is_used_as_raw_bytes_for_both() {
        let k = keys("s3cret-not-base64!").unwrap();
        assert_eq!(k.standard, b"s3cret-not-base64!");
        assert_eq!(k.chat, k.standard);
        // Only the exact lowercase prefix marks a Standard Webhooks secret.
        assert_eq!(keys("WHSEC_%%").unwrap().standard, b"WHSEC_%%");
    }

    #[test]
    fn a_whsec_secret_that_is_not_base64_or_empty_is_refused() {
        for bad in [
            "whsec_not base64!",
            "whsec_%%%%",
            "whsec_a2V5I-Q_",
            "whsec_",
        ] {
            let e = keys(bad).unwrap_err();
            assert!(e.contains("whsec_"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_do_not_show_in_debug() {
        let k = keys("whsec_a2V5IQ==").unwrap();
        assert_eq!(format!("{k:?}"), "Keys(<redacted>)");
    }
}
