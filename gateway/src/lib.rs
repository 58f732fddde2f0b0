//! `chat-gateway`: the stateless WebSocket tier of the chat service.
//!
//! # Layout
//! Folders by responsibility, from the connection down to the delivery
//! path (`tests/tests/house.rs` keeps the modules free of import cycles):
//! - `ws/`: one task per socket after the upgrade (all refusals happen
//!   before it): inbound frames validated ([`chat_shared::protocol`]),
//!   stamped, appended and acked; outbound frames written in order.
//! - `sse/`: `GET /sse`, the same connection over server-sent events;
//!   `conn` holds what both transports check and take before serving, and
//!   `transport` names which one carries a connection.
//! - [`http`]: the routes (`/ws`, `/health`, `/livez`, `/readyz`, `/metrics`,
//!   `/rooms/{room}/…`), the access guard of room routes, the publish API,
//!   sending over HTTP with a token or session (`http::send`), the demo
//!   page and the JSON error type.
//! - [`rooms`]: the room features: history and search, room-event checks,
//!   presence and `join` / `leave`, read receipts, typing, bans.
//! - [`edge`]: accepting and admitting a connection: the accept loop and
//!   the bounded handshake, the listener, tokens (JWT, JWKS), anonymous
//!   sessions, API keys, origin / IP policy, rate limits, the periodic
//!   re-check of bans and registrations.
//! - [`delivery`]: a message's path through this gateway: the pre-publish
//!   hook's verdict, the append to the room's stream, the delivery channel,
//!   the local registry of connections per room, each connection's bounded
//!   queue.
//! - [`hook`]: the client of the application's pre-publish hook
//!   (`PUBLISH_HOOK_URL`): the signed request, its answer, its bounds.
//! - [`state`]: what every request and connection shares; [`config`]: flags
//!   and env variables.
//!
//! [`run`] is what `main` calls and what tests start.

pub mod config;
mod conn;
pub mod delivery;
pub mod edge;
pub mod hook;
pub mod http;
pub mod rooms;
mod sse;
pub mod state;
mod transport;
mod ws;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_shared::ephemeral::PresenceKind;
use chat_shared::metrics::Exporter;
use chat_shared::redis::RedisHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::delivery::subscriber;
use crate::edge::{accept, listener, recheck};
use crate::rooms::{presence, presence_events, room_index};

pub use config::GatewayConfig;
pub use state::AppState;

/// Serves until `shutdown` is cancelled, then drains: readiness turns 503,
/// new upgrades are refused, every connection is closed with 1001 and removed
/// from Redis, and the call returns within `SHUTDOWN_GRACE_SECS`.
///
/// # Errors
/// Fails when the Redis configuration is unusable or the server cannot run.
pub async fn run(
    config: GatewayConfig,
    gateway_id: String,
    listener: TcpListener,
    metrics: Option<Exporter>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let redis = RedisHandle::new(&config.redis)?;
    // Dashboards and rate() alerts see every series from the start, at 0.
    chat_shared::metrics::register_at_zero(chat_shared::metrics::Role::Gateway);
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let heartbeat_every = config.heartbeat();
    // Connections close on `conn_shutdown`, which fires when the drain starts.
    let conn_shutdown = CancellationToken::new();
    let state = AppState::new(
        config,
        gateway_id.clone(),
        redis.clone(),
        metrics.clone(),
        conn_shutdown.clone(),
    )
    .map_err(ConfigError)?;
    tracing::info!(gateway_id, addr = ?listener.local_addr().ok(), "Gateway starting");

    let background = CancellationToken::new();
    let keepalive = redis.spawn_keepalive(background.clone());
    let upkeep = metrics.as_ref().map(|m| m.spawn_upkeep(background.clone()));
    let subscriber = tokio::spawn(subscriber::run(
        redis.clone(),
        gateway_id.clone(),
        state.rooms.clone(),
        state.subscription.clone(),
        subscriber::SubscriberConfig {
            buffer_batches: state.config.delivery_buffer_batches as usize,
            probe_interval: state.config.probe_interval(),
        },
        background.clone(),
    ));
    // JWKS keys: the first fetch is awaited (a failure only warns: tokens
    // are refused until keys arrive), then refreshed in the background.
    let jwks_refresh = match &state.auth {
        Some(auth) => auth.start_refresh(background.clone()).await,
        None => None,
    };
    // A fixed GATEWAY_ID (e.g. a StatefulSet pod) may belong to a process
    // that is still alive, or to a killed one whose entries are left behind:
    // wait out the first, clear the second, before heartbeating or serving.
    // Random ids are unique per process and have nothing to clear.
    if state.config.gateway_id.is_some() {
        claim_fixed_id(&state, heartbeat_every).await?;
    }
    let heartbeat = {
        let state = state.clone();
        let redis = redis.clone();
        let id = gateway_id.clone();
        let stop = background.clone();
        let rooms = state.rooms.clone();
        tokio::spawn(async move {
            let mut first = true;
            let mut tick = tokio::time::interval(heartbeat_every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                match presence::heartbeat(&redis, &id).await {
                    Ok(true) if !first => {
                        let members: Vec<_> = rooms
                            .members()
                            .into_iter()
                            .map(|(room, conns)| {
                                let conns = conns
                                    .into_iter()
                                    .map(|(id, user)| (presence::conn_key(id), user))
                                    .collect();
                                (room, conns)
                            })
                            .collect();
                        tracing::warn!(
                            rooms = members.len(),
                            "Redis lost this gateway's registrations; restoring them"
                        );
                        match presence::restore_connections(&redis, &id, &members).await {
                            Err(e) => {
                                metrics::counter!(chat_shared::metrics::GW_REDIS_ERRORS, "op" => "reregister").increment(1);
                                tracing::warn!(error = %e, "Cannot restore registrations; retrying next heartbeat");
                                // Forget the heartbeat so the next one sees "new" again.
                                let _ = presence::remove_heartbeat(&redis, &id).await;
                            }
                            Ok(joined) => {
                                // Workers skipped us meanwhile: catch up from history.
                                rooms.resync_all();
                                for (room, users) in joined {
                                    presence_events::announce(
                                        &state,
                                        &room,
                                        PresenceKind::Join,
                                        &users,
                                    )
                                    .await;
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics::counter!(chat_shared::metrics::GW_REDIS_ERRORS, "op" => "heartbeat").increment(1);
                        tracing::warn!(error = %e, "Gateway heartbeat failed");
                    }
                }
                if let Err(e) = room_index::assert_rooms(&redis, &id, &rooms.room_names()).await {
                    metrics::counter!(chat_shared::metrics::GW_REDIS_ERRORS, "op" => "heartbeat")
                        .increment(1);
                    tracing::debug!(error = %e, "Cannot re-assert this gateway's rooms");
                }
                first = false;
            }
        })
    };

    let recheck = tokio::spawn(recheck::run(
        state.clone(),
        state.config.recheck_interval(),
        background.clone(),
    ));

    let app = http::routes::router(state.clone());
    let drain_state = state.clone();
    let listener = listener::ChatListener::new(listener, state.config.socket_send_buffer_bytes);
    accept::serve(listener, app, state.clone(), async move {
        shutdown.cancelled().await;
        drain_state.draining.store(true, Ordering::Release);
        tracing::info!(
            connections = drain_state.connection_count(),
            "Draining: closing connections with 1001"
        );
        conn_shutdown.cancel();
    })
    .await;

    // The listener is closed; wait for the upgraded sockets' tasks.
    state.tracker.close();
    if tokio::time::timeout(grace, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = state.connection_count(),
            "Drain exceeded the grace period; exiting anyway"
        );
    }
    background.cancel();
    let _ = subscriber.await;
    let _ = heartbeat.await;
    let _ = recheck.await;
    let _ = keepalive.await;
    if let Some(refresh) = jwks_refresh {
        let _ = refresh.await;
    }
    if let Some(upkeep) = upkeep {
        let _ = upkeep.await;
    }
    if let Err(e) = presence::remove_heartbeat(&redis, &gateway_id).await {
        tracing::warn!(error = %e, "Cannot remove gateway heartbeat");
    }
    if let Err(e) = room_index::forget(&redis, &gateway_id).await {
        tracing::warn!(error = %e, "Cannot remove this gateway's room index");
    }
    tracing::info!("Gateway stopped");
    Ok(())
}

/// The configuration cannot be used (bad key file, bad CIDR, …).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Another live process heartbeats with this gateway's fixed `GATEWAY_ID`.
#[derive(Debug, thiserror::Error)]
#[error("GATEWAY_ID {0} is in use by a live gateway (its heartbeat stays fresh); give each gateway its own id")]
pub struct IdInUse(pub String);

/// Makes a fixed gateway id this process's own: waits until a previous
/// holder's heartbeat is stale (a process that was just killed), refuses when
/// it stays fresh (two live gateways with one id would remove each other's
/// entries), then removes what a dead predecessor left behind.
///
/// # Errors
/// [`IdInUse`] when a live process holds the id.
async fn claim_fixed_id(state: &AppState, heartbeat_every: Duration) -> anyhow::Result<()> {
    let (redis, gateway_id) = (&state.redis, state.gateway_id.as_str());
    // A live holder beats every `heartbeat_every`; three missed beats mean
    // it is gone. Waiting a little longer than that tells the two apart.
    let stale_after = heartbeat_every * 3;
    let give_up = tokio::time::Instant::now() + stale_after + heartbeat_every * 2;
    loop {
        match presence::heartbeat_age_ms(redis, gateway_id).await {
            Ok(Some(age)) if Duration::from_millis(age) < stale_after => {
                if tokio::time::Instant::now() >= give_up {
                    return Err(IdInUse(gateway_id.to_owned()).into());
                }
                tracing::warn!(
                    age_ms = age,
                    "Another process beat with this GATEWAY_ID recently; waiting for it to go stale"
                );
                tokio::time::sleep(heartbeat_every).await;
            }
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot check this GATEWAY_ID's previous heartbeat; continuing");
                return Ok(());
            }
        }
    }
    match presence::purge_previous(redis, gateway_id).await {
        Ok(rooms) if rooms.is_empty() => {}
        Ok(rooms) => {
            let n: usize = rooms.iter().map(|(_, r)| r.members).sum();
            tracing::info!(
                entries = n,
                "Removed connection entries of this gateway's previous process"
            );
            for (room, removed) in rooms {
                presence_events::announce(state, &room, PresenceKind::Leave, &removed.left).await;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot clear a previous process's connection entries")
        }
    }
    Ok(())
}
