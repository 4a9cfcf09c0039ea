//! The nginx parser on files: the hand-written fixtures in tests/fixtures/nginx (every
//! construct, malformed files with the line nginx reports, an include cycle), every file
//! of the Debian nginx package's /etc/nginx when it is installed, and `tcpdoctor lint
//! nginx` on them (findings with file:line and diffs, exit codes like check, 3 for a
//! configuration that does not parse). No root needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tcpdoctor::collect::nginx::fs::RootedFs;
use tcpdoctor::collect::nginx::{extract, load, parse};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx")
}

fn lint(args: &[&str]) -> (i32, Value, String) {
    let out = common::run::run_bounded(
        Command::new(common::TCPDOCTOR)
            .args(["lint", "nginx", "--json"])
            .args(args)
            .env("NO_COLOR", "1"),
        common::run::RUN_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lint --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn site_fixture_parses_every_construct_with_file_and_line() {
    let fs = RootedFs::new("/");
    let main = fixtures().join("site/nginx.conf");
    let loaded = load::load(&fs, &main, None).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = loaded
        .files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[1].ends_with("snippets/proxy.conf") && names[2].ends_with("conf.d/app.conf"));
    let cfg = extract::extract(&loaded);
    assert_eq!(cfg.upstreams.len(), 2);
    assert_eq!(
        cfg.upstreams[0].keepalive.as_ref().map(|k| k.at.line),
        Some(21)
    );
    assert_eq!(cfg.maps[0].entries[1].value, "close");
    let server = &cfg.servers[0];
    assert_eq!(server.names, vec!["app.example", "with space\"quote"]);
    let labels: Vec<&str> = server.locations.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(
        labels,
        vec![
            "location /",
            "location /admin/",
            "location /admin/ > if ($request_method = POST)",
            "location /ws",
            "location /cold",
            "location /direct"
        ]
    );
    let admin = &server.locations[1];
    assert_eq!(
        (admin.at.file.ends_with("conf.d/app.conf"), admin.at.line),
        (true, 9)
    );
    assert!(admin.dropped_headers.iter().any(|h| h.clears_connection()));
    // Lua bodies are skipped whole: the location after the Lua block is on its line.
    let raw = std::fs::read(fixtures().join("site/conf.d/app.conf")).expect("read");
    let tree = parse::parse(&raw, 0).expect("parses");
    let last = tree[0].children().last().expect("regex location");
    assert_eq!(
        (last.args[1].as_str(), last.line),
        ("\\.(png|jpe?g){1}$", 33)
    );
}

#[test]
fn malformed_fixtures_fail_at_the_line_nginx_reports() {
    let fs = RootedFs::new("/");
    let dir = fixtures().join("malformed");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).expect("dir").flatten() {
        let path = e.path();
        let text = std::fs::read_to_string(&path).expect("read");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("expect line");
        let (line, part) = expect.split_once(' ').expect("LINE PART");
        let err = load::load(&fs, &path, None).expect_err("malformed");
        assert_eq!(err.line.to_string(), line, "{}: {err}", path.display());
        assert!(err.to_string().contains(part), "{}: {err}", path.display());
        assert!(
            err.to_string()
                .starts_with(&format!("{}:{line}: ", path.display())),
            "{err}"
        );
        // The command says the same and exits 3.
        let (code, v, _) = lint(&[&path.display().to_string()]);
        assert_eq!(code, 3, "{v:#}");
        assert_eq!(v["status"], "error");
        assert_eq!(v["configs"][0]["error"], err.to_string());
        seen += 1;
    }
    assert_eq!(seen, 8);
    let e = load::load(&fs, &fixtures().join("cycle/a.conf"), None).expect_err("cycle");
    assert!(e.message.starts_with("include cycle:"), "{e}");
    assert!(e.file.ends_with("cycle/b.conf") && e.line == 2, "{e}");
}

#[test]
fn lint_names_every_problem_of_the_site_fixture() {
    let main = fixtures().join("site/nginx.conf");
    let (code, v, err) = lint(&[&main.display().to_string(), "--nginx-version", "1.24.0"]);
    assert_eq!(code, 1, "warnings exit 1: {v:#} {err}");
    assert_eq!(v["configs"][0]["version"], "nginx/1.24.0");
    let rules: Vec<&str> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["rule_id"].as_str())
        .collect();
    for want in [
        "nginx_upstream_keepalive",
        "nginx_proxy_keepalive_headers",
        "nginx_proxy_header_inheritance",
        "nginx_client_keepalive",
        "nginx_worker_connections",
    ] {
        assert!(rules.contains(&want), "{want} missing from {rules:?}");
    }
    let trap = v["findings"]
        .as_array()
        .expect("f")
        .iter()
        .find(|f| f["rule_id"] == "nginx_proxy_header_inheritance")
        .expect("trap");
    assert!(trap["data"]["at"]["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("conf.d/app.conf")));
    assert_eq!(trap["data"]["at"]["line"], 9);
    // Upstream `cold` (no keepalive) and the literal 127.0.0.1:9100.
    let ka: Vec<&Value> = v["findings"]
        .as_array()
        .expect("f")
        .iter()
        .filter(|f| f["rule_id"] == "nginx_upstream_keepalive")
        .collect();
    assert_eq!(ka.len(), 2, "{ka:#?}");
    // On 1.29.7 the upstream-block findings go; the literal address stays.
    let (_, v, _) = lint(&[&main.display().to_string(), "--nginx-version", "1.29.7"]);
    let ka: Vec<&Value> = v["findings"]
        .as_array()
        .expect("f")
        .iter()
        .filter(|f| f["rule_id"] == "nginx_upstream_keepalive")
        .collect();
    assert_eq!(ka.len(), 1);
    assert_eq!(ka[0]["data"]["target"]["kind"], "address");
    // A bad version is a usage error.
    let out = Command::new(common::TCPDOCTOR)
        .args(["lint", "nginx", "--nginx-version", "new"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn debian_etc_nginx_parses_file_by_file_and_as_a_whole() {
    let etc = Path::new("/etc/nginx");
    if !etc.join("nginx.conf").exists() {
        eprintln!("SKIP: /etc/nginx not installed (apt-get install nginx; .ci/run does)");
        return;
    }
    // Every regular file of the package's tree, alone.
    let mut stack = vec![etc.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            let p = e.path();
            let Ok(m) = std::fs::metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let bytes = std::fs::read(&p).expect("read");
                parse::parse(&bytes, 0).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                files += 1;
            }
        }
    }
    assert!(files >= 10, "{files} files");
    // The whole configuration, includes expanded, as nginx -t reads it.
    let loaded = load::load(&RootedFs::new("/"), &etc.join("nginx.conf"), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let cfg = extract::extract(&loaded);
    assert!(cfg.worker_connections.is_some());
    assert!(!cfg.servers.is_empty(), "sites-enabled/default is included");
    let (code, v, _) = lint(&[]);
    assert!(code == 0 || code == 1, "{v:#}");
    assert!(v["configs"][0]["error"].is_null(), "{v:#}");
}
