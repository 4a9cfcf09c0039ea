//! From a loaded configuration tree to [`NginxConfig`]: upstreams, servers, every place
//! that proxies with the headers and HTTP version in force there, client keep-alive and
//! worker limits. Pure.
//!
//! Inheritance follows nginx's merge functions: `proxy_http_version` like most
//! directives (the nearest level that sets it), `proxy_set_header` all or nothing (a
//! level that sets any header inherits none, `ngx_http_proxy_merge_loc_conf()` merges
//! `headers_source` as one pointer), `proxy_pass` into `if` and `limit_except` blocks
//! that have none of their own.

use crate::model::nginx::{
    literal_endpoints, Location, MapBlock, MapEntry, NginxConfig, ProxyHeader, ProxyPass,
    ProxyTarget, Server, Setting, SourceRef, Upstream, UpstreamServer,
};

use super::load::LoadedConfig;
use super::parse::Directive;

pub fn extract(c: &LoadedConfig) -> NginxConfig {
    let mut out = NginxConfig {
        files: c
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect(),
        ..NginxConfig::default()
    };
    let x = Extractor { c };
    for d in &c.directives {
        match d.name.as_str() {
            "worker_processes" => out.worker_processes = Some(x.setting(d, "main")),
            "worker_rlimit_nofile" => out.worker_rlimit_nofile = Some(x.setting(d, "main")),
            "events" => {
                out.events_at = Some(x.at(d));
                for e in d.children() {
                    if e.name == "worker_connections" {
                        out.worker_connections = Some(x.setting(e, "events"));
                    }
                }
            }
            "http" => x.http(d, &mut out),
            _ => {}
        }
    }
    // proxy_pass names an upstream case-insensitively, wherever the block is.
    let names: Vec<String> = out.upstreams.iter().map(|u| u.name.clone()).collect();
    for s in &mut out.servers {
        for l in &mut s.locations {
            if let Some(p) = &mut l.proxy_pass {
                if let ProxyTarget::Address { host, .. } = &p.target {
                    // (With a port nginx refuses to start: "upstream may not have port".)
                    if let Some(n) = names.iter().find(|n| n.eq_ignore_ascii_case(host)) {
                        p.target = ProxyTarget::Upstream { name: n.clone() };
                    }
                }
            }
        }
    }
    out
}

struct Extractor<'a> {
    c: &'a LoadedConfig,
}

/// What a configuration level passes down.
#[derive(Clone, Default)]
struct Level {
    label: String,
    headers: Vec<ProxyHeader>,
    http_version: Option<Setting>,
    proxy_pass: Option<ProxyPass>,
}

impl Extractor<'_> {
    fn at(&self, d: &Directive) -> SourceRef {
        let f = self.c.file(d.file);
        SourceRef {
            file: f.map_or_else(|| "?".to_string(), |f| f.path.display().to_string()),
            line: d.line,
            text: f.map(|f| f.line(d.line).to_string()).unwrap_or_default(),
        }
    }

    fn setting(&self, d: &Directive, context: &str) -> Setting {
        Setting {
            value: d.args.join(" "),
            at: self.at(d),
            context: context.to_string(),
        }
    }

    fn http(&self, http: &Directive, out: &mut NginxConfig) {
        let mut level = Level {
            label: "http".into(),
            ..Level::default()
        };
        self.own_settings(http.children(), &mut level, out);
        for d in http.children() {
            match d.name.as_str() {
                "upstream" => out.upstreams.push(self.upstream(d)),
                "map" if d.args.len() == 2 => out.maps.push(self.map(d)),
                "server" => {
                    let s = self.server(d, &level, out);
                    out.servers.push(s);
                }
                _ => {}
            }
        }
    }

    /// The level's own proxy_set_header / proxy_http_version (replacing the inherited
    /// ones by nginx's rules) and client keep-alive settings.
    fn own_settings(&self, list: &[Directive], level: &mut Level, out: &mut NginxConfig) {
        let own: Vec<ProxyHeader> = list
            .iter()
            .filter(|d| d.name == "proxy_set_header" && d.args.len() == 2)
            .map(|d| ProxyHeader {
                name: d.args[0].clone(),
                value: d.args[1].clone(),
                at: self.at(d),
            })
            .collect();
        if !own.is_empty() {
            level.headers = own;
        }
        for d in list {
            match d.name.as_str() {
                "proxy_http_version" => level.http_version = Some(self.setting(d, &level.label)),
                "keepalive_timeout" => out.keepalive_timeouts.push(self.setting(d, &level.label)),
                "keepalive_requests" => out.keepalive_requests.push(self.setting(d, &level.label)),
                _ => {}
            }
        }
    }

    fn server(&self, d: &Directive, http: &Level, out: &mut NginxConfig) -> Server {
        let mut s = Server {
            at: self.at(d),
            names: Vec::new(),
            listen: Vec::new(),
            locations: Vec::new(),
        };
        for c in d.children() {
            match c.name.as_str() {
                "server_name" => s.names.extend(c.args.iter().cloned()),
                "listen" => s.listen.push(c.args.join(" ")),
                _ => {}
            }
        }
        let mut level = Level {
            label: s.label(),
            ..http.clone()
        };
        self.own_settings(d.children(), &mut level, out);
        for c in d.children() {
            if c.name == "location" {
                self.location(c, &level, None, &mut s.locations, out);
            }
        }
        s
    }

    /// A `location`, `if` or `limit_except` and what is nested in it. `outer`: the
    /// enclosing location's label (`None` at server level).
    fn location(
        &self,
        d: &Directive,
        parent: &Level,
        outer: Option<&str>,
        into: &mut Vec<Location>,
        out: &mut NginxConfig,
    ) {
        let own_label = format!("{} {}", d.name, d.args.join(" "))
            .trim_end()
            .to_string();
        let label = match outer {
            Some(o) => format!("{o} > {own_label}"),
            None => own_label,
        };
        let mut level = Level {
            label: label.clone(),
            ..parent.clone()
        };
        // proxy_pass is inherited only by `if` and `limit_except`.
        if d.name == "location" {
            level.proxy_pass = None;
        }
        let before = level.headers.clone();
        self.own_settings(d.children(), &mut level, out);
        let own_headers = d
            .children()
            .iter()
            .any(|c| c.name == "proxy_set_header" && c.args.len() == 2);
        if let Some(p) = d.children().iter().rev().find(|c| c.name == "proxy_pass") {
            level.proxy_pass = Some(self.proxy_pass(p));
        }
        if let Some(p) = &level.proxy_pass {
            let dropped = if own_headers {
                before
                    .iter()
                    .filter(|h| {
                        !level
                            .headers
                            .iter()
                            .any(|o| o.name.eq_ignore_ascii_case(&h.name))
                    })
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            into.push(Location {
                label: label.clone(),
                at: self.at(d),
                proxy_pass: Some(p.clone()),
                http_version: level.http_version.clone(),
                headers: level.headers.clone(),
                own_headers,
                dropped_headers: dropped,
            });
        }
        for c in d.children() {
            if matches!(c.name.as_str(), "location" | "if" | "limit_except") {
                self.location(c, &level, Some(&label), into, out);
            }
        }
    }

    fn proxy_pass(&self, d: &Directive) -> ProxyPass {
        let url = d.arg(0).to_string();
        let lower = url.to_ascii_lowercase();
        let (tls, rest) = if let Some(r) = lower.strip_prefix("https://") {
            (true, &url[url.len() - r.len()..])
        } else if let Some(r) = lower.strip_prefix("http://") {
            (false, &url[url.len() - r.len()..])
        } else {
            (false, "")
        };
        let target = if rest.is_empty() || url.starts_with('$') {
            ProxyTarget::Variable
        } else if let Some(path) = rest.strip_prefix("unix:") {
            ProxyTarget::Unix {
                path: path.trim_end_matches(':').to_string(),
            }
        } else {
            let hostport = rest.split('/').next().unwrap_or("");
            if hostport.contains('$') {
                ProxyTarget::Variable
            } else {
                let (host, port) = split_host_port(hostport, if tls { 443 } else { 80 });
                ProxyTarget::Address {
                    endpoints: literal_endpoints(&host, port),
                    host,
                    port,
                }
            }
        };
        ProxyPass {
            url,
            at: self.at(d),
            target,
            tls,
        }
    }

    fn upstream(&self, d: &Directive) -> Upstream {
        let mut u = Upstream {
            name: d.arg(0).to_string(),
            at: self.at(d),
            servers: Vec::new(),
            keepalive: None,
        };
        let label = format!("upstream {}", u.name);
        for c in d.children() {
            match c.name.as_str() {
                "server" => {
                    let address = c.arg(0).to_string();
                    let endpoints = if address.starts_with("unix:") {
                        Vec::new()
                    } else {
                        let (h, p) = split_host_port(&address, 80);
                        literal_endpoints(&h, p)
                    };
                    u.servers.push(UpstreamServer {
                        address,
                        at: self.at(c),
                        endpoints,
                    });
                }
                "keepalive" => u.keepalive = Some(self.setting(c, &label)),
                _ => {}
            }
        }
        u
    }

    fn map(&self, d: &Directive) -> MapBlock {
        MapBlock {
            source: d.arg(0).to_string(),
            variable: d.arg(1).to_string(),
            at: self.at(d),
            entries: d
                .children()
                .iter()
                .filter(|e| e.args.len() == 1)
                .map(|e| MapEntry {
                    key: e.name.clone(),
                    value: e.args[0].clone(),
                    at: self.at(e),
                })
                .collect(),
        }
    }
}

/// `host:port`, `[v6]:port`, `host` (port `default`).
fn split_host_port(s: &str, default: u16) -> (String, u16) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            let port = tail
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or(default);
            return (format!("[{h}]"), port);
        }
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h.to_string(), port),
            Err(_) => (s.to_string(), default),
        },
        _ => (s.to_string(), default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::nginx::load::SourceFile;
    use crate::collect::nginx::parse;

    fn config(text: &str) -> NginxConfig {
        let directives = parse::parse(text.as_bytes(), 0).expect("parses");
        extract(&LoadedConfig {
            files: vec![SourceFile {
                path: "/etc/nginx/nginx.conf".into(),
                text: text.to_string(),
            }],
            directives,
            bytes: text.len() as u64,
        })
    }

    const APP: &str = r#"worker_processes auto;
worker_rlimit_nofile 4096;
events { worker_connections 768; }
http {
    keepalive_timeout 65;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_http_version 1.1;
    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      close;
    }
    upstream Backend {
        server 127.0.0.1:18080 weight=2;
        server [::1]:18081;
        server app.internal;
        keepalive 16;
    }
    server {
        listen 80;
        server_name example.com;
        location / {
            proxy_pass http://backend;
        }
        location /api/ {
            proxy_set_header X-Real-IP $remote_addr;
            proxy_pass http://backend/v1/;
            if ($http_x) {
                return 403;
            }
            location /api/old/ {
                proxy_http_version 1.0;
                proxy_pass http://127.0.0.1:9000;
            }
        }
        location /ws {
            proxy_set_header Connection $connection_upgrade;
            proxy_pass https://$host_var;
        }
        location /sock { proxy_pass http://unix:/run/app.sock:/; }
        location /lit { proxy_pass https://10.0.0.5; keepalive_timeout 0; }
    }
}
"#;

    #[test]
    fn upstreams_servers_and_settings_with_lines() {
        let c = config(APP);
        assert_eq!(
            c.worker_connections.as_ref().map(|s| s.value.as_str()),
            Some("768")
        );
        assert_eq!(c.worker_rlimit_nofile.as_ref().map(|s| s.at.line), Some(2));
        let u = c.upstream("backend").expect("case-insensitive");
        assert_eq!(u.at.line, 13);
        assert_eq!(u.at.text, "    upstream Backend {");
        assert_eq!(u.at.indent(), "    ");
        assert_eq!(u.servers.len(), 3);
        assert_eq!(u.servers[0].endpoints[0].to_string(), "127.0.0.1:18080");
        assert_eq!(u.servers[1].endpoints[0].port, 18081);
        assert!(u.servers[2].endpoints.is_empty(), "names are not resolved");
        assert_eq!(u.keepalive.as_ref().map(|k| k.at.line), Some(17));
        assert_eq!(c.maps[0].entries[1].value, "close");
        assert_eq!(c.keepalive_timeouts.len(), 2);
        assert_eq!(c.keepalive_timeouts[1].context, "location /lit");
    }

    #[test]
    fn headers_and_versions_follow_nginx_inheritance() {
        let c = config(APP);
        let locs = &c.servers[0].locations;
        let by = |label: &str| {
            locs.iter().find(|l| l.label == label).unwrap_or_else(|| {
                panic!(
                    "{label} in {:?}",
                    locs.iter().map(|l| &l.label).collect::<Vec<_>>()
                )
            })
        };
        let root = by("location /");
        assert!(!root.own_headers);
        assert!(root
            .connection_header()
            .is_some_and(|h| h.clears_connection()));
        assert_eq!(root.http_version_value(), Some("1.1"));
        assert_eq!(
            root.proxy_pass.as_ref().map(|p| &p.target),
            Some(&ProxyTarget::Upstream {
                name: "Backend".into()
            })
        );

        // The trap: one header of its own, and Connection "" and Host are gone.
        let api = by("location /api/");
        assert!(api.own_headers);
        assert!(api.connection_header().is_none());
        let dropped: Vec<&str> = api
            .dropped_headers
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(dropped, vec!["Connection", "Host"]);
        assert_eq!(api.dropped_headers[0].at.line, 6);

        // `if` inherits the location's proxy_pass and headers.
        let iff = by("location /api/ > if ($http_x)");
        assert_eq!(iff.proxy_pass.as_ref().map(|p| p.at.line), Some(27));
        assert!(!iff.own_headers && iff.connection_header().is_none());

        // A nested location: its own proxy_pass and version, the outer headers.
        let old = by("location /api/ > location /api/old/");
        assert_eq!(old.http_version_value(), Some("1.0"));
        assert!(matches!(
            &old.proxy_pass.as_ref().map(|p| &p.target),
            Some(ProxyTarget::Address { port: 9000, endpoints, .. }) if endpoints.len() == 1
        ));
        assert!(old.headers.iter().any(|h| h.name == "X-Real-IP"));

        let ws = by("location /ws");
        assert_eq!(
            ws.proxy_pass.as_ref().map(|p| &p.target),
            Some(&ProxyTarget::Variable)
        );
        assert_eq!(
            ws.connection_header().map(|h| h.value.as_str()),
            Some("$connection_upgrade")
        );
        assert!(matches!(
            by("location /sock").proxy_pass.as_ref().map(|p| &p.target),
            Some(ProxyTarget::Unix { .. })
        ));
        let lit = by("location /lit").proxy_pass.as_ref().expect("proxy");
        assert!(lit.tls);
        assert!(matches!(
            &lit.target,
            ProxyTarget::Address { port: 443, .. }
        ));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a:81", 80), ("a".to_string(), 81));
        assert_eq!(split_host_port("a", 80), ("a".to_string(), 80));
        assert_eq!(split_host_port("[::1]:8", 80), ("[::1]".to_string(), 8));
        assert_eq!(split_host_port("[::1]", 443), ("[::1]".to_string(), 443));
        assert_eq!(split_host_port("a:x", 80), ("a:x".to_string(), 80));
    }
}
