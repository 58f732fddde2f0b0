//! Who may open a WebSocket, apart from the token: the browser Origin
//! policy, the client IP behind trusted proxies, and the per-IP connection
//! cap.
//!
//! Every per-IP budget (the connection cap, the anonymous message and read
//! budgets) counts an IPv6 client by its /64: one host usually holds a whole
//! /64, so counting single addresses would let it take 2^64 budgets.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use crate::config::AccessArgs;

/// Origin policy, trusted proxies and per-IP connection counts.
#[derive(Debug)]
pub struct AccessPolicy {
    /// Allowed origins; `None` allows all (`*`).
    origins: Option<HashSet<String>>,
    trusted: Vec<IpNet>,
    max_per_ip: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl AccessPolicy {
    /// Builds the policy from the configuration.
    ///
    /// # Errors
    /// A message for the operator when `TRUSTED_PROXIES` holds a bad CIDR or
    /// `ALLOWED_ORIGINS` is empty.
    pub fn from_args(args: &AccessArgs) -> Result<Self, String> {
        let list = |raw: &str| -> Vec<String> {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let origins = list(&args.allowed_origins);
        if origins.is_empty() {
            return Err("ALLOWED_ORIGINS must be * or a comma list of origins".into());
        }
        let origins = (!origins.iter().any(|o| o == "*")).then(|| {
            origins
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect()
        });
        let trusted = list(&args.trusted_proxies)
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("TRUSTED_PROXIES: {c:?} is not a CIDR or an IP address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            origins,
            trusted,
            max_per_ip: args.max_connections_per_ip,
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Whether a request with this `Origin` header may open a WebSocket.
    /// Requests without one (non-browser clients) are allowed.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match (&self.origins, origin) {
            (None, _) | (_, None) => true,
            (Some(allowed), Some(o)) => allowed.contains(o.trim_end_matches('/')),
        }
    }

    /// [`Self::client_ip`] with the `X-Forwarded-For` headers of `headers`.
    pub fn client_ip_of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        self.client_ip(peer, &forwarded)
    }

    /// The client's IP: the peer, or — when the peer is a trusted proxy —
    /// the first untrusted hop of `X-Forwarded-For`, read from the right.
    /// Hops may carry ports (`1.2.3.4:5555`, `[2001:db8::1]:443`).
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage in the chain: believe nothing further left.
                return client;
            };
            client = ip;
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Takes one of `ip`'s connection slots; `None` when it holds
    /// `MAX_CONNECTIONS_PER_IP` already. The slot is given back on drop.
    #[must_use = "the slot is released when dropped"]
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = budget_ip(ip);
        if self.max_per_ip == 0 {
            return Some(IpSlot { policy: None, ip });
        }
        let mut counts = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            policy: Some(Arc::clone(self)),
            ip,
        })
    }
}

/// One `X-Forwarded-For` hop: an address, with or without a port
/// (`[v6]:port` brackets the IPv6 form).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })
}

/// The address a client's per-IP budgets count under: IPv4 as it is (also
/// when mapped into IPv6), IPv6 by its /64 network.
pub fn budget_ip(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// One connection's share of its IP's cap; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    policy: Option<Arc<AccessPolicy>>,
    ip: IpAddr,
}

impl IpSlot {
    /// The client IP this slot counts against.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(policy) = &self.policy else { return };
        let mut counts = policy.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(origins: &str, trusted: &str, max: usize) -> AccessArgs {
        AccessArgs {
            allowed_origins: origins.into(),
            max_connections_per_ip: max,
            trusted_proxies: trusted.into(),
            ..AccessArgs::off()
        }
    }

    fn policy(origins: &str, trusted: &str, max: usize) -> Arc<AccessPolicy> {
        Arc::new(AccessPolicy::from_args(&args(origins, trusted, max)).unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn origins() {
        let any = policy("*", "", 0);
        assert!(any.origin_allowed(Some("https://evil.example")));
        let some = policy("https://chat.example, https://app.example/", "", 0);
        assert!(some.origin_allowed(Some("https://chat.example")));
        assert!(some.origin_allowed(Some("https://app.example")));
        assert!(!some.origin_allowed(Some("https://evil.example")));
        assert!(some.origin_allowed(None), "non-browser clients send none");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let p = policy("*", "10.0.0.0/8", 0);
        // An untrusted peer's header is ignored.
        assert_eq!(p.client_ip(ip("1.2.3.4"), &["9.9.9.9"]), ip("1.2.3.4"));
        // The first untrusted hop from the right is the client; a spoofed
        // left part does not matter.
        assert_eq!(
            p.client_ip(ip("10.0.0.1"), &["6.6.6.6, 5.5.5.5, 10.0.0.7"]),
            ip("5.5.5.5")
        );
        assert_eq!(p.client_ip(ip("10.0.0.1"), &[]), ip("10.0.0.1"));
        assert_eq!(
            p.client_ip(ip("10.0.0.1"), &["junk, 5.5.5.5"]),
            ip("5.5.5.5")
        );
        assert!(AccessPolicy::from_args(&args("*", "nope", 0)).is_err());
        // Hops with ports, as some proxies write them.
        assert_eq!(
            p.client_ip(ip("10.0.0.1"), &["5.5.5.5:5555"]),
            ip("5.5.5.5")
        );
        assert_eq!(
            p.client_ip(ip("10.0.0.1"), &["[2001:db8::1]:443, 10.0.0.9:80"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            p.client_ip(ip("10.0.0.1"), &["[2001:db8::2]"]),
            ip("2001:db8::2")
        );
        assert!(AccessPolicy::from_args(&args("", "", 0)).is_err());
    }

    #[test]
    fn per_ip_slots_are_counted_and_released() {
        let p = policy("*", "", 2);
        let a = p.admit(ip("1.1.1.1")).unwrap();
        let _b = p.admit(ip("1.1.1.1")).unwrap();
        assert!(p.admit(ip("1.1.1.1")).is_none());
        assert!(p.admit(ip("2.2.2.2")).is_some());
        drop(a);
        assert!(p.admit(ip("1.1.1.1")).is_some());
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let p = policy("*", "", 2);
        let _a = p.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = p.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(
            p.admit(ip("2001:db8:1:2:abcd::1")).is_none(),
            "a third address of the same /64 is the same client"
        );
        assert!(p.admit(ip("2001:db8:1:3::1")).is_some(), "another /64");
        assert_eq!(budget_ip(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(budget_ip(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }
}
