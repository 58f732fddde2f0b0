//! One request to the hook: a free slot, the signed `POST`, the answer read
//! within a size bound, all within `PUBLISH_HOOK_TIMEOUT_MS`.

use chat_shared::signing::{unix_now, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

use super::answer::{self, Answer};
use super::PublishHook;

/// Why no answer could be used; its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// No slot or no answer within the timeout.
    Timeout,
    /// A transport error, a non-2xx status, or a malformed answer.
    Error,
}

impl Failure {
    /// The `outcome` label of a failed call when failing closed.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

impl PublishHook {
    /// POSTs `body` (one subject's JSON) and reads the answer. The deadline
    /// covers the wait for a slot too: a message never waits longer than the
    /// timeout for its verdict, whatever the load.
    pub(super) async fn call(&self, body: Vec<u8>) -> Result<Answer, Failure> {
        match tokio::time::timeout(self.timeout, self.post(body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<Answer, Failure> {
        // The semaphore is never closed; a closed one would be a bug, not a
        // reason to skip the bound.
        let _slot = self.slots.acquire().await.map_err(|_| Failure::Error)?;
        // Unique per request: a hook that dedupes by webhook-id never drops
        // a resend (which it must judge again, it may be another text).
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let timestamp = unix_now();
        let signature = self.keys.standard_signature(&id, timestamp, &body);
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, &id)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "Publish hook request failed");
                if e.is_timeout() {
                    Failure::Timeout
                } else {
                    Failure::Error
                }
            })?;
        if !response.status().is_success() {
            tracing::debug!(status = %response.status(), "Publish hook answered with an error status");
            return Err(Failure::Error);
        }
        let body = self.read_bounded(response).await?;
        answer::parse(&body, &self.limits).map_err(|e| {
            tracing::debug!(error = %e, "Publish hook answer unusable");
            Failure::Error
        })
    }

    /// The answer's body, at most `max_answer_bytes` (a larger one is an
    /// error: no answer needs more than a message's text and a reason).
    async fn read_bounded(&self, mut response: reqwest::Response) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|_| Failure::Error)? {
            if body.len() + chunk.len() > self.max_answer_bytes {
                tracing::debug!(
                    limit = self.max_answer_bytes,
                    "Publish hook answer too large"
                );
                return Err(Failure::Error);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
