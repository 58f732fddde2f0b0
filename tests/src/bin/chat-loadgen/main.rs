//! `chat-loadgen`: bounded load scenarios against running gateways over real
//! WebSockets, reporting loss, duplicates, order and latency as a table and as
//! one `RESULT {json}` line. Loopback targets only; every run stops by itself.
//!
//! Scenarios:
//! - `fanout`: R rooms × C subscribers × P publishers at a fixed rate for D s
//!   (`--sse-subs N`: N subscribers per room on `/sse` instead);
//! - `burst`: one room, C subscribers, one publisher as fast as a window of
//!   unacked messages allows;
//! - `conns`: N idle connections in 100 rooms (`--rooms`), each with a
//!   `username` (or none: `--anonymous`), over several loopback source
//!   addresses, with connect rate and gateway RSS per connection
//!   (`--retry`: counted once registered, refusals retried after their
//!   hint, drops while held reported; see `storm`);
//! - `persist`: entries appended straight to the streams, timed until the
//!   worker has persisted and published them all;
//! - `reactors`: blocks of distinct users each adding 👍 to one message,
//!   with Redis CPU time per reaction per block;
//! - `bigroom members` / `bigroom publish`: one large room over several
//!   client processes, its connect rate and one message delivered to all.

mod bigroom;
mod client;
mod cpu;
mod reactors;
mod roles;
mod scenarios;
mod sse_sub;
mod stats;
mod storm;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::roles::{Mix, Pace};
use crate::scenarios::{RoomLoad, Targets};

#[derive(Debug, Parser)]
#[command(about = "Load generator for the chat service (loopback targets only)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Args)]
struct Common {
    /// Gateway WebSocket endpoints, comma separated; clients are spread round-robin.
    #[arg(
        long,
        default_value = "ws://127.0.0.1:8084/ws,ws://127.0.0.1:8085/ws",
        value_delimiter = ','
    )]
    urls: Vec<String>,
    /// Number of loopback source addresses (127.0.0.1 ..= 127.0.0.N) to spread connections over.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Processes whose CPU time to report per message and per delivery:
    /// `name=pid[,pid…]`, repeatable (e.g. `--cpu gateway=101,102 --cpu redis=99`).
    #[arg(long = "cpu", value_parser = cpu::parse_group)]
    cpu: Vec<cpu::Group>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// R rooms × C subscribers × P publishers at a fixed rate.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 50)]
        subs: usize,
        #[arg(long, default_value_t = 1)]
        pubs: usize,
        /// Messages per second per publisher.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Padding characters per message.
        #[arg(long, default_value_t = 0)]
        pad: usize,
        /// Mixed load: a `typing` frame after every N-th message (0 = none).
        #[arg(long, default_value_t = 0)]
        typing_every: u64,
        /// Mixed load: a reaction to the publisher's last acked message after
        /// every N-th message (0 = none).
        #[arg(long, default_value_t = 0)]
        react_every: u64,
        /// Of each room's subscribers, how many receive over server-sent
        /// events (`/sse`) instead of a WebSocket.
        #[arg(long, default_value_t = 0)]
        sse_subs: usize,
    },
    /// One room, C subscribers, one publisher with a window of unacked messages.
    Burst {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Unacked messages the publisher may have in flight.
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 0)]
        pad: usize,
    },
    /// N idle connections.
    Conns {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Connection attempts in parallel.
        #[arg(long, default_value_t = 256)]
        parallel: usize,
        /// Seconds to hold the connections before measuring and closing.
        #[arg(long, default_value_t = 3)]
        hold: u64,
        /// Gateway PIDs whose RSS to measure (comma separated).
        #[arg(long, value_delimiter = ',')]
        gateway_pids: Vec<u32>,
        /// Rooms the connections are spread over (1 = a connect storm into
        /// one room).
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Connect without a `username` (anonymous users), like an
        /// independent WebSocket client.
        #[arg(long)]
        anonymous: bool,
        /// Count a connection once registered (its first frame), retry
        /// refusals after their hint (503 `Retry-After`, 1013) plus jitter,
        /// and report the connections dropped while held.
        #[arg(long)]
        retry: bool,
        /// Room names are `<prefix>-<n>` (with `--retry`).
        #[arg(long, default_value = "idle")]
        room_prefix: String,
    },
    /// Stream → history → publish throughput of the running worker(s).
    Persist {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// Worker metrics addresses (host:port), comma separated.
        #[arg(long, default_value = "127.0.0.1:9091")]
        worker_metrics: String,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Must equal the services' STREAM_SHARDS.
        #[arg(long, default_value_t = 16)]
        stream_shards: u32,
    },
    /// Distinct users each add 👍 to one message, in blocks; Redis µs per
    /// reaction for each block.
    Reactors {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// Reactors in all.
        #[arg(long, default_value_t = 5000)]
        users: usize,
        /// Reactors per measured block.
        #[arg(long, default_value_t = 500)]
        block: usize,
        /// Connection attempts in parallel.
        #[arg(long, default_value_t = 100)]
        parallel: usize,
    },
    /// One large room over several processes: members, or the publisher.
    #[command(subcommand)]
    Bigroom(bigroom::Role),
}

/// Refuses any target that is not a loopback address: load tests stay on this host.
fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => hostport,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        ok,
        "refusing non-loopback target {url}: load tests target loopback only"
    );
    Ok(())
}

fn targets(c: &Common) -> anyhow::Result<Targets> {
    for u in &c.urls {
        ensure_loopback(u)?;
    }
    Ok(Targets {
        urls: c.urls.clone(),
        sources: client::loopback_sources(c.sources),
        cpu: c.cpu.clone(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match cli.scenario {
        Scenario::Fanout {
            common,
            rooms,
            subs,
            pubs,
            rate,
            duration,
            pad,
            typing_every,
            react_every,
            sse_subs,
        } => {
            let mixed = typing_every > 0 || react_every > 0;
            scenarios::rooms(
                &targets(&common)?,
                RoomLoad {
                    name: if mixed { "mixed" } else { "fanout" }.into(),
                    rooms,
                    subs,
                    pubs,
                    pace: Pace::Rate(rate),
                    duration: Duration::from_secs(duration),
                    pad,
                    mix: Mix {
                        typing_every,
                        react_every,
                    },
                    sse_subs,
                },
            )
            .await?
        }
        Scenario::Burst {
            common,
            subs,
            window,
            duration,
            pad,
        } => {
            scenarios::rooms(
                &targets(&common)?,
                RoomLoad {
                    name: "burst".into(),
                    rooms: 1,
                    subs,
                    pubs: 1,
                    pace: Pace::Window(window),
                    duration: Duration::from_secs(duration),
                    pad,
                    mix: Mix::default(),
                    sse_subs: 0,
                },
            )
            .await?
        }
        Scenario::Conns {
            common,
            count,
            parallel,
            hold,
            gateway_pids,
            rooms,
            anonymous,
            retry,
            room_prefix,
        } => {
            let shape = scenarios::ConnsShape {
                count,
                parallel,
                rooms,
                anonymous,
            };
            if retry {
                let hold = Duration::from_secs(hold);
                storm::conns_retrying(&targets(&common)?, shape, &room_prefix, hold, &gateway_pids)
                    .await?
            } else {
                scenarios::conns(
                    &targets(&common)?,
                    shape,
                    Duration::from_secs(hold),
                    &gateway_pids,
                )
                .await?
            }
        }
        Scenario::Persist {
            common,
            redis_url,
            worker_metrics,
            count,
            rooms,
            stream_shards,
        } => {
            match chat_shared::config::cluster_nodes(&redis_url, false) {
                Some(nodes) => {
                    for node in nodes {
                        ensure_loopback(&node)?;
                    }
                }
                None => ensure_loopback(&chat_shared::config::normalize_redis_url(&redis_url))?,
            }
            for addr in worker_metrics.split(',') {
                ensure_loopback(&format!("http://{addr}"))?;
            }
            scenarios::persist(
                &redis_url,
                &worker_metrics,
                count,
                rooms,
                stream_shards,
                &targets(&common)?,
            )
            .await?
        }
        Scenario::Reactors {
            common,
            redis_url,
            users,
            block,
            parallel,
        } => {
            ensure_loopback(&chat_shared::config::normalize_redis_url(&redis_url))?;
            reactors::reactors(&targets(&common)?, &redis_url, users, block, parallel).await?
        }
        Scenario::Bigroom(role) => bigroom::run(role).await?,
    };
    report.print();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ensure_loopback;

    #[test]
    fn only_loopback_targets() {
        for ok in [
            "ws://127.0.0.1:8084/ws",
            "ws://127.0.0.9:1/ws",
            "ws://localhost:8084/ws",
            "ws://[::1]:8084/ws",
            "redis://127.0.0.1:6379",
        ] {
            assert!(ensure_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ws://127.example.com:80/ws",
            "ws://10.0.0.1:8084/ws",
            "redis://redis:6379",
            "ws://[2001:db8::1]:1/ws",
        ] {
            assert!(ensure_loopback(bad).is_err(), "{bad}");
        }
    }
}
