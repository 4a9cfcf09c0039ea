//! The kernel settings a host applies at every boot: the sysctl files, read in the order
//! and with the override rules of systemd-sysctl (sysctl.d(5), systemd 252), each
//! setting with the file and line that wins, compared with the live value in /proc/sys.
//!
//! The rules, as systemd 252 `src/sysctl/sysctl.c` and `conf_files_list_strv()` apply
//! them:
//! - `*.conf` files from `/etc/sysctl.d`, `/run/sysctl.d`, `/usr/local/lib/sysctl.d`,
//!   `/usr/lib/sysctl.d` (and `/lib/sysctl.d` where `/lib` is not `/usr/lib`); a file
//!   hides every file of the same name in the directories after it, and a link to
//!   /dev/null masks that name; hidden files (`.name`) are ignored.
//! - All files are sorted by file name, whatever their directory, and read in that order;
//!   a later assignment of a key replaces an earlier one.
//! - `/etc/sysctl.conf` is read by systemd only through `/etc/sysctl.d/99-sysctl.conf`, a
//!   link systemd installs to it, so it takes the place of that name in the order, not
//!   the end. procps `sysctl --system` reads the same files and then /etc/sysctl.conf once
//!   more, last; where that makes a key end differently it is noted on the setting.
//! - A line is `key = value` (whitespace around both trimmed); `#` or `;` first start a
//!   comment; a key may use `.` or `/` as separator (if the first separator is a dot,
//!   dots and slashes swap); a leading `-` ignores errors writing it; `-key` alone keeps a
//!   key out of every glob; a key with `*`, `?` or `[` is a glob over /proc/sys that skips
//!   keys set explicitly. Any other line is skipped with a warning, as systemd does, and
//!   counted here.
//!
//! Reads files only, under a root (the host's `/`, a captured host, a fixture tree).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::collect::nginx::fs::{ConfigFs, RootedFs};
use crate::model::nginx::SourceRef;
use crate::model::persisted::{LiveValue, OverriddenLine, PersistedSysctl, PersistedSysctls};
use crate::model::{Notice, NoticeCode};

/// The sysctl.d directories, highest priority first (`CONF_PATHS("sysctl.d")`).
pub const DIRS: &[&str] = &[
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
];

pub use crate::model::persisted::SYSCTL_CONF;

/// Environment variable naming the directory to read the host's configuration files
/// under instead of `/` (the host's root mounted elsewhere, or a test's fixture tree).
pub const HOST_ROOT_ENV: &str = "TCPDOCTOR_HOST_ROOT";

/// A configuration file read whole: systemd reads lines up to 1 MiB; nothing sane is
/// bigger.
pub const FILE_MAX: u64 = 4 * 1024 * 1024;
/// Entries looked at in one configuration directory.
pub const DIR_ENTRIES_MAX: usize = 4096;
/// Keys one glob may set.
const GLOB_MATCHES_MAX: usize = 10_000;
/// Skipped lines quoted in the notice and the data.
const EXAMPLES: usize = 3;
/// Symlinks followed to find the file a name points at.
const MAX_LINKS: usize = 40;

/// Where the host's configuration files are: `TCPDOCTOR_HOST_ROOT` when set; `/` on the
/// live host (`/proc`); a captured host's folder when it holds `etc/`. `Err` says why
/// there is none (a capture without `etc/`), for a notice.
pub fn host_config_root(proc_root: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(HOST_ROOT_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if proc_root == Path::new("/proc") {
        return Ok(PathBuf::from("/"));
    }
    // A replay reads its capture only, never this machine's /etc.
    if proc_root.join("etc").is_dir() {
        Ok(proc_root.to_path_buf())
    } else {
        Err(format!(
            "the capture '{}' has no etc/: the sysctl files and the services' open-files limits were not read (copy the host's /etc, /usr/lib/sysctl.d and /usr/lib/systemd/system into it to include them)",
            proc_root.display()
        ))
    }
}

/// A key as systemd stores it: a path below /proc/sys, components joined with `/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SysctlKey {
    pub path: String,
}

impl SysctlKey {
    /// Reads a key as a sysctl file spells it (`sysctl_normalize()`): if its first
    /// separator is a dot, dots and slashes swap; empty and `.` components go. A `..`
    /// component (which would leave /proc/sys) or an empty key is refused.
    pub fn parse(raw: &str) -> Result<SysctlKey, String> {
        let swap = raw
            .find(['.', '/'])
            .is_some_and(|i| raw.as_bytes()[i] == b'.');
        let path: String = if swap {
            raw.chars()
                .map(|c| match c {
                    '.' => '/',
                    '/' => '.',
                    c => c,
                })
                .collect()
        } else {
            raw.to_string()
        };
        let mut parts = Vec::new();
        for c in path.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(format!("key '{raw}' climbs out of /proc/sys")),
                c => parts.push(c),
            }
        }
        if parts.is_empty() {
            return Err(format!("empty key '{raw}'"));
        }
        Ok(SysctlKey {
            path: parts.join("/"),
        })
    }

    /// As `sysctl` prints it: components joined with dots, a dot inside a component
    /// shown as a slash (`net.ipv4.conf.enp3s0/200.forwarding`).
    pub fn dotted(&self) -> String {
        self.path
            .split('/')
            .map(|c| c.replace('.', "/"))
            .collect::<Vec<_>>()
            .join(".")
    }

    pub fn is_glob(&self) -> bool {
        self.path.contains(['*', '?', '['])
    }
}

/// One meaningful line of a sysctl file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysctlLine {
    /// `key = value`; `ignore_errors` for a leading `-`.
    Assign {
        key: SysctlKey,
        value: String,
        ignore_errors: bool,
    },
    /// `-key` without a value: the key is kept out of every glob.
    Exclude { key: SysctlKey },
}

/// Parses one line: `Ok(None)` for blank lines and comments, `Err` (with the reason) for
/// a line systemd-sysctl would skip with a warning.
pub fn parse_line(text: &str) -> Result<Option<SysctlLine>, String> {
    let p = text.trim();
    if p.is_empty() || p.starts_with(['#', ';']) {
        return Ok(None);
    }
    match p.split_once('=') {
        Some((key, value)) => {
            let (key, ignore_errors) = match key.strip_prefix('-') {
                Some(k) => (k, true),
                None => (key, false),
            };
            Ok(Some(SysctlLine::Assign {
                key: SysctlKey::parse(key.trim())?,
                value: value.trim().to_string(),
                ignore_errors,
            }))
        }
        None => match p.strip_prefix('-') {
            Some(k) => Ok(Some(SysctlLine::Exclude {
                key: SysctlKey::parse(k.trim())?,
            })),
            None => Err("not an assignment (key = value)".to_string()),
        },
    }
}

/// One file in the order systemd-sysctl reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlFile {
    /// The name it is sorted by (`99-sysctl.conf`).
    pub name: String,
    /// Where it is, as the host names it (`/etc/sysctl.d/99-sysctl.conf`).
    pub path: PathBuf,
    /// The file whose lines it holds, links followed (`/etc/sysctl.conf`); `None` when
    /// it is masked (a link to /dev/null).
    pub target: Option<PathBuf>,
}

/// Lists the files systemd-sysctl reads under `root`, in its order, plus the files
/// hidden by another of the same name (hidden, by).
pub fn list_files(root: &Path) -> (Vec<SysctlFile>, Vec<(String, String)>) {
    let mut by_name: BTreeMap<String, SysctlFile> = BTreeMap::new();
    let mut hidden = Vec::new();
    let mut seen_dirs: Vec<PathBuf> = Vec::new();
    for dir in DIRS {
        let Ok(host_dir) = RootedFs::new(root).resolve(Path::new(dir)) else {
            continue;
        };
        // /lib/sysctl.d is /usr/lib/sysctl.d on merged-/usr hosts: read it once.
        let real = if root == Path::new("/") {
            std::fs::canonicalize(&host_dir).unwrap_or(host_dir.clone())
        } else {
            host_dir.clone()
        };
        if seen_dirs.contains(&real) {
            continue;
        }
        seen_dirs.push(real);
        let Ok(entries) = std::fs::read_dir(&host_dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .take(DIR_ENTRIES_MAX)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".conf") && !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let path = Path::new(dir).join(&name);
            let target = link_target(root, &path);
            // A dangling link or a directory does not claim the name (systemd skips
            // what it cannot stat as a file); a link to /dev/null does.
            if let Some(t) = &target {
                let is_file = RootedFs::new(root)
                    .resolve(t)
                    .and_then(std::fs::metadata)
                    .is_ok_and(|m| m.is_file());
                if !is_file {
                    continue;
                }
            }
            if let Some(first) = by_name.get(&name) {
                hidden.push((
                    path.display().to_string(),
                    match &first.target {
                        Some(_) => first.path.display().to_string(),
                        None => format!("{} (a link to /dev/null)", first.path.display()),
                    },
                ));
                continue;
            }
            by_name.insert(name.clone(), SysctlFile { name, path, target });
        }
    }
    (by_name.into_values().collect(), hidden)
}

/// `path` (absolute, as the host names it) below `root`.
fn in_root(root: &Path, path: &Path) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(path.components().filter_map(|c| match c {
        Component::Normal(s) => Some(s),
        _ => None,
    }));
    p
}

/// The file `path` names once links are followed inside `root`, as the host names it;
/// `None` when it ends at /dev/null (masked). A dangling or looping link gives the last
/// name reached (reading it then fails, and says so).
pub fn link_target(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut cur = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        if cur == Path::new("/dev/null") {
            return None;
        }
        // The directory's own links resolve inside the root; the last component is
        // looked at without following it.
        let (Some(parent), Some(name)) = (cur.parent(), cur.file_name()) else {
            return Some(cur);
        };
        let Ok(dir) = RootedFs::new(root).resolve(parent) else {
            return Some(cur);
        };
        let host = dir.join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let Ok(t) = std::fs::read_link(&host) else {
                    return Some(cur);
                };
                let next = if t.is_absolute() {
                    t
                } else {
                    cur.parent().unwrap_or(Path::new("/")).join(t)
                };
                cur = lexical(&next);
            }
            _ => return Some(cur),
        }
    }
    Some(cur)
}

/// `..` and `.` removed without touching the disk (never above `/`).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
            _ => {}
        }
    }
    out
}

/// A parsed line with where it is.
#[derive(Debug, Clone)]
struct Entry {
    line: SysctlLine,
    at: SourceRef,
}

/// Reads and parses `files` in order; lines that do not parse and files that cannot be
/// read are counted in `skipped`.
fn read_entries(
    root: &Path,
    files: &[(PathBuf, PathBuf)],
    skipped: &mut Vec<String>,
) -> Vec<Entry> {
    let fs = RootedFs::new(root);
    let mut out = Vec::new();
    for (shown, target) in files {
        let bytes = match fs.read(target, FILE_MAX) {
            Ok(b) => b,
            Err(e) => {
                skipped.push(format!("cannot read '{}': {e}", shown.display()));
                continue;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        for (i, raw) in text.lines().enumerate() {
            let at = SourceRef {
                file: target.display().to_string(),
                line: u32::try_from(i + 1).unwrap_or(u32::MAX),
                text: raw.to_string(),
            };
            match parse_line(raw) {
                Ok(Some(line)) => out.push(Entry { line, at }),
                Ok(None) => {}
                Err(why) => skipped.push(format!("{at}: {why}: '{}'", raw.trim())),
            }
        }
    }
    out
}

/// A key's options as systemd-sysctl keeps them: insertion-ordered, a changed value
/// moving to the end (`parse_file()`: "Overwriting earlier assignment").
#[derive(Debug, Clone)]
struct Opt {
    key: SysctlKey,
    /// `None`: an exclusion (`-key`).
    value: Option<String>,
    ignore_errors: bool,
    /// Every line that set this key, in order (value, where).
    lines: Vec<(Option<String>, SourceRef)>,
}

fn apply_systemd(entries: &[Entry]) -> Vec<Opt> {
    let mut opts: Vec<Opt> = Vec::new();
    for e in entries {
        let (key, value, ignore) = match &e.line {
            SysctlLine::Assign {
                key,
                value,
                ignore_errors,
            } => (key, Some(value.clone()), *ignore_errors),
            SysctlLine::Exclude { key } => (key, None, false),
        };
        let mut lines = Vec::new();
        if let Some(i) = opts.iter().position(|o| &o.key == key) {
            if opts[i].value == value {
                opts[i].ignore_errors |= ignore;
                opts[i].lines.push((value, e.at.clone()));
                continue;
            }
            lines = opts.remove(i).lines;
        }
        lines.push((value.clone(), e.at.clone()));
        opts.push(Opt {
            key: key.clone(),
            value,
            ignore_errors: ignore,
            lines,
        });
    }
    opts
}

/// Where procps `sysctl --system` takes each plain key from: the last assignment, with
/// /etc/sysctl.conf read once more at the end.
fn apply_procps(entries: &[Entry], conf: &[Entry]) -> BTreeMap<SysctlKey, (String, SourceRef)> {
    let mut out = BTreeMap::new();
    for e in entries.iter().chain(conf) {
        if let SysctlLine::Assign { key, value, .. } = &e.line {
            if !key.is_glob() {
                out.insert(key.clone(), (value.clone(), e.at.clone()));
            }
        }
    }
    out
}

/// Whitespace runs as single spaces, as /proc/sys values are shown.
fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The value of a key in /proc/sys under `proc_root`.
pub fn live_value(proc_root: &Path, key: &SysctlKey) -> LiveValue {
    let path = proc_root.join("sys").join(&key.path);
    match std::fs::read(&path) {
        Ok(b) => LiveValue::Value(collapse(&String::from_utf8_lossy(&b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => LiveValue::Missing,
        Err(e) => LiveValue::Unreadable(e.to_string()),
    }
}

/// Everything the sysctl files under `root` apply at boot, with each setting's live value
/// from `proc_root/sys`, plus a notice when lines were skipped. Values are shown with
/// whitespace collapsed, as the kernel prints them back.
pub fn collect(root: &Path, proc_root: &Path) -> (PersistedSysctls, Vec<Notice>) {
    let (files, hidden) = list_files(root);
    let mut skipped = Vec::new();
    let readable: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .filter_map(|f| f.target.clone().map(|t| (f.path.clone(), t)))
        .collect();
    let entries = read_entries(root, &readable, &mut skipped);
    let opts = apply_systemd(&entries);
    // procps reads /etc/sysctl.conf again after everything (lines counted once above
    // when systemd reaches it through its link; not re-counted here).
    let conf_path = PathBuf::from(SYSCTL_CONF);
    let mut ignore = Vec::new();
    let conf_entries = read_entries(root, &[(conf_path.clone(), conf_path)], &mut ignore);
    let procps = apply_procps(&entries, &conf_entries);

    let explicit: Vec<&SysctlKey> = opts
        .iter()
        .filter(|o| !o.key.is_glob())
        .map(|o| &o.key)
        .collect();
    let mut settings: BTreeMap<String, PersistedSysctl> = BTreeMap::new();
    for o in &opts {
        let Some(raw) = &o.value else { continue };
        let value = &collapse(raw);
        let Some((_, at)) = o.lines.iter().rev().find(|(v, _)| v.as_ref() == Some(raw)) else {
            continue;
        };
        let earlier: Vec<OverriddenLine> = o
            .lines
            .iter()
            .filter(|(_, l)| l != at)
            .filter_map(|(v, l)| {
                v.as_deref().map(|value| OverriddenLine {
                    value: collapse(value),
                    at: l.clone(),
                })
            })
            .collect();
        if o.key.is_glob() {
            for path in glob_keys(proc_root, &o.key) {
                if explicit.iter().any(|k| k.path == path.path) {
                    continue;
                }
                let live = live_value(proc_root, &path);
                settings.insert(
                    path.dotted(),
                    PersistedSysctl {
                        key: path.dotted(),
                        value: value.clone(),
                        at: at.clone(),
                        ignore_errors: o.ignore_errors,
                        glob: Some(o.key.dotted()),
                        overridden: Vec::new(),
                        live,
                        procps_at: None,
                    },
                );
            }
            continue;
        }
        let procps_at = procps
            .get(&o.key)
            .filter(|(v, _)| v != raw)
            .map(|(v, l)| OverriddenLine {
                value: collapse(v),
                at: l.clone(),
            });
        settings.insert(
            o.key.dotted(),
            PersistedSysctl {
                key: o.key.dotted(),
                value: value.clone(),
                at: at.clone(),
                ignore_errors: o.ignore_errors,
                glob: None,
                overridden: earlier,
                live: live_value(proc_root, &o.key),
                procps_at,
            },
        );
    }

    let mut notices = Vec::new();
    if let Some(first) = skipped.first() {
        notices.push(Notice::new(
            NoticeCode::RecordsSkipped,
            format!(
                "sysctl files: {} skipped, as systemd-sysctl skips them (first: {first})",
                crate::model::units::count(skipped.len() as u64, "line", "lines")
            ),
        ));
    }
    let persisted = PersistedSysctls {
        files: readable
            .iter()
            .map(|(_, t)| t.display().to_string())
            .collect(),
        hidden,
        settings: settings.into_values().collect(),
        skipped: skipped.len() as u64,
        skipped_examples: skipped.into_iter().take(EXAMPLES).collect(),
    };
    (persisted, notices)
}

/// The live keys a glob matches, sorted, at most [`GLOB_MATCHES_MAX`].
fn glob_keys(proc_root: &Path, key: &SysctlKey) -> Vec<SysctlKey> {
    let fs = RootedFs::new(proc_root.join("sys"));
    let pattern = Path::new("/").join(&key.path);
    let Ok(found) = fs.glob(&pattern) else {
        return Vec::new();
    };
    found
        .into_iter()
        .filter(|p| {
            std::fs::metadata(in_root(&proc_root.join("sys"), p)).is_ok_and(|m| m.is_file())
        })
        .take(GLOB_MATCHES_MAX)
        .filter_map(|p| SysctlKey::parse(p.to_string_lossy().trim_start_matches('/')).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_dots_or_slashes_as_systemd_does() {
        let k = |s: &str| SysctlKey::parse(s).map(|k| (k.path.clone(), k.dotted()));
        let same = Ok((
            "net/ipv4/tcp_fin_timeout".to_string(),
            "net.ipv4.tcp_fin_timeout".to_string(),
        ));
        assert_eq!(k("net.ipv4.tcp_fin_timeout"), same);
        assert_eq!(k("net/ipv4/tcp_fin_timeout"), same);
        assert_eq!(k("/net//ipv4/./tcp_fin_timeout"), same);
        // sysctl.d(5): a VLAN interface named enp3s0.200 either way.
        let vlan = Ok((
            "net/ipv4/conf/enp3s0.200/forwarding".to_string(),
            "net.ipv4.conf.enp3s0/200.forwarding".to_string(),
        ));
        assert_eq!(k("net.ipv4.conf.enp3s0/200.forwarding"), vlan);
        assert_eq!(k("net/ipv4/conf/enp3s0.200/forwarding"), vlan);
        assert!(k("net/../../etc/passwd").is_err());
        assert!(k("").is_err());
        assert!(k("...").is_err());
    }

    #[test]
    fn lines_parse_like_systemd_sysctl() {
        let assign = |k: &str, v: &str, ig: bool| {
            Ok(Some(SysctlLine::Assign {
                key: SysctlKey::parse(k).expect("key"),
                value: v.into(),
                ignore_errors: ig,
            }))
        };
        assert_eq!(
            parse_line("  net.ipv4.tcp_fin_timeout=15  "),
            assign("net.ipv4.tcp_fin_timeout", "15", false)
        );
        assert_eq!(
            parse_line("net.ipv4.ip_local_port_range =\t1024   65000 "),
            assign("net.ipv4.ip_local_port_range", "1024   65000", false)
        );
        assert_eq!(
            parse_line("-net.ipv4.tcp_tw_recycle = 1"),
            assign("net.ipv4.tcp_tw_recycle", "1", true)
        );
        assert_eq!(
            parse_line("kernel.core_pattern = |/bin/x %p = %e"),
            assign("kernel.core_pattern", "|/bin/x %p = %e", false)
        );
        assert_eq!(parse_line("key ="), assign("key", "", false));
        assert_eq!(
            parse_line("-net.ipv4.conf.all.rp_filter"),
            Ok(Some(SysctlLine::Exclude {
                key: SysctlKey::parse("net.ipv4.conf.all.rp_filter").expect("key")
            }))
        );
        for blank in ["", "   ", "# c = 1", "; c = 1", "  # indented"] {
            assert_eq!(parse_line(blank), Ok(None), "{blank:?}");
        }
        assert!(parse_line("net.ipv4.tcp_fin_timeout 15").is_err());
        assert!(parse_line("= 5").is_err());
        assert!(parse_line("net/../../x = 1").is_err());
    }

    #[test]
    fn same_value_merges_and_a_change_moves_to_the_end() {
        let e = |file: &str, line: u32, text: &str| Entry {
            line: parse_line(text).expect("ok").expect("line"),
            at: SourceRef {
                file: file.into(),
                line,
                text: text.into(),
            },
        };
        let opts = apply_systemd(&[
            e("/a", 1, "x = 1"),
            e("/a", 2, "y = 1"),
            e("/b", 1, "x = 1"),
            e("/c", 1, "y = 2"),
            e("/d", 1, "y = 2"),
        ]);
        let order: Vec<(&str, Option<&str>, usize)> = opts
            .iter()
            .map(|o| (o.key.path.as_str(), o.value.as_deref(), o.lines.len()))
            .collect();
        assert_eq!(order, vec![("x", Some("1"), 2), ("y", Some("2"), 3)]);
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/persisted")
            .join(name)
    }

    fn setting<'a>(p: &'a PersistedSysctls, key: &str) -> &'a PersistedSysctl {
        p.get(key)
            .unwrap_or_else(|| panic!("{key} not set: {:#?}", p.settings))
    }

    /// persisted/overrides: every override rule of sysctl.d(5) at once (see its NOTE.md).
    #[test]
    fn override_order_follows_systemd_sysctl() {
        let root = fixture("overrides");
        let (p, notices) = collect(&root, &root);
        // Name order across directories; /etc/sysctl.conf at the place of its link's
        // name; the masked name and hidden files absent.
        assert_eq!(
            p.files,
            vec![
                "/etc/sysctl.d/10-network.conf",
                "/usr/lib/sysctl.d/30-rp.conf",
                "/usr/lib/sysctl.d/50-default.conf",
                "/run/sysctl.d/60-runtime.conf",
                "/usr/local/lib/sysctl.d/70-local.conf",
                "/etc/sysctl.conf",
                "/etc/sysctl.d/99-zz-late.conf",
            ]
        );
        assert_eq!(
            p.hidden,
            vec![
                (
                    "/usr/lib/sysctl.d/10-network.conf".to_string(),
                    "/etc/sysctl.d/10-network.conf".to_string()
                ),
                (
                    "/usr/lib/sysctl.d/20-masked.conf".to_string(),
                    "/etc/sysctl.d/20-masked.conf (a link to /dev/null)".to_string()
                ),
            ]
        );
        // The later file wins; earlier lines are kept as overridden; procps, which reads
        // /etc/sysctl.conf again last, would end elsewhere.
        let fin = setting(&p, "net.ipv4.tcp_fin_timeout");
        assert_eq!(
            (fin.value.as_str(), fin.at.to_string()),
            ("45", "/etc/sysctl.d/99-zz-late.conf:2".to_string())
        );
        let earlier: Vec<(String, String)> = fin
            .overridden
            .iter()
            .map(|o| (o.value.clone(), o.at.to_string()))
            .collect();
        assert_eq!(
            earlier,
            vec![
                (
                    "30".to_string(),
                    "/usr/lib/sysctl.d/50-default.conf:1".to_string()
                ),
                (
                    "20".to_string(),
                    "/usr/local/lib/sysctl.d/70-local.conf:1".to_string()
                ),
                ("15".to_string(), "/etc/sysctl.conf:3".to_string()),
            ]
        );
        let procps = fin.procps_at.as_ref().expect("procps differs");
        assert_eq!((procps.value.as_str(), procps.at.line), ("15", 3));
        assert_eq!(fin.live, LiveValue::Value("60".into()));
        assert!(fin.differs_from_live());
        // Slashes in the key; `=` without spaces.
        let tw = setting(&p, "net.ipv4.tcp_max_tw_buckets");
        assert_eq!((tw.value.as_str(), tw.at.line), ("5000", 2));
        assert_eq!(setting(&p, "net.core.somaxconn").value, "1024");
        // The hidden /usr/lib/sysctl.d/10-network.conf sets nothing.
        assert_eq!(setting(&p, "net.ipv4.tcp_syncookies").value, "0");
        assert!(p.get("net.ipv4.tcp_timestamps").is_none());
        // Keys this kernel lacks; a leading '-'.
        let recycle = setting(&p, "net.ipv4.tcp_tw_recycle");
        assert_eq!(
            (recycle.live.clone(), recycle.at.to_string()),
            (LiveValue::Missing, "/etc/sysctl.conf:2".to_string())
        );
        assert!(!recycle.ignore_errors);
        assert!(setting(&p, "net.ipv4.tcp_tw_timeout").ignore_errors);
        // A tab in the value: shown collapsed, equal to the same range read back.
        let range = setting(&p, "net.ipv4.ip_local_port_range");
        assert_eq!(range.value, "1024 65000");
        assert_eq!(range.at.text, "net.ipv4.ip_local_port_range = 1024\t65000");
        // The glob: `all` excluded by `-key`, `lo` set explicitly, `default` from it.
        let d = setting(&p, "net.ipv4.conf.default.rp_filter");
        assert_eq!(
            (d.value.as_str(), d.glob.as_deref()),
            ("2", Some("net.ipv4.conf.*.rp_filter"))
        );
        assert!(p.get("net.ipv4.conf.all.rp_filter").is_none());
        assert_eq!(setting(&p, "net.ipv4.conf.lo.rp_filter").glob, None);
        // A dot inside an interface name, slashes first.
        assert_eq!(
            setting(&p, "net.ipv4.conf.eth0/200.forwarding").live,
            LiveValue::Missing
        );
        // The malformed line: skipped, counted, named.
        assert_eq!(p.skipped, 1);
        assert!(
            p.skipped_examples[0].starts_with("/run/sysctl.d/60-runtime.conf:2: not an assignment"),
            "{:?}",
            p.skipped_examples
        );
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].code, NoticeCode::RecordsSkipped);
    }

    /// persisted/debian12: the files Debian 12 installs, with a merged /usr (`lib` links
    /// to `usr/lib`, read once) and live values from a VM that differ from them.
    #[test]
    fn debian12_files_apply_in_name_order() {
        let root = fixture("debian12");
        let (p, notices) = collect(&root, &root);
        assert_eq!(
            p.files,
            vec![
                "/usr/lib/sysctl.d/50-pid-max.conf",
                "/usr/lib/sysctl.d/99-protect-links.conf",
                "/etc/sysctl.conf",
            ]
        );
        assert!(p.hidden.is_empty(), "{:?}", p.hidden);
        assert!(notices.is_empty());
        let keys: Vec<(&str, &str, bool)> = p
            .settings
            .iter()
            .map(|s| (s.key.as_str(), s.value.as_str(), s.differs_from_live()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("fs.protected_fifos", "1", true),
                ("fs.protected_hardlinks", "1", false),
                ("fs.protected_regular", "2", true),
                ("fs.protected_symlinks", "1", true),
                ("kernel.pid_max", "4194304", true),
            ]
        );
        assert_eq!(
            setting(&p, "kernel.pid_max").at.to_string(),
            "/usr/lib/sysctl.d/50-pid-max.conf:16"
        );
    }

    #[test]
    fn missing_or_empty_trees_read_nothing() {
        let (p, n) = collect(
            Path::new("/nonexistent/tcpdoctor"),
            Path::new("/nonexistent/proc"),
        );
        assert!(p.files.is_empty() && p.settings.is_empty() && n.is_empty());
    }

    #[test]
    fn a_replay_without_etc_is_named_and_never_reads_the_live_etc() {
        let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/netns_mixed");
        if std::env::var_os(HOST_ROOT_ENV).is_none() {
            let err = host_config_root(&capture).expect_err("no etc/ in it");
            assert!(err.contains("has no etc/"), "{err}");
            assert_eq!(
                host_config_root(&fixture("overrides")),
                Ok(fixture("overrides"))
            );
            assert_eq!(host_config_root(Path::new("/proc")), Ok(PathBuf::from("/")));
        }
    }

    /// Whatever sits in the directories, nothing panics or hangs: a directory, a FIFO
    /// and a looping link named *.conf are not configuration; a dangling link claims no
    /// name; bytes that are not UTF-8 or lines that are not assignments are counted.
    #[test]
    fn odd_files_and_malformed_bytes_are_skipped_and_counted() {
        let tmp = std::env::temp_dir().join(format!("tcpdoctor-sysctl-odd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let d = tmp.join("etc/sysctl.d");
        std::fs::create_dir_all(d.join("a.conf")).expect("dir");
        let fifo =
            std::ffi::CString::new(d.join("b.conf").to_string_lossy().as_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::write(
            d.join("c.conf"),
            b"net.core.somaxconn = 1\xff\n\x00\n=\n-\n-=\n[x\nnet/../../etc = 1\nnet.ipv4.tcp_fin_timeout\n",
        )
        .expect("write");
        std::os::unix::fs::symlink("nowhere.conf", d.join("d.conf")).expect("link");
        std::os::unix::fs::symlink("e.conf", d.join("e.conf")).expect("loop");
        let (p, notices) = collect(&tmp, &tmp.join("proc"));
        let _ = std::fs::remove_dir_all(&tmp);
        assert_eq!(p.files, vec!["/etc/sysctl.d/c.conf"]);
        // `\xff` is read as U+FFFD, so that line still sets a value (systemd would
        // write those bytes); the other seven lines are refused.
        assert_eq!(p.settings.len(), 1);
        assert_eq!(p.skipped, 7, "{:?}", p.skipped_examples);
        assert_eq!(notices.len(), 1);
    }
}
