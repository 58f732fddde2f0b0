//! A server-sent events client for the `/sse` tests: reads the chunked
//! stream as it arrives and splits it into events (`id:`, `data:`, comments).

use std::time::Duration;

use serde_json::Value;

use super::DEADLINE;

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// Its `id:` field, if any.
    pub id: Option<String>,
    /// Its `data:` (a frame's JSON), if any.
    pub data: Option<Value>,
    /// Its comment lines (`: keepalive`), without the colon and space.
    pub comments: Vec<String>,
}

/// An open event stream.
pub struct SseClient {
    response: reqwest::Response,
    buf: String,
    /// The response's headers.
    pub headers: reqwest::header::HeaderMap,
}

impl SseClient {
    /// `GET /sse?{query}` with an optional `Last-Event-ID`; the stream, or
    /// the refusal's status and JSON body.
    pub async fn open(
        addr: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self, (u16, Value)> {
        let client = reqwest::Client::new();
        let mut req = client
            .get(format!("http://{addr}/sse?{query}"))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let response = tokio::time::timeout(DEADLINE, req.send())
            .await
            .expect("sse open timed out")
            .expect("sse request");
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            return Err((status, serde_json::from_str(&body).unwrap_or(Value::Null)));
        }
        Ok(Self {
            headers: response.headers().clone(),
            response,
            buf: String::new(),
        })
    }

    /// The next event (data or comment) within `deadline`; `None` on
    /// timeout or at the end of the stream.
    pub async fn next_event_within(&mut self, deadline: Duration) -> Option<SseEvent> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                return Some(parse(&block));
            }
            let chunk = tokio::time::timeout_at(end, self.response.chunk())
                .await
                .ok()?;
            match chunk {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next data event (comments skipped): its id and frame.
    pub async fn next_frame(&mut self) -> (Option<String>, Value) {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let e = self
                .next_event_within(left)
                .await
                .expect("no SSE frame within the deadline");
            if let Some(data) = e.data {
                return (e.id, data);
            }
        }
    }

    /// The next data event of type `kind` (others skipped).
    pub async fn next_of_type(&mut self, kind: &str) -> (Option<String>, Value) {
        loop {
            let (id, frame) = self.next_frame().await;
            if frame["type"] == kind {
                return (id, frame);
            }
        }
    }

    /// Whether the stream ends (or errors) within `deadline`, skipping events.
    pub async fn ends_within(&mut self, deadline: Duration) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(end, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(_) => return true,
            }
        }
    }
}

fn parse(block: &str) -> SseEvent {
    let mut event = SseEvent {
        id: None,
        data: None,
        comments: Vec::new(),
    };
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            event.comments.push(c.trim_start().to_owned());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
        } else if let Some(i) = line.strip_prefix("id:") {
            event.id = Some(i.trim().to_owned());
        } else if !line.is_empty() {
            panic!("unexpected SSE line {line:?} (the contract has no event: field)");
        }
    }
    if !data.is_empty() {
        event.data = Some(serde_json::from_str(&data.join("\n")).expect("data is one JSON frame"));
    }
    event
}
