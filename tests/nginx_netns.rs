//! Real nginx (the Debian package) in a private network namespace in front of a small
//! HTTP/1.1 backend, driven with real requests; `tcpdoctor check` must name what the
//! configuration costs, with nginx's pid, the upstream and the file:line, and the churn
//! the host shows. Needs root (namespaces) and /usr/sbin/nginx (`.ci/run` installs it).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::netns::Netns;
use serde_json::Value;

const NGINX: &str = "/usr/sbin/nginx";
const BACKEND_PORT: u16 = 18080;
const NGINX_PORT: u16 = 18081;
/// Requests driven through nginx in each test.
const REQUESTS: u64 = 200;

/// A bounded HTTP/1.1 backend on 127.0.0.1:BACKEND_PORT inside the namespace: keeps
/// connections alive unless the request is HTTP/1.0 or says `Connection: close`.
struct Backend {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    fn start(ns: &Netns) -> Backend {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let name = ns.name().to_string();
        let (s2, c2) = (stop.clone(), served.clone());
        let thread = thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
            // SAFETY: as in enter().
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let l = TcpListener::bind(("127.0.0.1", BACKEND_PORT)).expect("backend bind");
            l.set_nonblocking(true).expect("nonblocking");
            tx.send(()).expect("ready");
            let mut handlers = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(300);
            while !s2.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((c, _)) if handlers.len() < 5000 => {
                        let (s3, c3) = (s2.clone(), c2.clone());
                        handlers.push(thread::spawn(move || serve(c, &s3, &c3)));
                    }
                    Ok(_) => {}
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
                handlers.retain(|h| !h.is_finished());
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("backend ready");
        Backend {
            stop,
            served,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: requests until close, EOF, 5 s idle or stop.
fn serve(c: TcpStream, stop: &AtomicBool, served: &AtomicU64) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(match c.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut w = c;
    for _ in 0..100_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut close = request_line.trim_end().ends_with("HTTP/1.0");
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let l = h.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if l == "connection: close" {
                close = true;
            }
            if l == "connection: keep-alive" {
                close = false;
            }
        }
        served.fetch_add(1, Ordering::SeqCst);
        let body = "ok\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(body.as_bytes()))
            .is_err()
        {
            return;
        }
        if close {
            return;
        }
    }
}

/// nginx from the Debian package, started with `-p DIR -c DIR/nginx.conf` in the
/// namespace; stopped (SIGTERM, then SIGKILL of what is left) by pid on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    conf: PathBuf,
}

impl Nginx {
    fn start(ns: &Netns, tag: &str, http_body: &str) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: install the Debian package nginx (.ci/run does)"
        );
        let dir =
            std::env::temp_dir().join(format!("tcpdoctor-nginx-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let d = dir.display();
        let conf_text = format!(
            "worker_processes 1;\nerror_log {d}/error.log;\nevents {{\n    worker_connections 256;\n}}\nhttp {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{http_body}}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, conf_text).expect("write nginx.conf");
        let globals = format!("daemon off; pid {d}/nginx.pid;");
        let log = std::fs::File::create(dir.join("stderr.log")).expect("log");
        let child = ns
            .command(
                NGINX,
                &[
                    "-p",
                    &dir.display().to_string(),
                    "-c",
                    &conf.display().to_string(),
                    "-g",
                    &globals,
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nginx");
        Nginx { child, dir, conf }
    }

    /// `ip netns exec` execs nginx: the child is the master.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Line number (1-based) of the first line of the config containing `needle`.
    fn line_of(&self, needle: &str) -> u64 {
        let text = std::fs::read_to_string(&self.conf).expect("conf");
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i as u64 + 1)
            .unwrap_or_else(|| panic!("{needle} not in {text}"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Workers outlive a killed master: end the ones it had, by pid.
        for w in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{w}/comm")).unwrap_or_default();
            if comm.trim() == "nginx" {
                // SAFETY: a worker this test's nginx started.
                unsafe { libc::kill(w, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `n` GET requests through nginx on one keep-alive client connection (so the
/// client side adds no churn of its own) from a thread inside the namespace.
fn drive(ns: &Netns, n: u64, nginx: &Nginx) -> u64 {
    let name = ns.name().to_string();
    let log = nginx.stderr();
    let t = thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
        // SAFETY: as in enter().
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let deadline = Instant::now() + Duration::from_secs(15);
        let c = loop {
            match TcpStream::connect(("127.0.0.1", NGINX_PORT)) {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("nginx never listened on {NGINX_PORT}: {e}"),
            }
        };
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = BufReader::new(c.try_clone().expect("clone"));
        let mut w = c;
        let mut ok = 0;
        for _ in 0..n {
            w.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            let mut status = String::new();
            r.read_line(&mut status).expect("status");
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).expect("header");
                let l = h.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).expect("body");
            if status.starts_with("HTTP/1.1 200") {
                ok += 1;
            }
        }
        ok
    });
    t.join()
        .unwrap_or_else(|_| panic!("driving nginx failed; nginx said: {log}"))
}

/// TIME_WAIT sockets to or from the backend's port, as `ss` counts them.
fn ss_time_wait_toward_backend(ns: &Netns) -> u64 {
    let out = ns.run_ss(&[
        "-tanH",
        "state",
        "time-wait",
        &format!("( dport = :{BACKEND_PORT} or sport = :{BACKEND_PORT} )"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

fn check(ns: &Netns) -> (i32, Value) {
    let out = ns.run_tcpdoctor(&["check", "--json", "--interval", "0.2"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn nginx_findings(v: &Value) -> Vec<&Value> {
    v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| {
            f["rule_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("nginx_"))
        })
        .collect()
}

const UPSTREAM_NO_KEEPALIVE: &str =
    "    upstream backend {\n        server 127.0.0.1:18080;\n    }\n";
const UPSTREAM_KEEPALIVE: &str =
    "    upstream backend {\n        server 127.0.0.1:18080;\n        keepalive 16;\n    }\n";

#[test]
#[ignore = "needs root"]
fn nginx_without_upstream_keepalive_is_named_with_pid_file_line_and_churn() {
    common::require_root();
    let ns = Netns::new("ngxnoka");
    let backend = Backend::start(&ns);
    let http = format!(
        "{UPSTREAM_NO_KEEPALIVE}    server {{\n        listen 127.0.0.1:{NGINX_PORT};\n        location / {{\n            proxy_pass http://backend;\n        }}\n    }}\n"
    );
    let nginx = Nginx::start(&ns, "noka", &http);
    assert_eq!(drive(&ns, REQUESTS, &nginx), REQUESTS, "{}", nginx.stderr());
    assert_eq!(backend.served.load(Ordering::SeqCst), REQUESTS);
    let ss_tw = ss_time_wait_toward_backend(&ns);
    let (code, v) = check(&ns);
    let f: Vec<&Value> = nginx_findings(&v)
        .into_iter()
        .filter(|f| f["rule_id"] == "nginx_upstream_keepalive")
        .collect();
    assert_eq!(f.len(), 1, "{:#}", v["findings"]);
    let f = f[0];
    let pid = nginx.pid();
    let conf = nginx.conf.display().to_string();
    let line = nginx.line_of("upstream backend");
    assert_eq!(f["data"]["nginx"]["pid"], pid);
    assert_eq!(f["data"]["target"]["name"], "backend");
    assert_eq!(f["data"]["target"]["at"]["file"], conf);
    assert_eq!(f["data"]["target"]["at"]["line"], line);
    let title = f["title"].as_str().expect("title");
    assert!(title.starts_with(&format!("nginx (pid {pid}) opens a new connection per request to 127.0.0.1:18080 (upstream backend, {conf}:{line} has no keepalive)")), "{title}");
    // Every request left one TIME_WAIT, on nginx's side or the backend's; the count is
    // the one ss sees.
    let churn = &f["data"]["churn"];
    let tw = churn["time_wait_client_side"].as_u64().expect("n")
        + churn["time_wait_backend_side"].as_u64().expect("n");
    assert!(tw >= REQUESTS, "{churn:#} vs {REQUESTS} requests");
    assert_eq!(tw, ss_tw, "tcpdoctor {churn:#} vs ss {ss_tw}");
    assert!(
        title.contains(&format!(": {tw} TIME_WAIT toward it")),
        "{title}"
    );
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["nature"], "live");
    assert!(code >= 1, "a warning exits 1 or more");
    // The fix is the diff for that line.
    let patch = f["fix"][0]["patch"].as_str().expect("patch");
    assert!(
        patch.contains(&format!("@@ -{line} +{line},2 @@")),
        "{patch}"
    );
    assert!(patch.contains("+        keepalive 32;"), "{patch}");
}

#[test]
#[ignore = "needs root"]
fn nginx_with_the_full_keepalive_recipe_gives_no_finding() {
    common::require_root();
    let ns = Netns::new("ngxka");
    let _backend = Backend::start(&ns);
    let http = format!(
        "{UPSTREAM_KEEPALIVE}    server {{\n        listen 127.0.0.1:{NGINX_PORT};\n        location / {{\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n            proxy_pass http://backend;\n        }}\n    }}\n"
    );
    let nginx = Nginx::start(&ns, "ka", &http);
    assert_eq!(drive(&ns, REQUESTS, &nginx), REQUESTS, "{}", nginx.stderr());
    // The recipe works: connections are reused, almost nothing closes.
    let ss_tw = ss_time_wait_toward_backend(&ns);
    assert!(
        ss_tw < 5,
        "{ss_tw} TIME_WAIT toward the backend with keep-alive"
    );
    let (_, v) = check(&ns);
    assert!(nginx_findings(&v).is_empty(), "{:#}", v["findings"]);
    // And it did see this nginx (a finding-free run must not be a blind one).
    assert!(
        !v["missing_evidence"]
            .as_array()
            .expect("notices")
            .iter()
            .any(|n| n["code"] == "nginx_config_unreadable"),
        "{:#}",
        v["missing_evidence"]
    );
}

#[test]
#[ignore = "needs root"]
fn nginx_inheritance_trap_points_at_the_location_line() {
    common::require_root();
    let ns = Netns::new("ngxtrap");
    let _backend = Backend::start(&ns);
    let http = format!(
        "{UPSTREAM_KEEPALIVE}    server {{\n        listen 127.0.0.1:{NGINX_PORT};\n        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n        location / {{\n            proxy_set_header X-Test trap;\n            proxy_pass http://backend;\n        }}\n    }}\n"
    );
    let nginx = Nginx::start(&ns, "trap", &http);
    assert_eq!(drive(&ns, REQUESTS, &nginx), REQUESTS, "{}", nginx.stderr());
    let ss_tw = ss_time_wait_toward_backend(&ns);
    assert!(
        ss_tw >= REQUESTS,
        "the trap really loses keep-alive: {ss_tw} TIME_WAIT"
    );
    let (_, v) = check(&ns);
    let f: Vec<&Value> = nginx_findings(&v);
    assert_eq!(f.len(), 1, "{:#}", v["findings"]);
    let f = f[0];
    assert_eq!(f["rule_id"], "nginx_proxy_header_inheritance");
    let conf = nginx.conf.display().to_string();
    assert_eq!(f["data"]["at"]["file"], conf);
    assert_eq!(f["data"]["at"]["line"], nginx.line_of("location /"));
    assert_eq!(f["data"]["nginx"]["pid"], nginx.pid());
    assert_eq!(
        f["data"]["dropped_headers"][0]["at"]["line"],
        nginx.line_of("proxy_set_header Connection")
    );
    let churn = &f["data"]["churn"];
    let tw = churn["time_wait_client_side"].as_u64().expect("n")
        + churn["time_wait_backend_side"].as_u64().expect("n");
    assert_eq!(tw, ss_tw);
    assert_eq!(f["severity"], "warning");
    assert!(
        f["fix"][0]["patch"]
            .as_str()
            .is_some_and(|p| p.contains("+            proxy_set_header Connection \"\";")),
        "{:#}",
        f["fix"]
    );
}
