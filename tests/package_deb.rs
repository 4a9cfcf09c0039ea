//! The Debian package that `deploy/debian/build-deb` makes: its control fields, exactly
//! the files it should hold (each the same as what the binary under test prints or the
//! repository ships, so a stale package fails), lintian and shellcheck on it; and, as
//! root, `dpkg -i` on this machine: the installed binary runs, man finds every page, the
//! unit passes `systemd-analyze verify`, the maintainer scripts behave without a
//! running systemd (not enabled on install, kept enabled across an upgrade), and a
//! purge leaves nothing behind.
//!
//! Which package: `TCPDOCTOR_DEB` (.ci/run builds one and sets it), else
//! target/debian/tcpdoctor_VERSION-1_ARCH.deb. Missing: a failure under CI, a SKIP
//! line elsewhere (build it with `sh deploy/debian/build-deb`).

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fixtures::{read_repo_file, repo_path, TempDir};
use common::run::{must_run, run_bounded};
use common::tools::tool;
use common::{in_ci, require_root, TCPDOCTOR};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const UNIT: &str = "usr/lib/systemd/system/tcpdoctor.service";
const DPKG_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the container's systemd may take to boot: seconds on a quiet machine, once
/// over a minute while other tests ran beside it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn deb_arch() -> String {
    let out = must_run(Command::new("dpkg").arg("--print-architecture"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The package under test, or `None` (SKIP) outside CI when none was built.
fn package() -> Option<PathBuf> {
    let path = match std::env::var_os("TCPDOCTOR_DEB") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_path("target"));
            target
                .join("debian")
                .join(format!("tcpdoctor_{VERSION}-1_{}.deb", deb_arch()))
        }
    };
    if path.is_file() {
        return Some(path);
    }
    assert!(
        !in_ci(),
        "no package at {} (.ci/run builds it with deploy/debian/build-deb and sets TCPDOCTOR_DEB)",
        path.display()
    );
    eprintln!(
        "SKIP: no package at {}: build it with `sh deploy/debian/build-deb`",
        path.display()
    );
    None
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&must_run(cmd).stdout).into_owned()
}

fn tcpdoctor_prints(args: &[&str]) -> Vec<u8> {
    must_run(Command::new(TCPDOCTOR).args(args)).stdout
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = must_run(Command::new("gzip").arg("-dc").arg(path));
    out.stdout
}

/// The package's files (not folders), as absolute paths.
fn listed_files(deb: &Path) -> BTreeSet<String> {
    stdout(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with('l'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

/// Every man page the binary has, as the package installs it.
fn expected_pages() -> Vec<(String, Vec<String>)> {
    tcpdoctor::manual::pages()
        .into_iter()
        .map(|p| (format!("/usr/share/man/man1/{}.gz", p.file_name()), p.words))
        .collect()
}

fn expected_files() -> BTreeSet<String> {
    let mut files: BTreeSet<String> = [
        "/usr/bin/tcpdoctor",
        "/usr/share/bash-completion/completions/tcpdoctor",
        "/usr/share/zsh/vendor-completions/_tcpdoctor",
        "/usr/share/fish/vendor_completions.d/tcpdoctor.fish",
        "/usr/lib/systemd/system/tcpdoctor.service",
        "/usr/share/tcpdoctor/prometheus/alerts.yml",
        "/usr/share/tcpdoctor/grafana/tcpdoctor.json",
        "/usr/share/doc/tcpdoctor/README.md",
        "/usr/share/doc/tcpdoctor/deploy.md",
        "/usr/share/doc/tcpdoctor/copyright",
        "/usr/share/doc/tcpdoctor/changelog.Debian.gz",
        "/usr/share/lintian/overrides/tcpdoctor",
    ]
    .map(String::from)
    .into();
    files.extend(expected_pages().into_iter().map(|(f, _)| f));
    files
}

/// The unit's settings (comments dropped), with the hand-installed binary's path
/// replaced by the package's.
fn unit_settings(text: &str, from: &str, to: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.replace(from, to))
        .collect()
}

#[test]
fn the_package_holds_exactly_the_binary_pages_completions_unit_and_rules() {
    let Some(deb) = package() else {
        return;
    };
    // Control fields.
    let control = stdout(Command::new("dpkg-deb").arg("--field").arg(&deb));
    let field = |name: &str| -> String {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in\n{control}"))
            .to_string()
    };
    assert_eq!(field("Package"), "tcpdoctor");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert_eq!(field("Architecture"), deb_arch());
    assert_eq!(field("Section"), "net");
    assert!(field("Depends").starts_with("libc6 (>= "), "{control}");
    let synopsis = field("Description");
    assert!(synopsis.len() < 80, "synopsis on one line: {synopsis}");

    // Exactly these files: no sockfarm, nothing in /usr/local or /etc.
    assert_eq!(listed_files(&deb), expected_files());

    let tmp = TempDir::new("deb");
    let root = tmp.path().join("root");
    must_run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let file = |p: &str| root.join(p.trim_start_matches('/'));

    // The binary: this version, no debug info, runs.
    let bin = file("/usr/bin/tcpdoctor");
    let version = stdout(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("tcpdoctor {VERSION}"));
    let sections = stdout(Command::new("readelf").args(["-S", "--wide"]).arg(&bin));
    assert!(
        !sections.contains(".debug_"),
        "debug info shipped:\n{sections}"
    );
    let size = std::fs::metadata(&bin).expect("binary").len();
    assert!(size < 20_000_000, "{size} bytes");

    // Pages and completions: what the binary under test prints, so a package built
    // from other sources fails here.
    for (path, words) in expected_pages() {
        let mut args = vec!["man"];
        args.extend(words.iter().map(String::as_str));
        assert!(
            gunzip(&file(&path)) == tcpdoctor_prints(&args),
            "{path} differs from `tcpdoctor {}`: rebuild the package",
            args.join(" ")
        );
    }
    for (shell, path) in [
        ("bash", "/usr/share/bash-completion/completions/tcpdoctor"),
        ("zsh", "/usr/share/zsh/vendor-completions/_tcpdoctor"),
        (
            "fish",
            "/usr/share/fish/vendor_completions.d/tcpdoctor.fish",
        ),
    ] {
        let shipped = std::fs::read(file(path)).expect("completion");
        assert!(
            shipped == tcpdoctor_prints(&["completions", shell]),
            "{path} differs from `tcpdoctor completions {shell}`"
        );
    }
    for (shipped, repo) in [
        (
            "/usr/share/tcpdoctor/prometheus/alerts.yml",
            "deploy/prometheus/alerts.yml",
        ),
        (
            "/usr/share/tcpdoctor/grafana/tcpdoctor.json",
            "deploy/grafana/tcpdoctor.json",
        ),
        ("/usr/share/doc/tcpdoctor/deploy.md", "deploy/README.md"),
    ] {
        let got = std::fs::read_to_string(file(shipped)).expect("shipped file");
        assert!(got == read_repo_file(repo), "{shipped} differs from {repo}");
    }
    // The serve page's FILES are all in the package.
    for (path, _) in tcpdoctor::manual::PACKAGED_FILES {
        assert!(file(path).is_file(), "tcpdoctor-serve(1) names {path}");
    }

    // The unit: the repository's, running the package's binary.
    let unit = std::fs::read_to_string(file(UNIT)).expect("unit");
    assert_eq!(
        unit_settings(&unit, "", ""),
        unit_settings(
            &read_repo_file("deploy/systemd/tcpdoctor.service"),
            "/usr/local/bin/tcpdoctor",
            "/usr/bin/tcpdoctor"
        )
    );
    assert!(unit.contains("\nExecStart=/usr/bin/tcpdoctor serve\n"));
    assert!(!unit.contains("/usr/local"), "{unit}");

    // Debian's changelog names this version first.
    let changelog = String::from_utf8(gunzip(&file(
        "/usr/share/doc/tcpdoctor/changelog.Debian.gz",
    )))
    .expect("changelog");
    assert!(
        changelog.starts_with(&format!("tcpdoctor ({VERSION}-1) ")),
        "deploy/debian/changelog must start with version {VERSION}-1"
    );
    let copyright =
        std::fs::read_to_string(file("/usr/share/doc/tcpdoctor/copyright")).expect("copyright");
    assert!(
        copyright.contains("License: MIT OR Apache-2.0"),
        "{copyright}"
    );

    // Maintainer scripts: the unit registered, never enabled on install, systemctl only
    // where systemd runs.
    let scripts = tmp.path().join("control");
    must_run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&scripts));
    let mut names: Vec<String> = std::fs::read_dir(&scripts)
        .expect("control dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    assert_eq!(names, ["control", "postinst", "postrm", "prerm"]);
    let read = |n: &str| std::fs::read_to_string(scripts.join(n)).expect("script");
    let postinst = read("postinst");
    assert!(postinst.contains("deb-systemd-helper update-state tcpdoctor.service"));
    assert!(
        postinst.contains("was-enabled tcpdoctor.service"),
        "{postinst}"
    );
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    for name in ["postinst", "postrm", "prerm"] {
        let text = read(name);
        assert!(text.starts_with("#!/bin/sh\nset -e\n"), "{name}");
        for (i, line) in text.lines().enumerate() {
            if line.contains("systemctl") || line.contains("deb-systemd-invoke") {
                let before = &text.lines().take(i).collect::<Vec<_>>().join("\n");
                assert!(
                    before.contains("[ -d /run/systemd/system ]"),
                    "{name}: `{line}` without checking that systemd runs"
                );
            }
        }
    }
    if let Some(shellcheck) = tool("shellcheck", "--version", "Debian shellcheck", "scripts") {
        let mut cmd = Command::new(shellcheck);
        cmd.args(["--shell=sh", "--severity=style"]);
        for n in ["postinst", "postrm", "prerm"] {
            cmd.arg(scripts.join(n));
        }
        cmd.arg(repo_path("deploy/debian/build-deb"));
        let out = run_bounded(&mut cmd, DPKG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "shellcheck: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    if let Some(lintian) = tool("lintian", "--version", "Debian lintian", "package lint") {
        // Errors and warnings fail; the informational tags left are listed in
        // deploy/README.md ("Debian package").
        let out = run_bounded(
            Command::new(lintian)
                .args(["--fail-on", "error,warning", "--pedantic"])
                .arg(&deb),
            DPKG_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "lintian:\n{text}");
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("E:") || l.starts_with("W:")),
            "{text}"
        );
    }
}

/// Purges the package when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("dpkg").args(["--purge", "tcpdoctor"]),
            DPKG_TIMEOUT,
        );
    }
}

fn dpkg(args: &[&str], deb: Option<&Path>) -> String {
    let mut cmd = Command::new("dpkg");
    cmd.args(args);
    if let Some(d) = deb {
        cmd.arg(d);
    }
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    let out = must_run(&mut cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn installed_status() -> String {
    run_bounded(
        Command::new("dpkg-query").args(["-W", "-f=${Status}", "tcpdoctor"]),
        DPKG_TIMEOUT,
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .unwrap_or_default()
}

/// Symlinks and files systemd would read for the unit, outside the package's own files.
fn unit_traces() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/etc/systemd/system")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                stack.push(p);
            } else if p.to_string_lossy().contains("tcpdoctor") {
                found.push(p);
            }
        }
    }
    found
}

#[test]
#[ignore = "needs root"]
fn dpkg_installs_it_the_binary_and_pages_work_and_a_purge_leaves_nothing() {
    require_root();
    let Some(deb) = package() else {
        return;
    };
    let before = installed_status();
    assert!(
        before.is_empty() || before.contains("not-installed"),
        "tcpdoctor is already installed here ({before}); this test installs and purges the \
         package: remove it first (dpkg --purge tcpdoctor)"
    );
    assert!(unit_traces().is_empty(), "{:?}", unit_traces());
    let guard = Installed;

    let log = dpkg(&["--install"], Some(&deb));
    assert!(!log.to_lowercase().contains("warning"), "{log}");
    assert_eq!(installed_status(), "install ok installed");
    let version = stdout(Command::new("/usr/bin/tcpdoctor").arg("--version"));
    assert_eq!(version.trim(), format!("tcpdoctor {VERSION}"));

    // man finds every page by name, and the installed pages render.
    if let Some(man) = tool("man", "--version", "Debian man-db", "installed pages") {
        for page in tcpdoctor::manual::pages() {
            let found = stdout(Command::new(man).args(["-w", &page.name]));
            assert_eq!(
                found.trim(),
                format!("/usr/share/man/man1/{}.gz", page.file_name())
            );
        }
        let text = stdout(
            Command::new(man)
                .args(["-l", "/usr/share/man/man1/tcpdoctor-serve.1.gz"])
                .env("MANWIDTH", "80"),
        );
        assert!(
            text.contains("FILES") && text.contains("/usr/lib/systemd/system/tcpdoctor.service")
        );
    }
    if let Some(analyze) = tool("systemd-analyze", "--version", "Debian systemd", "unit") {
        // Offline: the binary exists, the settings parse, the Documentation= page is
        // installed (it runs `man tcpdoctor-serve`).
        let out = run_bounded(
            Command::new(analyze).args(["verify", &format!("/{UNIT}")]),
            DPKG_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !err.contains("tcpdoctor"), "{err}");
    }

    // Not enabled: the package is a tool first (deb-systemd-helper keeps no state for a
    // unit nobody enabled).
    let helper = |args: &[&str]| {
        run_bounded(Command::new("deb-systemd-helper").args(args), DPKG_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
            .status
            .success()
    };
    assert!(!helper(&["--quiet", "was-enabled", "tcpdoctor.service"]));
    assert!(!helper(&["debian-installed", "tcpdoctor.service"]));
    assert!(
        unit_traces().is_empty(),
        "enabled on install: {:?}",
        unit_traces()
    );

    // The admin enables it (systemctl works on the unit files when systemd is not
    // running); an upgrade (the same version again) keeps it enabled.
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/tcpdoctor.service");
    if let Some(systemctl) = tool("systemctl", "--version", "Debian systemd", "enable") {
        must_run(Command::new(systemctl).args(["enable", "tcpdoctor.service"]));
        assert!(wants.is_symlink(), "{:?}", unit_traces());
        dpkg(&["--install"], Some(&deb));
        assert!(wants.is_symlink(), "the upgrade dropped the enablement");
    }

    // Remove masks the unit and keeps the admin's enablement until purge; purge leaves
    // nothing.
    dpkg(&["--remove", "tcpdoctor"], None);
    assert!(!Path::new("/usr/bin/tcpdoctor").exists());
    dpkg(&["--purge", "tcpdoctor"], None);
    assert!(
        unit_traces().is_empty(),
        "left after purge: {:?}",
        unit_traces()
    );
    for f in expected_files() {
        assert!(!Path::new(&f).exists(), "{f} left after purge");
    }
    let mut state = String::new();
    if let Ok(mut f) = std::fs::File::open(
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/tcpdoctor.service",
    ) {
        let _ = f.read_to_string(&mut state);
    }
    assert!(state.is_empty(), "deb-systemd-helper state left: {state}");
    assert!(installed_status().is_empty() || installed_status().contains("not-installed"));
    drop(guard);
}

/// A Debian 12 system booted by systemd-nspawn from the root file system in
/// `TCPDOCTOR_SYSTEMD_ROOT` (.ci/run makes it with debootstrap), on a throwaway copy
/// (`--ephemeral`) and with a network namespace of its own. Stopped (SIGTERM to the
/// nspawn we started: an orderly shutdown) when dropped.
struct Booted {
    nspawn: std::process::Child,
    init: u32,
}

impl Booted {
    fn start(nspawn: &str, root: &Path, debs: &Path) -> Booted {
        let mut child = Command::new(nspawn)
            .arg("--directory")
            .arg(root)
            .args([
                "--ephemeral",
                "--private-network",
                "--register=no",
                "--keep-unit",
                "--boot",
                "--console=passive",
            ])
            .arg(format!("--bind-ro={}:/mnt/deb", debs.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{nspawn}: {e}"));
        let pid = child.id();
        // The container's init is nspawn's one child.
        let init =
            common::run::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
                let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
                tasks.flatten().find_map(|t| {
                    let text = std::fs::read_to_string(t.path().join("children")).ok()?;
                    text.split_whitespace().next()?.parse::<u32>().ok()
                })
            });
        let Some(init) = init else {
            common::run::kill_if_running(&mut child);
            panic!("systemd-nspawn started no init within 30 s");
        };
        let booted = Booted {
            nspawn: child,
            init,
        };
        let state = common::run::wait_for(BOOT_TIMEOUT, Duration::from_millis(200), || {
            let s = booted.run(&["systemctl", "is-system-running"]).1;
            (s == "running" || s == "degraded").then_some(s)
        });
        if state.is_none() {
            // What it still waits for, to tell a slow machine from a unit that hangs.
            let jobs = booted.run(&["systemctl", "list-jobs", "--no-pager"]).1;
            let failed = booted.run(&["systemctl", "--failed", "--no-pager"]).1;
            panic!(
                "the container's systemd did not finish booting in {BOOT_TIMEOUT:?}; jobs:\n{jobs}\nfailed:\n{failed}"
            );
        }
        booted
    }

    /// Runs `args` inside the container (every namespace of its init): (success,
    /// stdout trimmed, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = run_bounded(
            Command::new("nsenter")
                .args(["-t", &self.init.to_string(), "-a"])
                .args(args),
            DPKG_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn must(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "{args:?} in the container: {out}{err}");
        out
    }

    /// GET /metrics from the exporter on the container's loopback (bash's /dev/tcp:
    /// the minimal system has no HTTP client).
    fn scrape(&self) -> String {
        self.run(&[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9469 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
        ])
        .1
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        unsafe { libc::kill(self.nspawn.id() as libc::pid_t, libc::SIGTERM) };
        if common::run::wait_exit(&mut self.nspawn, Duration::from_secs(30)).is_none() {
            common::run::kill_if_running(&mut self.nspawn);
        }
    }
}

/// The capabilities in a `/proc/PID/status` line such as `CapEff:\t0000000400280004`.
fn caps(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
#[ignore = "needs root"]
fn on_a_real_systemd_the_package_starts_upgrades_stops_and_purges_the_exporter() {
    require_root();
    let Some(deb) = package() else {
        return;
    };
    let root = match std::env::var_os("TCPDOCTOR_SYSTEMD_ROOT") {
        Some(r) => PathBuf::from(r),
        None => {
            assert!(
                !in_ci(),
                "TCPDOCTOR_SYSTEMD_ROOT is not set (.ci/run makes a Debian 12 root with debootstrap)"
            );
            eprintln!(
                "SKIP: set TCPDOCTOR_SYSTEMD_ROOT to a Debian root with systemd (see .ci/run)"
            );
            return;
        }
    };
    let Some(nspawn) = tool(
        "systemd-nspawn",
        "--version",
        "Debian systemd-container",
        "boot",
    ) else {
        return;
    };
    let debs = TempDir::new("debs");
    std::fs::copy(&deb, debs.path().join("tcpdoctor.deb")).expect("copy the package");
    let sys = Booted::start(nspawn, &root, debs.path());

    // dpkg -i: installed, neither enabled nor started.
    sys.must(&["dpkg", "--install", "/mnt/deb/tcpdoctor.deb"]);
    assert_eq!(
        sys.run(&["systemctl", "is-enabled", "tcpdoctor"]).1,
        "disabled"
    );
    assert_eq!(
        sys.run(&["systemctl", "is-active", "tcpdoctor"]).1,
        "inactive"
    );

    // systemctl start: the exporter serves, as a dynamic user with the unit's
    // capabilities and no others.
    sys.must(&["systemctl", "start", "tcpdoctor"]);
    let body = common::run::wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        let b = sys.scrape();
        b.contains("tcpdoctor_source_up{source=\"sockets\"} 1")
            .then_some(b)
    })
    .unwrap_or_else(|| {
        panic!(
            "no metrics; journal:\n{}",
            sys.run(&["journalctl", "-u", "tcpdoctor", "--no-pager"]).1
        )
    });
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(body.contains(&format!("tcpdoctor_build_info{{version=\"{VERSION}\"}} 1")));
    assert!(body.contains("tcpdoctor_source_up{source=\"owners\"} 1"));
    let main_pid = sys.must(&[
        "systemctl",
        "show",
        "--property=MainPID",
        "--value",
        "tcpdoctor",
    ]);
    let status = sys.must(&["cat", &format!("/proc/{main_pid}/status")]);
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    assert!(
        !uid_line.split_whitespace().skip(1).any(|u| u == "0"),
        "{uid_line}"
    );
    // CAP_DAC_READ_SEARCH 2, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21, CAP_SYSLOG 34; the
    // container's bounding set may lack CAP_SYSLOG, never the others.
    let wanted: u64 = (1 << 2) | (1 << 19) | (1 << 21) | (1 << 34);
    let eff = caps(&status, "CapEff:");
    assert_eq!(
        eff & !wanted,
        0,
        "more than the unit's capabilities: {eff:#x}"
    );
    assert_eq!(
        eff & ((1 << 2) | (1 << 19) | (1 << 21)),
        (1 << 2) | (1 << 19) | (1 << 21)
    );
    assert_ne!(caps(&status, "NoNewPrivs:"), 0);

    // Enabled by the admin, then upgraded: restarted on the new binary, still enabled.
    sys.must(&["systemctl", "enable", "tcpdoctor"]);
    sys.must(&["dpkg", "--install", "/mnt/deb/tcpdoctor.deb"]);
    let restarted =
        common::run::wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
            let pid = sys
                .run(&[
                    "systemctl",
                    "show",
                    "--property=MainPID",
                    "--value",
                    "tcpdoctor",
                ])
                .1;
            (pid != main_pid && pid != "0").then_some(pid)
        });
    assert!(
        restarted.is_some(),
        "the upgrade did not restart the running exporter"
    );
    assert_eq!(
        sys.run(&["systemctl", "is-active", "tcpdoctor"]).1,
        "active"
    );
    assert_eq!(
        sys.run(&["systemctl", "is-enabled", "tcpdoctor"]).1,
        "enabled"
    );

    // Remove stops it (and masks the unit); purge forgets it.
    sys.must(&["dpkg", "--remove", "tcpdoctor"]);
    assert_eq!(
        sys.run(&["systemctl", "is-active", "tcpdoctor"]).1,
        "inactive"
    );
    sys.must(&["dpkg", "--purge", "tcpdoctor"]);
    let (known, _, _) = sys.run(&["systemctl", "cat", "tcpdoctor"]);
    assert!(!known, "the unit is still known after purge");
    let wants = sys
        .run(&["ls", "/etc/systemd/system/multi-user.target.wants"])
        .1;
    assert!(!wants.contains("tcpdoctor"), "{wants}");
}
