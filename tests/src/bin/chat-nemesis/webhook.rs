//! The webhook receiver the workers post to (`WEBHOOK_URL`): a small axum
//! server on loopback that keeps every event of every request in arrival
//! order for the checker. Every 13th request is answered 500, so the
//! workers' retries run too (a retried batch repeats events: the checker
//! allows repeats, not gaps).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use tokio::task::JoinHandle;

/// What the receiver got.
#[derive(Debug, Default)]
struct Got {
    requests: AtomicUsize,
    events: Mutex<Vec<Value>>,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub(crate) struct Receiver {
    /// The URL to give workers as `WEBHOOK_URL`.
    pub(crate) url: String,
    got: Arc<Got>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts the receiver on a free loopback port.
    ///
    /// # Errors
    /// When it cannot bind.
    pub(crate) async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let got = Arc::new(Got::default());
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(got.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, got, task })
    }

    /// Every event received so far, in arrival order.
    pub(crate) fn events(&self) -> Vec<Value> {
        self.got
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The highest `seq` received for `room`.
    pub(crate) fn max_seq(&self, room: &str) -> u64 {
        let events = self.got.events.lock().unwrap_or_else(|p| p.into_inner());
        events
            .iter()
            .filter(|e| e["room"] == room)
            .filter_map(|e| e["seq"].as_u64())
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(got): State<Arc<Got>>, body: axum::body::Bytes) -> StatusCode {
    let n = got.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if n % 13 == 0 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let events = v["events"].as_array().cloned().unwrap_or_default();
    got.events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(events);
    StatusCode::OK
}
