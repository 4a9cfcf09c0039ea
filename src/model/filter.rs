//! Socket filters given on the command line: ports, address/CIDR with optional port,
//! owning pid and process name.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::{Endpoint, Owner, Owners, Socket};

/// `10.0.0.0/8`, `10.1.2.3`, `10.1.2.3:443`, `[::1]:443`, `::1`, `2001:db8::/32`,
/// `[2001:db8::]/32:443`, `*:443` or `:443`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrFilter {
    /// `None` matches any address.
    pub net: Option<IpNet>,
    pub port: Option<u16>,
}

/// A filter value we could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not an address, CIDR or port (examples: 10.0.0.0/8, 10.1.2.3:443, [::1]:80, :443)"
)]
pub struct BadAddrFilter(pub String);

impl FromStr for AddrFilter {
    type Err = BadAddrFilter;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BadAddrFilter(s.to_string());
        let t = s.trim();
        let parse_port = |p: &str| p.parse::<u16>().map_err(|_| err());
        let parse_net = |a: &str| -> Result<IpNet, BadAddrFilter> {
            if a.contains('/') {
                IpNet::from_str(a).map(|n| n.trunc()).map_err(|_| err())
            } else {
                a.parse::<IpAddr>().map(IpNet::from).map_err(|_| err())
            }
        };
        // Any address, given port (`::1` also starts with a colon, so digits only).
        if let Some(p) = t.strip_prefix("*:").or_else(|| t.strip_prefix(':')) {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(AddrFilter {
                    net: None,
                    port: Some(parse_port(p)?),
                });
            }
        }
        // Bracketed IPv6, maybe with a prefix length and a port: [addr](/len)?(:port)?
        if let Some(rest) = t.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or_else(err)?;
            let (prefix, port) = match after.split_once(':') {
                Some((pre, port)) => (pre, Some(parse_port(port)?)),
                None => (after, None),
            };
            let net = parse_net(&format!("{addr}{prefix}"))?;
            return Ok(AddrFilter {
                net: Some(net),
                port,
            });
        }
        // Bare IPv6 (more than one colon) never carries a port.
        if t.matches(':').count() > 1 {
            return Ok(AddrFilter {
                net: Some(parse_net(t)?),
                port: None,
            });
        }
        // IPv4 or IPv4 CIDR, optional :port.
        let (addr, port) = match t.split_once(':') {
            Some((a, p)) => (a, Some(parse_port(p)?)),
            None => (t, None),
        };
        Ok(AddrFilter {
            net: Some(parse_net(addr)?),
            port,
        })
    }
}

impl AddrFilter {
    pub fn matches(&self, e: &Endpoint) -> bool {
        if let Some(p) = self.port {
            if e.port != p {
                return false;
            }
        }
        match self.net {
            None => true,
            // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; compare both forms.
            Some(net) => net.contains(&e.address) || net.contains(&e.canonical_ip()),
        }
    }
}

/// Every filter of `sockets` except state, which the kernel applies. Within one kind of
/// filter values are alternatives (OR); different kinds must all match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketFilter {
    /// Matches either the local or the remote port.
    pub ports: Vec<u16>,
    pub local: Vec<AddrFilter>,
    pub peer: Vec<AddrFilter>,
    pub pids: Vec<u32>,
    /// Exact process names (`/proc/PID/comm`).
    pub comms: Vec<String>,
}

impl SocketFilter {
    /// Filters that need the owner scan.
    pub fn needs_owners(&self) -> bool {
        !self.pids.is_empty() || !self.comms.is_empty()
    }

    /// The address and port part, decidable from the socket alone.
    pub fn matches_socket(&self, s: &Socket) -> bool {
        (self.ports.is_empty()
            || self
                .ports
                .iter()
                .any(|p| *p == s.local.port || *p == s.remote.port))
            && (self.local.is_empty() || self.local.iter().any(|f| f.matches(&s.local)))
            && (self.peer.is_empty() || self.peer.iter().any(|f| f.matches(&s.remote)))
    }

    /// The owner part: some owner of the socket has a wanted pid and a wanted name.
    pub fn matches_owner(&self, s: &Socket, owners: &Owners) -> bool {
        if !self.needs_owners() {
            return true;
        }
        if s.inode == 0 {
            return false;
        }
        owners
            .map
            .owners(s.inode)
            .any(|o| self.wants_owner(o, owners))
    }

    /// Whether this one owner has a wanted pid and a wanted name (true when the filter
    /// says nothing about owners).
    pub fn wants_owner(&self, o: Owner, owners: &Owners) -> bool {
        (self.pids.is_empty() || self.pids.contains(&o.pid))
            && (self.comms.is_empty()
                || owners
                    .process(o.pid)
                    .is_some_and(|p| self.comms.contains(&p.comm)))
    }

    /// The owners of `s`, those this filter asked for first (a socket shared after
    /// fork shows the process `--comm` or `--pid` named, not whichever was found first).
    pub fn owners_of(&self, s: &Socket, owners: &Owners) -> Vec<Owner> {
        if s.inode == 0 {
            return Vec::new();
        }
        let mut all: Vec<Owner> = owners.map.owners(s.inode).collect();
        if self.needs_owners() {
            // Stable: scan order within each group.
            all.sort_by_key(|o| !self.wants_owner(*o, owners));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        let sa: std::net::SocketAddr = s.parse().expect("socket address");
        Endpoint::new(sa.ip(), sa.port())
    }

    #[test]
    fn parses_every_documented_form() {
        let f = |s: &str| s.parse::<AddrFilter>().expect(s);
        assert_eq!(f(":443").port, Some(443));
        assert_eq!(f("*:443").net, None);
        assert_eq!(
            f("10.0.0.0/8").net,
            Some("10.0.0.0/8".parse().expect("net"))
        );
        assert_eq!(f("10.1.2.3:80").port, Some(80));
        assert_eq!(f("[::1]:80").port, Some(80));
        assert_eq!(f("::1").port, None);
        assert_eq!(
            f("[2001:db8::]/32:443").net,
            Some("2001:db8::/32".parse().expect("net"))
        );
        assert_eq!(
            f("10.9.9.9/8").net,
            Some("10.0.0.0/8".parse().expect("net"))
        );
    }

    #[test]
    fn rejects_garbage_naming_it() {
        for bad in [
            "",
            "10.0.0",
            "10.0.0.1:99999",
            "[::1",
            "host.example:80",
            "1.2.3.4/33",
        ] {
            let e = bad.parse::<AddrFilter>().expect_err(bad);
            assert!(e.to_string().contains(&format!("'{bad}'")));
        }
    }

    #[test]
    fn matches_cidr_port_and_mapped_v4() {
        let f: AddrFilter = "127.0.0.0/8:5000".parse().expect("filter");
        assert!(f.matches(&ep("127.0.0.9:5000")));
        assert!(!f.matches(&ep("127.0.0.9:5001")));
        assert!(f.matches(&ep("[::ffff:127.0.0.1]:5000")));
        assert!(!f.matches(&ep("[::1]:5000")));
        let v6: AddrFilter = "::1".parse().expect("filter");
        assert!(v6.matches(&ep("[::1]:1")));
        assert!(!v6.matches(&ep("127.0.0.1:1")));
    }
}
