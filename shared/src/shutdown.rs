//! The one shutdown signal of a process.
//!
//! SIGTERM or SIGINT cancels the returned token; every long-lived task selects
//! on it. A second signal is not special: draining is bounded by the grace
//! period anyway.

use tokio_util::sync::CancellationToken;

/// Spawns the signal listener and returns the token it cancels.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutdown signal received");
        t.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Could not install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Sleeps for `backoff` unless `cancel` fires first, then doubles `backoff`
/// up to `max`: the retry pause of every reconnect loop.
pub async fn sleep_or_cancel(
    cancel: &CancellationToken,
    backoff: &mut std::time::Duration,
    max: std::time::Duration,
) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = cancel.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(max);
}
