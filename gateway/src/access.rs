//! Who may open a WebSocket, apart from the token: the browser Origin
//! policy, the client IP behind trusted proxies, and the per-IP connection
//! cap.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
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

    /// The client's IP: the peer, or — when the peer is a trusted proxy —
    /// the first untrusted hop of `X-Forwarded-For`, read from the right.
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
            let Ok(ip) = hop.parse::<IpAddr>() else {
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
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            allowed_origins: origins.into(),
            max_connections_per_ip: max,
            trusted_proxies: trusted.into(),
            user_rate_limit_per_sec: 0.0,
            user_rate_limit_burst: 20.0,
            room_creation_per_min: 0.0,
            room_creation_burst: 60.0,
            api_keys: String::new(),
            api_keys_file: None,
            api_rate_limit_per_sec: 100.0,
            api_rate_limit_burst: 200.0,
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
}
