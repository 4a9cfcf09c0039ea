//! nginx as the rules see it: the running instances (master, workers, binary, version)
//! and what their configuration says about connections: upstreams and their keep-alive,
//! every place that proxies with the `proxy_http_version` and `proxy_set_header` that
//! are in force there after nginx's inheritance rules, client keep-alive, worker
//! limits. Every item carries the file and line it comes from. Plain data: filled by
//! `collect::nginx`, read by the `analyze::nginx_*` rules.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::Endpoint;

/// The first nginx release whose defaults keep upstream connections alive: `keepalive
/// 32 local` in every `upstream {}` block, `proxy_http_version 1.1`, no `Connection:
/// close` (nginx CHANGES 1.29.7, mainline 2026-03-24; 1.30.0 stable).
pub const KEEPALIVE_DEFAULT_SINCE: (u32, u32, u32) = (1, 29, 7);

/// Where a directive is: file (as nginx sees it) and line, plus the line's text so a
/// fix can quote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceRef {
    pub file: String,
    pub line: u32,
    /// The source line as written (whitespace kept); not in JSON.
    #[serde(skip)]
    pub text: String,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

impl SourceRef {
    /// The leading whitespace of the line, to indent inserted lines like their neighbours.
    pub fn indent(&self) -> &str {
        let t = self.text.as_str();
        &t[..t.len() - t.trim_start().len()]
    }
}

/// The version an nginx (or fork) binary reports, and the nginx core it is built on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NginxVersion {
    /// As the binary spells it: `nginx/1.22.1`, `openresty/1.21.4.1`, `Angie/1.10.0`.
    pub banner: String,
    /// `nginx`, `openresty`, `tengine`, `angie`, `freenginx`, ...
    pub product: String,
    /// The nginx core version when the banner tells it (nginx itself, OpenResty's first
    /// three numbers, Tengine's `(nginx/X.Y.Z)`); `None` for forks that version
    /// themselves (Angie, freenginx) and anything unrecognised.
    pub core: Option<(u32, u32, u32)>,
}

impl NginxVersion {
    /// Reads a banner such as `nginx/1.22.1`, `openresty/1.21.4.1`,
    /// `Tengine/2.3.2 (nginx/1.17.3)` or `Angie/1.10.0`; `None` when it has no `/`.
    pub fn parse(banner: &str) -> Option<NginxVersion> {
        let banner = banner.trim();
        let (product, rest) = banner.split_once('/')?;
        let product = product.trim().to_ascii_lowercase();
        if product.is_empty() || product.contains(char::is_whitespace) {
            return None;
        }
        let numbers = |s: &str| -> Option<(u32, u32, u32)> {
            let mut it = s
                .split(|c: char| !c.is_ascii_digit())
                .take(3)
                .map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??, it.next()??))
        };
        let version = rest.split_whitespace().next().unwrap_or("");
        let core = match product.as_str() {
            "nginx" | "openresty" => numbers(version),
            // Tengine names its nginx core in parentheses.
            _ => rest
                .split_once("nginx/")
                .and_then(|(_, v)| numbers(v.trim_end_matches(')'))),
        };
        Some(NginxVersion {
            banner: banner.to_string(),
            product,
            core,
        })
    }

    /// `Some(true)` when the core is 1.29.7 or later (upstream keep-alive by default),
    /// `Some(false)` before, `None` when the core version is unknown.
    pub fn keepalive_by_default(&self) -> Option<bool> {
        self.core.map(|c| c >= KEEPALIVE_DEFAULT_SINCE)
    }
}

/// A directive's value and where it is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub value: String,
    pub at: SourceRef,
    /// The block it is in: `main`, `events`, `http`, `server example.com`,
    /// `location /api`.
    pub context: String,
}

/// A `proxy_set_header`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyHeader {
    pub name: String,
    pub value: String,
    pub at: SourceRef,
}

impl ProxyHeader {
    /// `proxy_set_header Connection "";` (or any empty value): nginx sends no
    /// Connection header, which keep-alive needs.
    pub fn clears_connection(&self) -> bool {
        self.name.eq_ignore_ascii_case("connection") && self.value.is_empty()
    }
}

/// A `server` line of an `upstream` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamServer {
    /// As written: `127.0.0.1:8080`, `backend.internal:80`, `unix:/run/app.sock`.
    pub address: String,
    pub at: SourceRef,
    /// The TCP endpoint when the address is a literal IP (or `localhost`) with or
    /// without a port (80 when absent); empty for names and unix sockets.
    pub endpoints: Vec<Endpoint>,
}

/// An `upstream NAME { ... }` block of the http context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upstream {
    pub name: String,
    pub at: SourceRef,
    pub servers: Vec<UpstreamServer>,
    /// `keepalive N [local]` when set in the block.
    pub keepalive: Option<Setting>,
}

impl Upstream {
    /// Idle connections cached per worker: the directive's number, or nginx's default
    /// for this version (32 from 1.29.7, none before); `None` when the version is
    /// unknown and the block does not say.
    pub fn cached_connections(&self, version: Option<&NginxVersion>) -> Option<u64> {
        match &self.keepalive {
            Some(k) => k
                .value
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok()),
            None => match version.and_then(NginxVersion::keepalive_by_default) {
                Some(true) => Some(32),
                Some(false) => Some(0),
                None => None,
            },
        }
    }
}

/// What a `proxy_pass` points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProxyTarget {
    /// The name of an `upstream` block.
    Upstream { name: String },
    /// A host and port written in the URL: nginx makes an implicit upstream for it,
    /// which has no connection cache in any version (the keep-alive module skips
    /// implicit upstreams, ngx_http_upstream_keepalive_init_main_conf()).
    Address {
        host: String,
        port: u16,
        endpoints: Vec<Endpoint>,
    },
    /// A unix socket: no TCP, nothing for tcpdoctor.
    Unix { path: String },
    /// Chosen at run time from variables.
    Variable,
}

/// A `proxy_pass`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyPass {
    /// As written: `http://backend/api/`.
    pub url: String,
    pub at: SourceRef,
    pub target: ProxyTarget,
    /// `https://`.
    pub tls: bool,
}

/// A place requests are handled in: a `location`, or an `if` / `limit_except` inside
/// one (nginx gives those their own configuration level, which inherits from the
/// location around it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// `location /api`, `location /api > location ~ \.php$`,
    /// `location /api > if ($x)`.
    pub label: String,
    pub at: SourceRef,
    /// The proxy_pass in force here (its own, or an enclosing location's for `if` and
    /// `limit_except`).
    pub proxy_pass: Option<ProxyPass>,
    /// `proxy_http_version` in force (nearest level that sets it); `None`: the default.
    pub http_version: Option<Setting>,
    /// `proxy_set_header`s in force: this level's own when it sets any, else the
    /// nearest enclosing level's (the directive is inherited only by levels that set
    /// none).
    pub headers: Vec<ProxyHeader>,
    /// This level sets proxy_set_header itself.
    pub own_headers: bool,
    /// Headers of the nearest enclosing level that sets any, which this level's own
    /// proxy_set_header lines replace (empty unless `own_headers`).
    pub dropped_headers: Vec<ProxyHeader>,
}

impl Location {
    /// The Connection header this place sends to the upstream: `Some("")` for none.
    pub fn connection_header(&self) -> Option<&ProxyHeader> {
        self.headers
            .iter()
            .rev()
            .find(|h| h.name.eq_ignore_ascii_case("connection"))
    }

    /// `1.0`, `1.1` (or `2` on versions that support it) in force here, or `default`.
    pub fn http_version_value(&self) -> Option<&str> {
        self.http_version.as_ref().map(|s| s.value.as_str())
    }
}

/// A `server { ... }` of the http context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    pub at: SourceRef,
    pub names: Vec<String>,
    /// `listen` arguments as written, one string per directive.
    pub listen: Vec<String>,
    pub locations: Vec<Location>,
}

impl Server {
    /// `server example.com` or `server at FILE:LINE`.
    pub fn label(&self) -> String {
        match self.names.first() {
            Some(n) if !n.is_empty() && n != "_" => format!("server {n}"),
            _ => format!("server at {}", self.at),
        }
    }
}

/// One value of a `map` block (`'' close;`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    pub key: String,
    pub value: String,
    pub at: SourceRef,
}

/// A `map $source $variable { ... }` of the http context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapBlock {
    pub source: String,
    /// The variable it defines, with its `$`.
    pub variable: String,
    pub at: SourceRef,
    pub entries: Vec<MapEntry>,
}

/// What a configuration says that matters for connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NginxConfig {
    /// Every file read, the main one first.
    pub files: Vec<String>,
    pub worker_processes: Option<Setting>,
    pub worker_connections: Option<Setting>,
    pub worker_rlimit_nofile: Option<Setting>,
    /// The `events {` line (where main-context directives can be added before).
    pub events_at: Option<SourceRef>,
    /// Client keep-alive: every `keepalive_timeout` and `keepalive_requests` in the http
    /// context and below (not those inside `upstream` blocks).
    pub keepalive_timeouts: Vec<Setting>,
    pub keepalive_requests: Vec<Setting>,
    pub upstreams: Vec<Upstream>,
    pub servers: Vec<Server>,
    pub maps: Vec<MapBlock>,
}

impl NginxConfig {
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams
            .iter()
            .find(|u| u.name.eq_ignore_ascii_case(name))
    }

    /// Every location that proxies, with its server.
    pub fn proxied(&self) -> impl Iterator<Item = (&Server, &Location, &ProxyPass)> {
        self.servers.iter().flat_map(|s| {
            s.locations
                .iter()
                .filter_map(move |l| l.proxy_pass.as_ref().map(|p| (s, l, p)))
        })
    }

    pub fn map_of(&self, variable: &str) -> Option<&MapBlock> {
        self.maps.iter().find(|m| m.variable == variable)
    }
}

/// How the configuration file was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigOrigin {
    /// `-c FILE` on the master's command line.
    CommandLine,
    /// The `--conf-path` compiled into the binary (or its default under `--prefix`).
    CompiledIn,
    /// Given to `tcpdoctor lint nginx FILE`.
    Given,
    /// No binary to ask: the usual `/etc/nginx/nginx.conf`.
    Guessed,
}

/// One nginx: a running master with its workers, or a configuration linted offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NginxInstance {
    /// `None` for `tcpdoctor lint` (no running process, no host evidence).
    pub master_pid: Option<u32>,
    pub worker_pids: Vec<u32>,
    /// Inode of the master's network namespace.
    pub netns: Option<u64>,
    /// The binary as the process sees it (`/usr/sbin/nginx`).
    pub binary: Option<String>,
    pub version: Option<NginxVersion>,
    /// Where its files were read from: `/`, or `/proc/PID/root` for a process with
    /// another root (a container).
    pub root: String,
    /// The main configuration file as nginx sees it.
    pub config_file: String,
    pub origin: ConfigOrigin,
    /// `None` when the configuration could not be read or parsed (see `error`).
    pub config: Option<NginxConfig>,
    /// Why not: `file:line: message`.
    pub error: Option<String>,
}

impl NginxInstance {
    /// `nginx (pid 4410)`, `openresty (pid 7)`, or `nginx configuration FILE` offline.
    pub fn label(&self) -> String {
        let product = self
            .version
            .as_ref()
            .map_or("nginx", |v| v.product.as_str());
        match self.master_pid {
            Some(pid) => format!("{product} (pid {pid})"),
            None => format!("{product} configuration {}", self.config_file),
        }
    }

    /// The pids whose sockets are this nginx's (workers and master).
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.master_pid
            .into_iter()
            .chain(self.worker_pids.iter().copied())
    }

    /// Whether the files are read through another root (a container).
    pub fn in_container(&self) -> bool {
        self.root != "/"
    }
}

/// A literal address written in a config: an IP (bracketed for IPv6) or `localhost`,
/// with an optional port. `None` for names tcpdoctor does not resolve.
pub fn literal_endpoints(host: &str, port: u16) -> Vec<Endpoint> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return vec![
            Endpoint::new(IpAddr::from([127, 0, 0, 1]), port),
            Endpoint::new(IpAddr::from(std::net::Ipv6Addr::LOCALHOST), port),
        ];
    }
    match h.parse::<IpAddr>() {
        Ok(ip) => vec![Endpoint::new(ip, port)],
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_nginx_and_its_forks() {
        let v = NginxVersion::parse("nginx/1.22.1").expect("nginx");
        assert_eq!((v.product.as_str(), v.core), ("nginx", Some((1, 22, 1))));
        assert_eq!(v.keepalive_by_default(), Some(false));
        let v = NginxVersion::parse("nginx/1.29.7").expect("nginx");
        assert_eq!(v.keepalive_by_default(), Some(true));
        assert_eq!(
            NginxVersion::parse("nginx/1.30.0").and_then(|v| v.keepalive_by_default()),
            Some(true)
        );
        assert_eq!(
            NginxVersion::parse("nginx/1.29.6").and_then(|v| v.keepalive_by_default()),
            Some(false)
        );
        let v = NginxVersion::parse("openresty/1.21.4.1").expect("openresty");
        assert_eq!(v.core, Some((1, 21, 4)));
        let v = NginxVersion::parse("Tengine/2.3.2 (nginx/1.17.3)").expect("tengine");
        assert_eq!((v.product.as_str(), v.core), ("tengine", Some((1, 17, 3))));
        let v = NginxVersion::parse("Angie/1.10.0").expect("angie");
        assert_eq!((v.product.as_str(), v.core), ("angie", None));
        assert_eq!(v.keepalive_by_default(), None);
        assert!(NginxVersion::parse("nonsense").is_none());
        assert_eq!(NginxVersion::parse("nginx/x").and_then(|v| v.core), None);
    }

    #[test]
    fn literal_addresses_only() {
        assert_eq!(literal_endpoints("127.0.0.1", 80).len(), 1);
        assert_eq!(literal_endpoints("[::1]", 8080)[0].port, 8080);
        assert_eq!(literal_endpoints("localhost", 1).len(), 2);
        assert!(literal_endpoints("backend.internal", 80).is_empty());
    }
}
