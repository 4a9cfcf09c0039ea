//! nginx (and its forks: OpenResty, Tengine, Angie, freenginx): running masters in every
//! namespace, found through /proc, and their configuration located the way nginx
//! locates it: `-c` and `-p` from the master's command line, else the paths compiled
//! into the binary (read from its bytes; the binary is never run), read through
//! `/proc/PID/root` when the process has another root (a container). Files only,
//! regular files only, each within a size bound.
//!
//! [`discover`] is a standalone step: it needs only the /proc root and returns
//! [`NginxInstance`]s (each with its namespace inode) plus notices; [`attach`] puts them
//! into the snapshot of their namespace.

pub mod binary;
pub mod extract;
pub mod fs;
pub mod load;
pub mod parse;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::model::nginx::{ConfigOrigin, NginxInstance, NginxVersion};
use crate::model::{text, units, HostSnapshot, Notice, NoticeCode};

use self::binary::BuildInfo;
use self::fs::{ConfigFs, RootedFs};

/// Process names of nginx and its forks (`/proc/PID/comm`).
fn is_nginx_comm(comm: &str) -> bool {
    // Exact names: a test binary or tool called nginx_something is not nginx.
    matches!(
        comm,
        "nginx" | "nginx-debug" | "openresty" | "angie" | "tengine" | "freenginx"
    )
}

/// A process as /proc shows it, enough to tell masters from workers.
#[derive(Debug, Clone)]
struct ProcEntry {
    pid: u32,
    ppid: u32,
    comm: String,
    /// argv, NUL-separated parts.
    argv: Vec<String>,
}

/// What the master's command line says (nginx's own options, `ngx_get_options()`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandLine {
    pub program: String,
    /// `-c FILE`
    pub conf: Option<String>,
    /// `-p PREFIX`
    pub prefix: Option<String>,
    /// `-g DIRECTIVES`
    pub globals: Option<String>,
    /// Whether this is a master's retitled command line (`nginx: master process ...`).
    pub master_title: bool,
}

/// Reads nginx's options from a process's argv. A running master rewrites its argv to
/// `nginx: master process <the original arguments joined by spaces>`
/// (`ngx_master_process_cycle()`), so quoting is lost: a `-g` value runs to the next
/// option.
pub fn parse_command_line(argv: &[String]) -> CommandLine {
    let mut out = CommandLine::default();
    let words: Vec<String> = match argv.first() {
        Some(first) if first.contains(": master process") => {
            out.master_title = true;
            let rest = first
                .split_once(": master process")
                .map_or("", |(_, r)| r)
                .to_string();
            // The title is one string; later argv slots are NUL padding.
            rest.split_whitespace().map(str::to_string).collect()
        }
        _ => argv.to_vec(),
    };
    let mut it = words.into_iter().peekable();
    out.program = it.next().unwrap_or_default();
    let is_option = |w: &str| {
        w.len() >= 2 && w.starts_with('-') && w[1..].chars().all(|c| "cpgesqtTvVh?".contains(c))
    };
    while let Some(w) = it.next() {
        let Some(flags) = w.strip_prefix('-') else {
            continue;
        };
        // `-c file` and `-cfile` both work in nginx; flags without values may be
        // grouped (`-tq`).
        for (i, f) in flags.char_indices() {
            // Flags without a value; anything else is not an nginx option (nginx
            // itself stops with "invalid option").
            if "hvVtTq?".contains(f) {
                continue;
            }
            if !"cpgse".contains(f) {
                break;
            }
            let attached = &flags[i + f.len_utf8()..];
            let value = if !attached.is_empty() {
                Some(attached.to_string())
            } else if f == 'g' && out.master_title {
                let mut parts = Vec::new();
                while let Some(next) = it.peek() {
                    if is_option(next) {
                        break;
                    }
                    parts.extend(it.next());
                }
                (!parts.is_empty()).then(|| parts.join(" "))
            } else {
                it.next()
            };
            match f {
                'c' => out.conf = value,
                'p' => out.prefix = value,
                'g' => out.globals = value,
                _ => {}
            }
            break;
        }
    }
    out
}

fn read_entry(dir: &Path, pid: u32) -> Option<ProcEntry> {
    let stat =
        crate::collect::bounded::read(&dir.join("stat"), crate::collect::bounded::SMALL).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let open = stat.iter().position(|b| *b == b'(')?;
    let close = stat.iter().rposition(|b| *b == b')')?;
    let comm = text::name(stat.get(open + 1..close)?, text::NAME_MAX);
    let rest = String::from_utf8_lossy(stat.get(close + 1..)?).into_owned();
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcEntry {
        pid,
        ppid,
        comm,
        argv: Vec::new(),
    })
}

/// A process's arguments from `dir/cmdline` (bounded), as nginx parses them.
pub(crate) fn read_argv(dir: &Path) -> Vec<String> {
    crate::collect::bounded::read_prefix(
        &dir.join("cmdline"),
        crate::collect::bounded::COMMAND_LINE,
    )
    .map(|b| {
        b.split(|c| *c == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    })
    .unwrap_or_default()
}

/// Finds every nginx master under `proc_root` and reads its configuration. Processes
/// that exit meanwhile are skipped; a configuration that cannot be read or parsed is
/// kept with its error (and a notice says so).
pub fn discover(proc_root: &Path) -> (Vec<NginxInstance>, Vec<Notice>) {
    let mut notices = Vec::new();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return (Vec::new(), notices);
    };
    let mut procs: BTreeMap<u32, ProcEntry> = BTreeMap::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(mut p) = read_entry(&e.path(), pid) {
            if is_nginx_comm(&p.comm) {
                p.argv = read_argv(&e.path());
                procs.insert(pid, p);
            }
        }
    }
    let mut out = Vec::new();
    // Masters of one binary (many containers of one image) scan it once.
    let mut builds: BuildCache = BTreeMap::new();
    for p in procs.values() {
        let title = p.argv.first().map_or("", String::as_str);
        let is_worker = title.contains(": worker process")
            || title.contains(": cache ")
            || procs.contains_key(&p.ppid) && !title.contains(": master process");
        if is_worker {
            continue;
        }
        let workers: Vec<u32> = procs
            .values()
            .filter(|w| w.ppid == p.pid && w.argv.first().is_some_and(|t| !t.contains(": cache ")))
            .map(|w| w.pid)
            .collect();
        let inst = instance(proc_root, p, workers, &mut builds);
        if let Some(e) = &inst.error {
            notices.push(Notice::new(
                NoticeCode::NginxConfigUnreadable,
                format!(
                    "{}: configuration not analysed: {e} (command line: {})",
                    inst.label(),
                    units::ellipsize(&p.argv.join(" "), 200)
                ),
            ));
        }
        out.push(inst);
    }
    (out, notices)
}

/// Build facts by the binary's (device, inode, size, mtime).
type BuildCache = BTreeMap<(u64, u64, u64, i64), BuildInfo>;

/// The build facts of a master's binary, scanned once per distinct file.
fn build_info(exe: &Path, cache: &mut BuildCache) -> BuildInfo {
    let Ok(f) = std::fs::File::open(exe) else {
        return BuildInfo::default();
    };
    let key = f
        .metadata()
        .ok()
        .map(|m| (m.dev(), m.ino(), m.size(), m.mtime()));
    if let Some(b) = key.and_then(|k| cache.get(&k)) {
        return b.clone();
    }
    let info = binary::scan(f).unwrap_or_default();
    if let Some(k) = key {
        cache.insert(k, info.clone());
    }
    info
}

/// One master: binary, version, configuration.
fn instance(
    proc_root: &Path,
    p: &ProcEntry,
    worker_pids: Vec<u32>,
    builds: &mut BuildCache,
) -> NginxInstance {
    let dir = proc_root.join(p.pid.to_string());
    let cmd = parse_command_line(&p.argv);
    let netns = crate::collect::netns::ns_link_inode(&dir.join("ns/net"))
        .ok()
        .flatten();
    let binary = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|b| b.display().to_string());
    let build = build_info(&dir.join("exe"), builds);
    // Same root as ours: read paths directly (and show them as they are); otherwise
    // through /proc/PID/root.
    let root_dir = dir.join("root");
    let same_root = match (std::fs::metadata(&root_dir), std::fs::metadata("/")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let root = if same_root {
        PathBuf::from("/")
    } else {
        root_dir
    };
    let cwd = if same_root {
        std::fs::read_link(dir.join("cwd")).unwrap_or_else(|_| PathBuf::from("/"))
    } else {
        PathBuf::from("/")
    };
    let (config_file, origin) = config_path(&cmd, &build, &cwd);
    // Without the right to look into the process (another user's nginx, not root), say
    // so instead of guessing paths that then fail to open.
    let denied = match std::fs::read_link(dir.join("root")) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
            "cannot look into pid {} ('{}': {e}): run as root to read its configuration",
            p.pid,
            dir.join("root").display()
        )),
        _ => None,
    };
    let fs = RootedFs::new(&root);
    let mut inst = NginxInstance {
        master_pid: Some(p.pid),
        worker_pids,
        netns,
        binary,
        version: build.version.clone(),
        root: root.display().to_string(),
        config_file: config_file.display().to_string(),
        origin,
        config: None,
        error: None,
    };
    match denied {
        Some(e) => inst.error = Some(e),
        None => read_config(&mut inst, &fs, &config_file, cmd.globals.as_deref()),
    }
    inst
}

/// The main configuration file as nginx finds it (`ngx_process_options()`): `-c` if
/// given, else the compiled-in path; a relative `-c` is relative to the prefix (`-p`,
/// else the compiled-in one), and a relative `-p` to the working directory.
pub fn config_path(cmd: &CommandLine, build: &BuildInfo, cwd: &Path) -> (PathBuf, ConfigOrigin) {
    let prefix = match &cmd.prefix {
        Some(p) => cwd.join(p),
        None => PathBuf::from(build.prefix()),
    };
    match &cmd.conf {
        Some(c) => (prefix.join(c), ConfigOrigin::CommandLine),
        None => {
            // A relative compiled-in path (the default `conf/nginx.conf`) is relative
            // to the prefix in force, `-p` included.
            let raw = build
                .configure_arg("--conf-path")
                .unwrap_or_else(|| "conf/nginx.conf".to_string());
            let compiled = if raw.starts_with('/') {
                PathBuf::from(raw)
            } else {
                prefix.join(raw)
            };
            (compiled, ConfigOrigin::CompiledIn)
        }
    }
}

/// Loads and extracts the configuration into `inst`, or records why it could not.
pub fn read_config(
    inst: &mut NginxInstance,
    fs: &dyn ConfigFs,
    path: &Path,
    globals: Option<&str>,
) {
    match load::load(fs, path, globals) {
        Ok(c) => inst.config = Some(extract::extract(&c)),
        Err(e) => inst.error = Some(e.to_string()),
    }
}

/// Puts each instance into the snapshot of its network namespace (the primary one when
/// its namespace is unknown or the run replays a capture); instances in namespaces that
/// were not read are left out. Notices go to the primary snapshot.
pub fn attach(host: &mut HostSnapshot, instances: Vec<NginxInstance>, notices: Vec<Notice>) {
    if host.namespaces.is_empty() {
        return;
    }
    let replay = host.namespaces.len() == 1
        && host.namespaces[0]
            .netns
            .as_ref()
            .is_none_or(|n| n.inode == 0);
    for inst in instances {
        let idx = if replay {
            Some(0)
        } else {
            match inst.netns {
                Some(ino) => host
                    .namespaces
                    .iter()
                    .position(|s| s.netns.as_ref().is_some_and(|n| n.inode == ino)),
                None => Some(0),
            }
        };
        if let Some(i) = idx {
            host.namespaces[i].nginx.push(inst);
        }
    }
    host.namespaces[0].missing.extend(notices);
}

/// Standard places of an nginx binary, for `lint` without a running master.
const BINARIES: &[&str] = &[
    "/usr/sbin/nginx",
    "/usr/local/sbin/nginx",
    "/usr/bin/nginx",
    "/usr/local/nginx/sbin/nginx",
    "/usr/local/openresty/nginx/sbin/nginx",
    "/usr/sbin/angie",
];

/// The nginx installed on this host (first of the standard paths): its path and build
/// facts.
pub fn installed() -> Option<(String, BuildInfo)> {
    BINARIES.iter().find_map(|b| {
        let f = std::fs::File::open(b).ok()?;
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        let info = binary::scan(f).ok()?;
        info.version.is_some().then(|| (b.to_string(), info))
    })
}

/// A configuration file to lint offline, with the version it is judged against.
pub fn lint_instance(
    file: &Path,
    origin: ConfigOrigin,
    version: Option<NginxVersion>,
    binary: Option<String>,
) -> NginxInstance {
    let fs = RootedFs::new("/");
    let mut inst = NginxInstance {
        master_pid: None,
        worker_pids: Vec::new(),
        netns: None,
        binary,
        version,
        root: "/".into(),
        config_file: file.display().to_string(),
        origin,
        config: None,
        error: None,
    };
    read_config(&mut inst, &fs, file, None);
    inst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn master_titles_and_plain_argv() {
        let c = parse_command_line(&argv(&[
            "nginx: master process /usr/sbin/nginx -c /tmp/t/nginx.conf -p /tmp/t -g daemon off; pid /tmp/t/x.pid;",
        ]));
        assert!(c.master_title);
        assert_eq!(c.program, "/usr/sbin/nginx");
        assert_eq!(c.conf.as_deref(), Some("/tmp/t/nginx.conf"));
        assert_eq!(c.prefix.as_deref(), Some("/tmp/t"));
        assert_eq!(c.globals.as_deref(), Some("daemon off; pid /tmp/t/x.pid;"));

        let c = parse_command_line(&argv(&["nginx: master process nginx -g daemon off;"]));
        assert_eq!((c.conf, c.globals.as_deref()), (None, Some("daemon off;")));

        let c = parse_command_line(&argv(&[
            "/usr/sbin/nginx",
            "-cconf/n.conf",
            "-g",
            "daemon off; user x;",
        ]));
        assert_eq!(c.conf.as_deref(), Some("conf/n.conf"));
        assert_eq!(c.globals.as_deref(), Some("daemon off; user x;"));
    }

    #[test]
    fn config_paths_the_way_nginx_finds_them() {
        let debian = BuildInfo {
            version: None,
            configure: Some("--prefix=/usr/share/nginx --conf-path=/etc/nginx/nginx.conf".into()),
        };
        let none = CommandLine::default();
        assert_eq!(
            config_path(&none, &debian, Path::new("/")),
            (
                PathBuf::from("/etc/nginx/nginx.conf"),
                ConfigOrigin::CompiledIn
            )
        );
        // A relative -c is relative to the prefix, not to the working directory.
        let rel = CommandLine {
            conf: Some("my.conf".into()),
            ..CommandLine::default()
        };
        assert_eq!(
            config_path(&rel, &debian, Path::new("/root")).0,
            PathBuf::from("/usr/share/nginx/my.conf")
        );
        let with_p = CommandLine {
            conf: Some("conf/a.conf".into()),
            prefix: Some("srv".into()),
            ..CommandLine::default()
        };
        assert_eq!(
            config_path(&with_p, &debian, Path::new("/opt")).0,
            PathBuf::from("/opt/srv/conf/a.conf")
        );
        // Default build, -p moves the compiled-in relative conf path with it.
        let plain = BuildInfo::default();
        let p_only = CommandLine {
            prefix: Some("/srv/ng".into()),
            ..CommandLine::default()
        };
        assert_eq!(
            config_path(&p_only, &plain, Path::new("/")).0,
            PathBuf::from("/srv/ng/conf/nginx.conf")
        );
        assert_eq!(
            config_path(&none, &plain, Path::new("/")).0,
            PathBuf::from("/usr/local/nginx/conf/nginx.conf")
        );
    }
}

#[cfg(test)]
mod discover_tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A /proc with one containerised nginx master, its worker and an unrelated
    /// process, laid out in a temp dir the way the kernel shows them.
    #[test]
    fn finds_a_master_in_a_container_and_reads_its_config_through_its_root() {
        let t = std::env::temp_dir().join(format!("tcpdoctor-nginx-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let proc_ = t.join("proc");
        let rootfs = t.join("rootfs");
        let mk = |p: &Path| std::fs::create_dir_all(p).expect("mkdir");
        mk(&rootfs.join("etc/nginx/conf.d"));
        mk(&rootfs.join("srv/sites"));
        std::fs::write(
            rootfs.join("etc/nginx/nginx.conf"),
            "events {}\nhttp {\n    include /etc/nginx/conf.d/*.conf;\n}\n",
        )
        .expect("write");
        std::fs::write(
            rootfs.join("srv/sites/app.conf"),
            "upstream app { server 10.1.0.7:8080; }\nserver { location / { proxy_pass http://app; } }\n",
        )
        .expect("write");
        // An absolute link inside the container: must resolve inside its root.
        symlink(
            "/srv/sites/app.conf",
            rootfs.join("etc/nginx/conf.d/app.conf"),
        )
        .expect("link");
        mk(&t.join("bin"));
        std::fs::write(
            t.join("bin/nginx"),
            b"\x7fELF\0nginx version: nginx/1.25.3\0configure arguments: --prefix=/etc/nginx --conf-path=/etc/nginx/nginx.conf\0",
        )
        .expect("write");
        let proc_entry = |pid: u32, stat: &str, cmdline: &[u8]| {
            let d = proc_.join(pid.to_string());
            mk(&d.join("ns"));
            std::fs::write(d.join("stat"), stat).expect("stat");
            std::fs::write(d.join("cmdline"), cmdline).expect("cmdline");
            symlink(t.join("bin/nginx"), d.join("exe")).expect("exe");
            symlink(&rootfs, d.join("root")).expect("root");
            symlink("net:[4026532999]", d.join("ns/net")).expect("ns");
        };
        proc_entry(
            100,
            "100 (nginx) S 1 100 100 0 -1",
            b"nginx: master process nginx -g daemon off;\0\0\0\0",
        );
        proc_entry(
            101,
            "101 (nginx) S 100 100 100 0 -1",
            b"nginx: worker process\0\0\0",
        );
        proc_entry(7, "7 (nginx_tool) S 1 7 7 0 -1", b"/bin/nginx_tool -c /x\0");
        std::fs::write(proc_.join("uptime"), "1 1").expect("a non-pid entry");

        let (found, notices) = discover(&proc_);
        assert!(notices.is_empty(), "{notices:?}");
        assert_eq!(found.len(), 1, "{found:#?}");
        let n = &found[0];
        assert_eq!(
            (n.master_pid, n.worker_pids.clone()),
            (Some(100), vec![101])
        );
        assert_eq!(n.netns, Some(4026532999));
        assert_eq!(n.version.as_ref().and_then(|v| v.core), Some((1, 25, 3)));
        assert_eq!(n.root, proc_.join("100/root").display().to_string());
        assert!(n.in_container());
        assert_eq!(
            (n.config_file.as_str(), n.origin),
            ("/etc/nginx/nginx.conf", ConfigOrigin::CompiledIn)
        );
        let cfg = n.config.as_ref().expect("config read through the root");
        assert_eq!(
            cfg.files,
            vec![
                "/etc/nginx/nginx.conf",
                "/etc/nginx/conf.d/app.conf",
                "(nginx -g)"
            ]
        );
        assert_eq!(cfg.upstreams[0].servers[0].endpoints[0].port, 8080);
        assert_eq!(
            cfg.servers[0].locations[0].at.file,
            "/etc/nginx/conf.d/app.conf"
        );
        let _ = std::fs::remove_dir_all(&t);
    }
}
