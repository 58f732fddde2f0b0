//! A receiver for the requests the service makes to an application (the
//! worker's webhooks, the gateway's pre-publish hook): a real HTTP server on
//! a free loopback port whose `POST /hook` is the test's handler over the
//! test's state, stopped when dropped. What it answers and records is each
//! test's own; only the serving is shared.

use std::sync::Arc;

use axum::handler::Handler;
use axum::routing::post;

/// A running receiver.
pub struct Receiver<H> {
    /// Where the service sends: `http://127.0.0.1:<port>/hook`.
    pub url: String,
    /// The handler's state, which the test reads (and steers).
    pub hook: Arc<H>,
    task: tokio::task::JoinHandle<()>,
}

impl<H> Drop for Receiver<H> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<H: Send + Sync + 'static> Receiver<H> {
    /// Serves `handler`, with `hook` as its state, on `POST /hook`.
    pub async fn serve<F, T>(hook: H, handler: F) -> Self
    where
        F: Handler<T, Arc<H>>,
        T: 'static,
    {
        let hook = Arc::new(hook);
        let app = axum::Router::new()
            .route("/hook", post(handler))
            .with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, hook, task }
    }
}
