//! Where a process's open-files limit (RLIMIT_NOFILE) is set, read from the host's files
//! alone (no running systemd needed): the systemd unit the process runs in, found from
//! `/proc/PID/cgroup`, with its drop-ins; `DefaultLimitNOFILE=` of system.conf; the
//! `nofile` lines of /etc/security/limits.conf and limits.d for a PAM login session; a
//! container runtime's default; or the parent shell.
//!
//! The rules followed (systemd 252: systemd.unit(5), systemd.exec(5),
//! systemd-system.conf(5); Linux-PAM 1.5.2: limits.conf(5), pam_limits(8)):
//! - A unit file is the first `NAME` in the system unit path (`/etc/systemd/system.control`
//!   ... `/etc/systemd/system`, `/run/systemd/system`, `/usr/local/lib/systemd/system`,
//!   `/usr/lib/systemd/system`, `/lib/systemd/system` ...), an instance `a@b.service`
//!   falling back to its template `a@.service`; a link to /dev/null masks it.
//! - Drop-ins are the `*.conf` files of `NAME.d/`, of the template's `.d/`, of the
//!   dash-truncated prefixes (`foo-.service.d/` for `foo-bar.service`) and of
//!   `service.d/`, in every unit directory; a file name seen in an earlier directory
//!   hides the same name later (`/etc` before `/run` before `/usr/lib`; the more specific
//!   directory first within one), and all are applied in file-name order after the unit
//!   file. The last `LimitNOFILE=` in `[Service]` wins; an empty one resets it.
//! - Without one, `DefaultLimitNOFILE=` of `[Manager]` in /etc/systemd/system.conf and
//!   `system.conf.d/*.conf` applies; without that, systemd's 1024:524288 (since 240).
//! - `LimitNOFILE=N` sets soft and hard; `S:H` each; `infinity` is unlimited, which
//!   systemd lowers to fs.nr_open, the most the kernel accepts.
//! - limits.conf and then limits.d/*.conf (by name) apply to PAM login sessions only
//!   (`session-N.scope`): a line for the user by name (or uid range) wins over one for a
//!   group (`@group`), which wins over `*`; among equals the later line wins; root gets
//!   only lines naming root. A `nofile` of `unlimited` becomes fs.nr_open.
//! - docker: `default-ulimits` in /etc/docker/daemon.json; without it a container keeps
//!   the limit of the containerd (or dockerd) service its shim descends from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::collect::cgroup::{cgroup_paths, container_from_path};
use crate::collect::nginx::fs::{ConfigFs, RootedFs};
use crate::collect::procfs::limits;
use crate::collect::sysctl_files::{self, link_target, DIR_ENTRIES_MAX, FILE_MAX};
use crate::model::nginx::SourceRef;
use crate::model::persisted::{NofileOrigin, NofilePair, NofileSource, ParentFacts, UnitFiles};
use crate::model::{HostSnapshot, Limit, Notice, NoticeCode, ProcessFacts, Runtime};

/// The system manager's unit search path, highest priority first (systemd.unit(5),
/// "Load path when running in system mode"; the `.attached` directories hold portable
/// services; `/lib/systemd/system` is Debian's name for the distribution's units).
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/run/systemd/generator.early",
    "/etc/systemd/system",
    "/etc/systemd/system.attached",
    "/run/systemd/system",
    "/run/systemd/system.attached",
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
    "/run/systemd/generator.late",
];

/// The manager's configuration and its drop-in directories (systemd-system.conf(5)).
pub const SYSTEM_CONF: &str = "/etc/systemd/system.conf";
const SYSTEM_CONF_DIRS: &[&str] = &[
    "/etc/systemd/system.conf.d",
    "/run/systemd/system.conf.d",
    "/usr/local/lib/systemd/system.conf.d",
    "/usr/lib/systemd/system.conf.d",
];

pub const LIMITS_CONF: &str = "/etc/security/limits.conf";
pub const LIMITS_D: &str = "/etc/security/limits.d";
pub const DOCKER_DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// systemd's own default since 240: soft 1024 for programs that still use select(),
/// hard 512 Ki (`HIGH_RLIMIT_NOFILE`).
pub const SYSTEMD_DEFAULT_NOFILE: NofilePair = NofilePair {
    soft: Limit::Value(1024),
    hard: Limit::Value(524_288),
};

/// Where a process's limit is looked up from: at least this share (%) of its soft limit
/// in use. Below it fd_exhaustion cannot fire with any sane threshold, and looking up
/// every process of a big host (four small reads each) would cost more than the check.
pub const ORIGIN_FROM_PCT: u64 = 25;

/// Names of shells: a process whose parent is one of these got its limit from it.
const SHELLS: &[&str] = &[
    "bash", "sh", "dash", "zsh", "ksh", "mksh", "fish", "tcsh", "csh", "ash", "busybox",
];

/// One `Key=Value` of an INI-style systemd file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniEntry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub at: SourceRef,
}

/// Parses a unit or system.conf file (systemd's `config_parse()`): `[Section]` headers,
/// `Key=Value` with whitespace around both trimmed, `#` and `;` comment lines, a
/// trailing backslash continuing the line (comment lines inside are dropped). Lines
/// that are none of these are counted in `bad` and skipped.
pub fn parse_ini(text: &str, file: &str, bad: &mut Vec<String>) -> Vec<IniEntry> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<(String, SourceRef)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let t = raw.trim();
        if let Some((mut acc, at)) = pending.take() {
            if t.starts_with(['#', ';']) {
                pending = Some((acc, at));
                continue;
            }
            match t.strip_suffix('\\') {
                Some(more) => {
                    acc.push(' ');
                    acc.push_str(more.trim());
                    pending = Some((acc, at));
                }
                None => {
                    acc.push(' ');
                    acc.push_str(t);
                    push_entry(&mut out, &section, &acc, at, bad);
                }
            }
            continue;
        }
        if t.is_empty() || t.starts_with(['#', ';']) {
            continue;
        }
        let at = SourceRef {
            file: file.to_string(),
            line: line_no,
            text: raw.to_string(),
        };
        if t.starts_with('[') {
            match t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                Some(name) => section = name.to_string(),
                None => bad.push(format!("{at}: a section header without ']'")),
            }
            continue;
        }
        match t.strip_suffix('\\') {
            Some(start) => pending = Some((start.trim_end().to_string(), at)),
            None => push_entry(&mut out, &section, t, at, bad),
        }
    }
    if let Some((acc, at)) = pending {
        push_entry(&mut out, &section, &acc, at, bad);
    }
    out
}

fn push_entry(
    out: &mut Vec<IniEntry>,
    section: &str,
    text: &str,
    at: SourceRef,
    bad: &mut Vec<String>,
) {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => out.push(IniEntry {
            section: section.to_string(),
            key: k.trim().to_string(),
            value: v.trim().to_string(),
            at,
        }),
        _ => bad.push(format!("{at}: not a Key=Value line")),
    }
}

/// One limit value as systemd writes them: a number or `infinity`.
fn parse_systemd_limit(s: &str) -> Option<Limit> {
    match s.trim() {
        "infinity" => Some(Limit::Unlimited),
        v => v.parse().ok().map(Limit::Value),
    }
}

/// `LimitNOFILE=` / `DefaultLimitNOFILE=` (`rlimit_parse()`): `N` for both, `S:H` each.
pub fn parse_limit_nofile(value: &str) -> Option<NofilePair> {
    match value.split_once(':') {
        Some((s, h)) => Some(NofilePair {
            soft: parse_systemd_limit(s)?,
            hard: parse_systemd_limit(h)?,
        }),
        None => {
            let v = parse_systemd_limit(value)?;
            Some(NofilePair { soft: v, hard: v })
        }
    }
}

/// The last `KEY=` of `section` in `entries`, in order: the value, where, and the earlier
/// lines it overrides. An empty value resets to nothing (`None` value).
fn last_setting<'a>(
    entries: impl Iterator<Item = &'a IniEntry>,
    section: &str,
    key: &str,
) -> Option<(Option<NofilePair>, SourceRef, Vec<SourceRef>)> {
    let mut found: Option<(Option<NofilePair>, SourceRef)> = None;
    let mut earlier = Vec::new();
    for e in entries.filter(|e| e.section == section && e.key == key) {
        if let Some((_, at)) = found.take() {
            earlier.push(at);
        }
        let v = if e.value.is_empty() {
            None
        } else {
            parse_limit_nofile(&e.value)
        };
        found = Some((v, e.at.clone()));
    }
    found.map(|(v, at)| (v, at, earlier))
}

/// A file read through the root: its text, or `None` (missing or unreadable: recorded).
fn read_text(fs: &RootedFs, path: &Path, bad: &mut Vec<String>) -> Option<String> {
    match fs.read(path, FILE_MAX) {
        Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            bad.push(format!("cannot read '{}': {e}", path.display()));
            None
        }
    }
}

/// `*.conf` names in `dirs` (highest priority first), the first of each name winning,
/// sorted by name: (shown path, file to read or `None` when masked).
fn conf_dir_files(root: &Path, dirs: &[PathBuf]) -> Vec<(PathBuf, Option<PathBuf>)> {
    let fs = RootedFs::new(root);
    let mut by_name: BTreeMap<String, (PathBuf, Option<PathBuf>)> = BTreeMap::new();
    for dir in dirs {
        let Ok(host) = fs.resolve(dir) else { continue };
        let Ok(rd) = std::fs::read_dir(&host) else {
            continue;
        };
        for e in rd.flatten().take(DIR_ENTRIES_MAX) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if !name.ends_with(".conf") || name.starts_with('.') || by_name.contains_key(&name) {
                continue;
            }
            let path = dir.join(&name);
            let target = link_target(root, &path);
            if let Some(t) = &target {
                if !fs
                    .resolve(t)
                    .and_then(std::fs::metadata)
                    .is_ok_and(|m| m.is_file())
                {
                    continue;
                }
            }
            by_name.insert(name, (path, target));
        }
    }
    by_name.into_values().collect()
}

/// A unit's limit as its files set it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitLimit {
    pub files: UnitFiles,
    /// The effective `LimitNOFILE=` (value, line, earlier lines); `None` when none is set
    /// or the last one resets it.
    pub setting: Option<(NofilePair, SourceRef, Vec<SourceRef>)>,
    /// The unit is masked (a link to /dev/null).
    pub masked: bool,
}

/// Reads unit `name` (`nginx.service`) and its drop-ins under `root`.
pub fn read_unit(root: &Path, name: &str, bad: &mut Vec<String>) -> UnitLimit {
    let fs = RootedFs::new(root);
    let template = name.split_once('@').and_then(|(pre, post)| {
        let suffix = post.rsplit_once('.').map(|(_, s)| s)?;
        (!post.starts_with('.')).then(|| format!("{pre}@.{suffix}"))
    });
    let mut masked = false;
    let mut file: Option<PathBuf> = None;
    'search: for candidate in std::iter::once(name.to_string()).chain(template.clone()) {
        for dir in UNIT_DIRS {
            let path = Path::new(dir).join(&candidate);
            match link_target(root, &path) {
                None => {
                    masked = true;
                    break 'search;
                }
                Some(t) => {
                    if fs
                        .resolve(&t)
                        .and_then(std::fs::metadata)
                        .is_ok_and(|m| m.is_file())
                    {
                        file = Some(t);
                        break 'search;
                    }
                }
            }
        }
    }
    // Drop-in directories: per unit directory, the most specific name first.
    let unit_type = name.rsplit_once('.').map_or("service", |(_, t)| t);
    let mut names = vec![name.to_string()];
    names.extend(template.clone());
    // foo-bar-baz.service -> foo-bar-.service, foo-.service (of the name before `@`).
    let base = name.split('@').next().unwrap_or(name);
    let stem = base.strip_suffix(&format!(".{unit_type}")).unwrap_or(base);
    let mut cut = stem;
    while let Some(i) = cut[..cut.len().saturating_sub(1)].rfind('-') {
        names.push(format!("{}.{unit_type}", &stem[..=i]));
        cut = &stem[..i];
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in UNIT_DIRS {
        for n in &names {
            dirs.push(Path::new(d).join(format!("{n}.d")));
        }
    }
    for d in UNIT_DIRS {
        dirs.push(Path::new(d).join(format!("{unit_type}.d")));
    }
    let dropins = conf_dir_files(root, &dirs);

    let mut entries: Vec<IniEntry> = Vec::new();
    if let Some(f) = &file {
        if let Some(text) = read_text(&fs, f, bad) {
            entries.extend(parse_ini(&text, &f.display().to_string(), bad));
        }
    }
    for (_, target) in &dropins {
        if let Some(t) = target {
            if let Some(text) = read_text(&fs, t, bad) {
                entries.extend(parse_ini(&text, &t.display().to_string(), bad));
            }
        }
    }
    let section = section_of(unit_type);
    let setting = last_setting(entries.iter(), section, "LimitNOFILE")
        .and_then(|(v, at, earlier)| v.map(|v| (v, at, earlier)));
    UnitLimit {
        files: UnitFiles {
            name: name.to_string(),
            file: file.map(|f| f.display().to_string()),
            dropins: dropins
                .iter()
                .filter_map(|(p, t)| t.as_ref().map(|_| p.display().to_string()))
                .collect(),
        },
        setting,
        masked,
    }
}

/// The section that holds the execution settings of a unit type.
fn section_of(unit_type: &str) -> &'static str {
    match unit_type {
        "socket" => "Socket",
        "mount" => "Mount",
        "swap" => "Swap",
        _ => "Service",
    }
}

/// `DefaultLimitNOFILE=` from system.conf and its drop-ins: (value, line, earlier).
pub fn read_manager_default(
    root: &Path,
    bad: &mut Vec<String>,
) -> Option<(NofilePair, SourceRef, Vec<SourceRef>)> {
    let fs = RootedFs::new(root);
    let mut entries = Vec::new();
    if let Some(t) = read_text(&fs, Path::new(SYSTEM_CONF), bad) {
        entries.extend(parse_ini(&t, SYSTEM_CONF, bad));
    }
    let dirs: Vec<PathBuf> = SYSTEM_CONF_DIRS.iter().map(PathBuf::from).collect();
    for (_, target) in conf_dir_files(root, &dirs) {
        if let Some(t) = target {
            if let Some(text) = read_text(&fs, &t, bad) {
                entries.extend(parse_ini(&text, &t.display().to_string(), bad));
            }
        }
    }
    last_setting(entries.iter(), "Manager", "DefaultLimitNOFILE")
        .and_then(|(v, at, earlier)| v.map(|v| (v, at, earlier)))
}

/// Which lines of limits.conf a domain names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    User(String),
    Group(String),
    All,
    /// `min:max`, `:uid`, `min:` (uid ranges; count as the user's own line).
    UidRange(Option<u32>, Option<u32>),
    /// `@min:max`, `@:gid`, `@min:` (gid ranges: the primary group; `@:gid` any group).
    GidRange(Option<u32>, Option<u32>),
    /// `%...`: maxlogins only, never a nofile limit.
    Logins,
}

/// Which limit a line sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PamKind {
    Soft,
    Hard,
    Both,
}

/// One `nofile` line of limits.conf or limits.d.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PamLine {
    pub domain: Domain,
    pub kind: PamKind,
    pub value: Limit,
    pub at: SourceRef,
}

fn parse_range(s: &str) -> Option<(Option<u32>, Option<u32>)> {
    let (a, b) = s.split_once(':')?;
    let min = if a.is_empty() {
        None
    } else {
        Some(a.parse().ok()?)
    };
    let max = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    match (min, max) {
        (None, None) => None,
        // `:N` is exactly N.
        (None, Some(n)) => Some((Some(n), Some(n))),
        r => Some(r),
    }
}

/// The `nofile` lines of one limits file (pam_limits' `parse_config_file()`): `#` starts
/// a comment anywhere; fields are domain, type, item, value. Lines for other items are
/// left out; malformed ones are counted in `bad`.
pub fn parse_limits(text: &str, file: &str, bad: &mut Vec<String>) -> Vec<PamLine> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let body = raw.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let at = SourceRef {
            file: file.to_string(),
            line: u32::try_from(i + 1).unwrap_or(u32::MAX),
            text: raw.to_string(),
        };
        let f: Vec<&str> = body.split_whitespace().collect();
        if f.len() == 2 && f[1] == "-" {
            // `<domain> -`: no limits at all for that domain; not a nofile line.
            continue;
        }
        if f.len() < 4 {
            bad.push(format!("{at}: not 'domain type item value'"));
            continue;
        }
        if !f[2].eq_ignore_ascii_case("nofile") {
            continue;
        }
        let kind = match f[1].to_ascii_lowercase().as_str() {
            "soft" => PamKind::Soft,
            "hard" => PamKind::Hard,
            "-" => PamKind::Both,
            other => {
                bad.push(format!("{at}: unknown limit type '{other}'"));
                continue;
            }
        };
        let v = f[3..].join(" ").to_ascii_lowercase();
        let value = match v.as_str() {
            "-1" | "unlimited" | "infinity" | "-" => Limit::Unlimited,
            n => match n.parse() {
                Ok(n) => Limit::Value(n),
                Err(_) => {
                    bad.push(format!("{at}: nofile value '{n}' is not a number"));
                    continue;
                }
            },
        };
        let d = f[0];
        let domain = if d == "*" {
            Domain::All
        } else if d.starts_with('%') {
            Domain::Logins
        } else if let Some(g) = d.strip_prefix('@') {
            match parse_range(g) {
                Some((a, b)) => Domain::GidRange(a, b),
                None if g.contains(':') => {
                    bad.push(format!("{at}: invalid gid range '{d}'"));
                    continue;
                }
                None => Domain::Group(g.to_string()),
            }
        } else if d.contains(':') {
            match parse_range(d) {
                Some((a, b)) => Domain::UidRange(a, b),
                None => {
                    bad.push(format!("{at}: invalid uid range '{d}'"));
                    continue;
                }
            }
        } else {
            Domain::User(d.to_string())
        };
        out.push(PamLine {
            domain,
            kind,
            value,
            at,
        });
    }
    out
}

/// A user as /etc/passwd and /etc/group describe them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Names of every group the user is in (primary included).
    pub groups: Vec<String>,
    pub gids: Vec<u32>,
}

/// One side (soft or hard) of a PAM limit and the line that sets it.
pub type PamSide = Option<(Limit, SourceRef)>;

/// The limit pam_limits gives `user`'s sessions: soft and hard, each with its line.
/// `None` when no line applies (the session keeps the login daemon's limit).
pub fn pam_limit_for(lines: &[PamLine], user: &Account) -> Option<(PamSide, PamSide)> {
    // pam_limits' sources: the user's own line 0, a group 1, `*` 4; a line applies
    // when its source is at most the one that set the value (`process_limit()`).
    let mut soft: Option<(u8, Limit, SourceRef)> = None;
    let mut hard: Option<(u8, Limit, SourceRef)> = None;
    let in_range = |v: u32, (a, b): (Option<u32>, Option<u32>)| {
        a.is_none_or(|a| v >= a) && b.is_none_or(|b| v <= b)
    };
    for l in lines {
        let source = match &l.domain {
            Domain::User(n) if *n == user.name => 0,
            Domain::UidRange(a, b) if in_range(user.uid, (*a, *b)) => 0,
            // limits.conf(5): group and wildcard lines do not apply to root.
            _ if user.uid == 0 => continue,
            Domain::Group(g) if user.groups.contains(g) => 1,
            Domain::GidRange(a, b) if a == b => {
                if a.is_some_and(|g| user.gids.contains(&g)) {
                    1
                } else {
                    continue;
                }
            }
            Domain::GidRange(a, b) if in_range(user.gid, (*a, *b)) => 1,
            Domain::All => 4,
            _ => continue,
        };
        let set = |slot: &mut Option<(u8, Limit, SourceRef)>| {
            if slot.as_ref().is_none_or(|(s, _, _)| source <= *s) {
                *slot = Some((source, l.value, l.at.clone()));
            }
        };
        if matches!(l.kind, PamKind::Soft | PamKind::Both) {
            set(&mut soft);
        }
        if matches!(l.kind, PamKind::Hard | PamKind::Both) {
            set(&mut hard);
        }
    }
    if soft.is_none() && hard.is_none() {
        return None;
    }
    let strip = |x: Option<(u8, Limit, SourceRef)>| x.map(|(_, v, at)| (v, at));
    Some((strip(soft), strip(hard)))
}

/// Users from passwd and group files (`name:x:uid:gid:...`, `name:x:gid:member,...`).
pub fn parse_accounts(passwd: &str, group: &str) -> Vec<Account> {
    let groups: Vec<(String, u32, Vec<String>)> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then(|| {
                Some((
                    f[0].to_string(),
                    f[2].parse().ok()?,
                    f[3].split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                ))
            })?
        })
        .collect();
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let (name, uid, gid) = (f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?);
            let mine: Vec<&(String, u32, Vec<String>)> = groups
                .iter()
                .filter(|(_, g, members)| *g == gid || members.contains(&name))
                .collect();
            Some(Account {
                groups: mine.iter().map(|(n, _, _)| n.clone()).collect(),
                gids: mine.iter().map(|(_, g, _)| *g).collect(),
                name,
                uid,
                gid,
            })
        })
        .collect()
}

/// docker's `default-ulimits` for nofile in daemon.json: the value and the line of its
/// `"nofile"` key.
pub fn parse_docker_default(text: &str, file: &str) -> Option<(NofilePair, SourceRef)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let n = v.get("default-ulimits")?.get("nofile")?;
    let num = |k: &str| n.get(k).and_then(serde_json::Value::as_i64);
    let limit = |x: i64| u64::try_from(x).map_or(Limit::Unlimited, Limit::Value);
    let pair = NofilePair {
        soft: limit(num("Soft")?),
        hard: limit(num("Hard")?),
    };
    // The line of `"nofile"` inside `"default-ulimits"`.
    let start = text.find("\"default-ulimits\"")?;
    let rel = text[start..].find("\"nofile\"")?;
    let line = text[..start + rel].matches('\n').count() + 1;
    Some((
        pair,
        SourceRef {
            file: file.to_string(),
            line: u32::try_from(line).unwrap_or(u32::MAX),
            text: text.lines().nth(line - 1).unwrap_or("").to_string(),
        },
    ))
}

/// What the process's cgroup says about where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A system service (or another unit type with execution settings).
    Unit(String),
    /// A PAM login session (`session-N.scope`).
    Session,
    /// A container; its label and runtime.
    Container(String, Runtime),
    /// Anything else (init.scope, a user manager's units, the root cgroup).
    Other,
}

/// Where a `/proc/PID/cgroup` text puts a process: the first of its paths (in
/// [`cgroup_paths`] order) that names a container, a session or a unit.
pub fn placement(cgroup_text: &str) -> Placement {
    for path in cgroup_paths(cgroup_text) {
        if let Some(c) = container_from_path(path) {
            return Placement::Container(c.display(), c.runtime);
        }
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        // Units of a user's own systemd (below user@UID.service) are not system units.
        if parts.iter().any(|p| p.starts_with("user@")) {
            continue;
        }
        for p in parts.iter().rev() {
            if p.starts_with("session-") && p.ends_with(".scope") {
                return Placement::Session;
            }
            if [".service", ".socket", ".mount", ".swap"]
                .iter()
                .any(|s| p.ends_with(s))
            {
                return Placement::Unit(p.to_string());
            }
        }
    }
    Placement::Other
}

/// The host's limit configuration, read once, and the units read so far.
pub struct LimitConfig {
    root: PathBuf,
    units: BTreeMap<String, UnitLimit>,
    manager: Option<(NofilePair, SourceRef, Vec<SourceRef>)>,
    pam: Vec<PamLine>,
    accounts: Vec<Account>,
    docker: Option<(NofilePair, SourceRef)>,
    /// What `infinity` / `unlimited` become for nofile.
    nr_open: Option<u64>,
    /// Lines skipped and files that could not be read.
    pub bad: Vec<String>,
}

impl LimitConfig {
    /// Reads system.conf, limits.conf and limits.d, passwd and group, and docker's
    /// daemon.json under `root`; fs.nr_open from `proc_root`.
    pub fn read(root: &Path, proc_root: &Path) -> LimitConfig {
        let fs = RootedFs::new(root);
        let mut bad = Vec::new();
        let manager = read_manager_default(root, &mut bad);
        let mut pam = Vec::new();
        if let Some(t) = read_text(&fs, Path::new(LIMITS_CONF), &mut bad) {
            pam.extend(parse_limits(&t, LIMITS_CONF, &mut bad));
        }
        // pam_limits reads limits.d after limits.conf, by name in the C locale.
        for (_, target) in conf_dir_files(root, &[PathBuf::from(LIMITS_D)]) {
            if let Some(t) = target {
                if let Some(text) = read_text(&fs, &t, &mut bad) {
                    pam.extend(parse_limits(&text, &t.display().to_string(), &mut bad));
                }
            }
        }
        let mut ignore = Vec::new();
        let accounts = parse_accounts(
            &read_text(&fs, Path::new("/etc/passwd"), &mut ignore).unwrap_or_default(),
            &read_text(&fs, Path::new("/etc/group"), &mut ignore).unwrap_or_default(),
        );
        let docker = read_text(&fs, Path::new(DOCKER_DAEMON_JSON), &mut bad)
            .and_then(|t| parse_docker_default(&t, DOCKER_DAEMON_JSON));
        let nr_open = std::fs::read_to_string(proc_root.join("sys/fs/nr_open"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        LimitConfig {
            root: root.to_path_buf(),
            units: BTreeMap::new(),
            manager,
            pam,
            accounts,
            docker,
            nr_open,
            bad,
        }
    }

    fn unit(&mut self, name: &str) -> &UnitLimit {
        if !self.units.contains_key(name) {
            let u = read_unit(&self.root, name, &mut self.bad);
            self.units.insert(name.to_string(), u);
        }
        &self.units[name]
    }

    /// What a configured limit becomes in the kernel: `infinity` is lowered to
    /// fs.nr_open by systemd (`setrlimit_closest()`) and by pam_limits.
    fn effective(&self, l: Limit) -> Limit {
        match (l, self.nr_open) {
            (Limit::Unlimited, Some(n)) => Limit::Value(n),
            _ => l,
        }
    }

    fn matches(&self, configured: Option<NofilePair>, actual: Option<NofilePair>) -> Option<bool> {
        let (c, a) = (configured?, actual?);
        Some(self.effective(c.soft) == a.soft && self.effective(c.hard) == a.hard)
    }

    /// The limit a service gets from its unit, else the manager's default, else
    /// systemd's built-in one.
    fn service_origin(&mut self, name: &str) -> NofileOrigin {
        let unit = self.unit(name).clone();
        let mut o = blank(NofileSource::Unit);
        o.unit = Some(unit.files.clone());
        match unit.setting {
            Some((v, at, earlier)) => {
                o.configured = Some(v);
                o.at = Some(at);
                o.overridden = earlier;
            }
            None => match &self.manager {
                Some((v, at, earlier)) => {
                    o.source = NofileSource::ManagerDefault;
                    o.configured = Some(*v);
                    o.at = Some(at.clone());
                    o.overridden = earlier.clone();
                }
                None => {
                    o.source = NofileSource::SystemdDefault;
                    o.configured = Some(SYSTEMD_DEFAULT_NOFILE);
                }
            },
        }
        o
    }

    /// Where the limit of process `p` comes from; `cgroup` is its /proc/PID/cgroup
    /// text and `parent` what is known of its parent.
    pub fn origin(
        &mut self,
        p: &ProcessFacts,
        cgroup: &str,
        parent: Option<ParentFacts>,
    ) -> NofileOrigin {
        let actual = match (p.nofile_soft, p.nofile_hard) {
            (Some(soft), Some(hard)) => Some(NofilePair { soft, hard }),
            _ => None,
        };
        let mut o = match placement(cgroup) {
            Placement::Unit(name) => self.service_origin(&name),
            Placement::Session => {
                let mut o = blank(NofileSource::PamUnset);
                if let Some(acct) = self.accounts.iter().find(|a| a.uid == p.uid) {
                    o.user = Some(acct.name.clone());
                    if let Some((soft, hard)) = pam_limit_for(&self.pam, acct) {
                        o.source = NofileSource::PamLimits;
                        // A side no line sets keeps the login daemon's value.
                        let keep = |x: Option<Limit>| x.unwrap_or(Limit::Unlimited);
                        o.configured = Some(NofilePair {
                            soft: soft
                                .as_ref()
                                .map(|(v, _)| *v)
                                .unwrap_or_else(|| keep(actual.map(|a| a.soft))),
                            hard: hard
                                .as_ref()
                                .map(|(v, _)| *v)
                                .unwrap_or_else(|| keep(actual.map(|a| a.hard))),
                        });
                        let mut lines: Vec<SourceRef> = [soft, hard]
                            .into_iter()
                            .flatten()
                            .map(|(_, at)| at)
                            .collect();
                        lines.dedup();
                        // The soft line is the one to change first; the hard one, when
                        // separate, is listed with it.
                        o.at = lines.first().cloned();
                        o.overridden = lines.into_iter().skip(1).collect();
                    }
                }
                o
            }
            Placement::Container(label, runtime) => {
                let mut o = blank(NofileSource::ContainerRuntime);
                o.container = Some(label);
                match (&self.docker, runtime) {
                    (Some((v, at)), Runtime::Docker) => {
                        o.configured = Some(*v);
                        o.at = Some(at.clone());
                    }
                    _ => {
                        // The shim, and so the container, descends from this service.
                        let daemon = match runtime {
                            Runtime::Crio => "crio.service",
                            Runtime::Docker | Runtime::Containerd => "containerd.service",
                            _ => "",
                        };
                        if !daemon.is_empty() {
                            let d = self.service_origin(daemon);
                            o.unit = d.unit;
                            o.configured = d.configured;
                            o.at = d.at;
                            o.overridden = d.overridden;
                        }
                    }
                }
                o
            }
            Placement::Other => {
                let shell_parent = parent.as_ref().is_some_and(|pp| pp.shell);
                blank(if shell_parent {
                    NofileSource::ParentShell
                } else {
                    NofileSource::Unknown
                })
            }
        };
        if o.source == NofileSource::ParentShell {
            o.configured = parent.as_ref().and_then(|pp| pp.nofile);
        }
        o.matches = self.matches(o.configured, actual);
        o.parent = parent;
        o
    }
}

fn blank(source: NofileSource) -> NofileOrigin {
    NofileOrigin {
        source,
        configured: None,
        matches: None,
        at: None,
        overridden: Vec::new(),
        unit: None,
        user: None,
        container: None,
        parent: None,
    }
}

/// The parent of `pid` under `proc_root`: pid, name, limits.
fn parent_of(proc_root: &Path, pid: u32) -> Option<ParentFacts> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
    if ppid == 0 {
        return None;
    }
    let dir = proc_root.join(ppid.to_string());
    let comm = std::fs::read_to_string(dir.join("comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default();
    let nofile = std::fs::read_to_string(dir.join("limits"))
        .ok()
        .and_then(|t| limits::parse_nofile(&t))
        .map(|n| NofilePair {
            soft: n.soft,
            hard: n.hard,
        });
    Some(ParentFacts {
        pid: ppid,
        shell: SHELLS.contains(&comm.as_str()),
        comm,
        nofile,
    })
}

/// Bounded read of `/proc/PID/cgroup` (one short line per hierarchy).
fn read_cgroup(proc_root: &Path, pid: u32) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Ok(f) = std::fs::File::open(proc_root.join(pid.to_string()).join("cgroup")) {
        let _ = f.take(64 * 1024).read_to_string(&mut s);
    }
    s
}

/// Reads the host's configuration files for `check`: the sysctl files into the snapshot
/// of tcpdoctor's own namespace when it was read ([`sysctl_files::collect`]), and where
/// every process's open-files limit is
/// set into the snapshot that holds the process ([`attach_origins`]). On a replay
/// without `etc/` nothing is read and a notice says so; lines skipped are a notice too.
pub fn attach_host_config(host: &mut HostSnapshot, proc_root: &Path) {
    if host.namespaces.is_empty() {
        return;
    }
    let root = match sysctl_files::host_config_root(proc_root) {
        Ok(r) => r,
        Err(why) => {
            host.namespaces[0]
                .missing
                .push(Notice::new(NoticeCode::ReplayMissing, why));
            return;
        }
    };
    // The sysctl files set the namespace the host boots with, the initial one. Their
    // live values are read from this thread, which stays in tcpdoctor's own namespace,
    // so they are judged only when that is the initial one (or a replay's).
    if let Some(i) = boot_namespace(host) {
        let (persisted, notices) = sysctl_files::collect(&root, proc_root);
        host.namespaces[i].persisted_sysctls = Some(persisted);
        host.namespaces[i].missing.extend(notices);
    }
    let bad = attach_origins(host, &root, proc_root);
    if let Some(first) = bad.first() {
        host.namespaces[0].missing.push(Notice::new(
            NoticeCode::RecordsSkipped,
            format!(
                "unit, system.conf and limits files: {} skipped (first: {first})",
                crate::model::units::count(bad.len() as u64, "line or file", "lines or files")
            ),
        ));
    }
}

/// The snapshot the host's sysctl files are about: the initial (host) namespace when
/// tcpdoctor runs in it, or a replayed capture; `None` when no snapshot read is that
/// (`--netns NAME` alone, `ip netns exec X tcpdoctor`, or the initial namespace could
/// not be told).
pub fn boot_namespace(host: &HostSnapshot) -> Option<usize> {
    host.namespaces.iter().position(|s| match &s.netns {
        None => true,
        Some(n) => n.inode == 0 || n.current && n.initial,
    })
}

/// Finds where the open-files limit of every process in `host` comes from, reading the
/// configuration under `root` once (units once each), and puts each origin into the
/// snapshot that holds the process. Returns the lines skipped and files unreadable.
pub fn attach_origins(host: &mut HostSnapshot, root: &Path, proc_root: &Path) -> Vec<String> {
    let mut cfg = LimitConfig::read(root, proc_root);
    for snap in &mut host.namespaces {
        let mut origins = BTreeMap::new();
        for p in snap.processes.values() {
            // Only processes that use a fair share of their limit: the rest cannot be
            // near it, and a host has thousands.
            let Some(soft) = p.nofile_soft.and_then(Limit::value) else {
                continue;
            };
            if p.open_fds.saturating_mul(100) < soft.saturating_mul(ORIGIN_FROM_PCT) {
                continue;
            }
            let cgroup = read_cgroup(proc_root, p.pid);
            let parent = parent_of(proc_root, p.pid);
            origins.insert(p.pid, cfg.origin(p, &cgroup, parent));
        }
        snap.nofile_origins = origins;
    }
    cfg.bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_continuations_comments_and_bad_lines() {
        let text = "[Unit]\nDescription=x\n# LimitNOFILE=1\n[Service]\nExecStart=/bin/a \\\n  # inside\n  --flag\n LimitNOFILE = 4096:8192 \nnot a line\n[Broken\n";
        let mut bad = Vec::new();
        let e = parse_ini(text, "/u", &mut bad);
        let keys: Vec<(&str, &str, &str, u32)> = e
            .iter()
            .map(|e| {
                (
                    e.section.as_str(),
                    e.key.as_str(),
                    e.value.as_str(),
                    e.at.line,
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                ("Unit", "Description", "x", 2),
                ("Service", "ExecStart", "/bin/a --flag", 5),
                ("Service", "LimitNOFILE", "4096:8192", 8),
            ]
        );
        assert_eq!(bad.len(), 2, "{bad:?}");
    }

    #[test]
    fn limit_values() {
        let p = |s| parse_limit_nofile(s);
        let v = Limit::Value;
        assert_eq!(
            p("4096"),
            Some(NofilePair {
                soft: v(4096),
                hard: v(4096)
            })
        );
        assert_eq!(
            p("1024:524288"),
            Some(NofilePair {
                soft: v(1024),
                hard: v(524_288)
            })
        );
        assert_eq!(
            p("infinity"),
            Some(NofilePair {
                soft: Limit::Unlimited,
                hard: Limit::Unlimited
            })
        );
        assert_eq!(p("lots"), None);
        assert_eq!(p("1:"), None);
    }

    #[test]
    fn placement_from_cgroup() {
        assert_eq!(
            placement("0::/system.slice/nginx.service\n"),
            Placement::Unit("nginx.service".into())
        );
        assert_eq!(
            placement("0::/system.slice/app.service/worker\n"),
            Placement::Unit("app.service".into())
        );
        assert_eq!(
            placement("0::/user.slice/user-1000.slice/session-4.scope\n"),
            Placement::Session
        );
        assert_eq!(
            placement("0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service\n"),
            Placement::Other
        );
        assert_eq!(placement("0::/init.scope\n"), Placement::Other);
        assert_eq!(placement(""), Placement::Other);
        // A hybrid host: the v2 line names the unit, name=systemd says "/".
        assert_eq!(
            placement("9:name=systemd:/\n0::/tdtest-x.service\n"),
            Placement::Unit("tdtest-x.service".into())
        );
        let id = "7cd0c0ffee5eed0fa11ab1e5ca1ab1e0d15ea5edba5eba11dec0de0fadedface";
        assert!(matches!(
            placement(&format!("0::/system.slice/docker-{id}.scope\n")),
            Placement::Container(_, Runtime::Docker)
        ));
    }

    fn account(name: &str, uid: u32, groups: &[&str]) -> Account {
        Account {
            name: name.into(),
            uid,
            gid: uid,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            gids: vec![uid],
        }
    }

    #[test]
    fn pam_precedence_user_over_group_over_star_later_wins_among_equals() {
        let mut bad = Vec::new();
        let lines = parse_limits(
            "*        soft nofile 2048   # everyone\n\
             *        hard nofile 4096\n\
             @web     soft nofile 8192\n\
             alice    soft nofile 10000\n\
             *        soft nofile 3000\n\
             @web     -    nofile 9000\n\
             root     hard nofile unlimited\n\
             bogus line\n\
             *        soft core 0\n",
            "/etc/security/limits.conf",
            &mut bad,
        );
        assert_eq!(lines.len(), 7);
        assert_eq!(bad.len(), 1);
        let get = |a: &Account| {
            pam_limit_for(&lines, a)
                .map(|(s, h)| (s.map(|(v, at)| (v, at.line)), h.map(|(v, at)| (v, at.line))))
        };
        let v = Limit::Value;
        // alice: her own soft line beats every group and star line; hard from @web `-`.
        assert_eq!(
            get(&account("alice", 1000, &["web"])),
            Some((Some((v(10000), 4)), Some((v(9000), 6))))
        );
        // bob in web: the later @web `-` line (same source) replaces the first.
        assert_eq!(
            get(&account("bob", 1001, &["web"])),
            Some((Some((v(9000), 6)), Some((v(9000), 6))))
        );
        // carol: only star lines; the later soft one wins.
        assert_eq!(
            get(&account("carol", 1002, &[])),
            Some((Some((v(3000), 5)), Some((v(4096), 2))))
        );
        // root: star and group lines never apply, only its own.
        assert_eq!(
            get(&account("root", 0, &["web"])),
            Some((None, Some((Limit::Unlimited, 7))))
        );
    }

    #[test]
    fn accounts_and_docker_defaults() {
        let a = parse_accounts(
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\nbad\n",
            "root:x:0:\nalice:x:1000:\nweb:x:33:alice,bob\n",
        );
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].groups, vec!["alice", "web"]);
        let json = "{\n  \"log-driver\": \"json-file\",\n  \"default-ulimits\": {\n    \"nofile\": {\"Name\": \"nofile\", \"Hard\": 64000, \"Soft\": 32000}\n  }\n}\n";
        let (v, at) = parse_docker_default(json, DOCKER_DAEMON_JSON).expect("default");
        assert_eq!(v.soft, Limit::Value(32000));
        assert_eq!(v.hard, Limit::Value(64000));
        assert_eq!(at.line, 4);
        assert_eq!(parse_docker_default("{}", DOCKER_DAEMON_JSON), None);
        assert_eq!(parse_docker_default("{not json", DOCKER_DAEMON_JSON), None);
    }

    fn units() -> LimitConfig {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/persisted/units");
        LimitConfig::read(&root, &root)
    }

    fn process(uid: u32, soft: u64, hard: u64) -> ProcessFacts {
        ProcessFacts {
            pid: 4242,
            comm: "app".into(),
            uid,
            cmdline: String::new(),
            open_fds: 10,
            nofile_soft: Some(Limit::Value(soft)),
            nofile_hard: Some(Limit::Value(hard)),
            detached_tcp_fds: None,
        }
    }

    fn service(unit: &str) -> String {
        format!("0::/system.slice/{unit}\n")
    }

    const SESSION: &str = "0::/user.slice/user-1000.slice/session-7.scope\n";

    fn at(o: &NofileOrigin) -> String {
        o.at.as_ref().map(ToString::to_string).unwrap_or_default()
    }

    fn pair(soft: u64, hard: u64) -> Option<NofilePair> {
        Some(NofilePair {
            soft: Limit::Value(soft),
            hard: Limit::Value(hard),
        })
    }

    /// persisted/units (see its NOTE.md): the unit file, then its drop-ins in file-name
    /// order whatever their directory.
    #[test]
    fn unit_and_dropins_override_in_name_order() {
        let mut cfg = units();
        let o = cfg.origin(&process(0, 2048, 16384), &service("app.service"), None);
        assert_eq!(o.source, NofileSource::Unit);
        assert_eq!(o.configured, pair(2048, 16384));
        assert_eq!(
            at(&o),
            "/usr/lib/systemd/system/app.service.d/20-vendor.conf:3"
        );
        let earlier: Vec<String> = o.overridden.iter().map(ToString::to_string).collect();
        assert_eq!(
            earlier,
            vec![
                "/usr/lib/systemd/system/app.service:6",
                "/etc/systemd/system/app.service.d/10-limits.conf:2"
            ]
        );
        assert_eq!(o.matches, Some(true));
        let u = o.unit.expect("unit");
        assert_eq!(
            u.file.as_deref(),
            Some("/usr/lib/systemd/system/app.service")
        );
        assert_eq!(
            u.dropins,
            vec![
                "/etc/systemd/system/app.service.d/10-limits.conf",
                "/usr/lib/systemd/system/app.service.d/20-vendor.conf"
            ]
        );
        // Another limit than the files give: changed after start.
        let o = cfg.origin(&process(0, 65536, 65536), &service("app.service"), None);
        assert_eq!(o.matches, Some(false));

        // The dash-prefix drop-in directory app-.service.d applies to app-api.service.
        let o = cfg.origin(&process(0, 512, 512), &service("app-api.service"), None);
        assert_eq!(
            (o.source, at(&o)),
            (
                NofileSource::Unit,
                "/usr/lib/systemd/system/app-.service.d/05-prefix.conf:2".to_string()
            )
        );
        // An administrator's unit in /etc, the line after a continued one.
        let o = cfg.origin(&process(0, 4096, 4096), &service("web.service"), None);
        assert_eq!(
            (o.configured, at(&o)),
            (
                pair(4096, 4096),
                "/etc/systemd/system/web.service:4".to_string()
            )
        );
    }

    #[test]
    fn without_limit_nofile_the_manager_default_applies() {
        let mut cfg = units();
        for unit in ["plain.service", "reset.service", "masked.service"] {
            let o = cfg.origin(&process(0, 4096, 65536), &service(unit), None);
            assert_eq!(o.source, NofileSource::ManagerDefault, "{unit}");
            assert_eq!(o.configured, pair(4096, 65536), "{unit}");
            assert_eq!(
                at(&o),
                "/etc/systemd/system.conf.d/60-site.conf:3",
                "{unit}"
            );
            assert_eq!(o.matches, Some(true));
        }
        let o = cfg.origin(&process(0, 1, 1), &service("plain.service"), None);
        let earlier: Vec<String> = o.overridden.iter().map(ToString::to_string).collect();
        assert_eq!(
            earlier,
            vec![
                "/etc/systemd/system.conf:3",
                "/usr/lib/systemd/system.conf.d/40-vendor.conf:2"
            ]
        );
        // The masked unit's own file is never read.
        assert_eq!(
            cfg.origin(&process(0, 1, 1), &service("masked.service"), None)
                .unit
                .and_then(|u| u.file),
            None
        );
        // An instance falls back to its template; infinity is fs.nr_open.
        let o = cfg.origin(
            &process(0, 1_048_576, 1_048_576),
            &service("worker@3.service"),
            None,
        );
        assert_eq!(at(&o), "/usr/lib/systemd/system/worker@.service:3");
        assert_eq!(o.configured.map(|c| c.soft), Some(Limit::Unlimited));
        assert_eq!(o.matches, Some(true));
        // No unit file and no system.conf: systemd's own default.
        let empty = LimitConfig::read(
            Path::new("/nonexistent/tcpdoctor"),
            Path::new("/nonexistent"),
        );
        let mut empty = empty;
        let o = empty.origin(&process(0, 1024, 524_288), &service("x.service"), None);
        assert_eq!(
            (o.source, o.configured, o.matches),
            (
                NofileSource::SystemdDefault,
                Some(SYSTEMD_DEFAULT_NOFILE),
                Some(true)
            )
        );
    }

    /// limits.conf applies to login sessions, never to a service, whoever runs it.
    #[test]
    fn limits_conf_for_sessions_only() {
        let mut cfg = units();
        let alice = |soft, hard| ProcessFacts {
            uid: 1000,
            ..process(1000, soft, hard)
        };
        let o = cfg.origin(&alice(10000, 8192), SESSION, None);
        assert_eq!(o.source, NofileSource::PamLimits);
        assert_eq!(o.user.as_deref(), Some("alice"));
        assert_eq!(at(&o), "/etc/security/limits.conf:4");
        assert_eq!(o.overridden[0].to_string(), "/etc/security/limits.conf:3");
        assert_eq!(o.configured, pair(10000, 8192));
        assert_eq!(o.matches, Some(true));
        // bob is in group web: limits.d/90-web.conf beats the `*` line.
        let o = cfg.origin(&process(1001, 4096, 8192), SESSION, None);
        assert_eq!(at(&o), "/etc/security/limits.d/90-web.conf:1");
        // The same user's process in a service: the unit decides.
        let o = cfg.origin(&alice(2048, 16384), &service("app.service"), None);
        assert_eq!(o.source, NofileSource::Unit);
        // A uid with no account: the login daemon's limit.
        let o = cfg.origin(&process(4000, 1024, 4096), SESSION, None);
        assert_eq!((o.source, o.configured), (NofileSource::PamUnset, None));
        // The malformed limits.conf line was counted.
        assert!(
            cfg.bad.iter().any(|b| b.contains("limits.conf:6")),
            "{:?}",
            cfg.bad
        );
    }

    #[test]
    fn containers_and_parent_shells() {
        let mut cfg = units();
        let id = "7cd0c0ffee5eed0fa11ab1e5ca1ab1e0d15ea5edba5eba11dec0de0fadedface";
        let docker = format!("0::/system.slice/docker-{id}.scope\n");
        let o = cfg.origin(&process(0, 32768, 65536), &docker, None);
        assert_eq!(o.source, NofileSource::ContainerRuntime);
        assert_eq!(at(&o), "/etc/docker/daemon.json:4");
        assert_eq!(o.matches, Some(true));
        let k8s = format!("0::/kubepods.slice/kubepods-pod3f2a1b4c_1111_2222_3333_444455556666.slice/cri-containerd-{id}.scope\n");
        let o = cfg.origin(&process(0, 1_048_576, 1_048_576), &k8s, None);
        assert_eq!(o.source, NofileSource::ContainerRuntime);
        assert_eq!(at(&o), "/usr/lib/systemd/system/containerd.service:3");
        assert_eq!(
            o.unit.map(|u| u.name).as_deref(),
            Some("containerd.service")
        );
        // Started from a shell: its limit is the shell's.
        let shell = ParentFacts {
            pid: 77,
            comm: "bash".into(),
            nofile: pair(100, 200),
            shell: true,
        };
        let o = cfg.origin(&process(0, 100, 200), "0::/\n", Some(shell.clone()));
        assert_eq!(
            (o.source, o.matches),
            (NofileSource::ParentShell, Some(true))
        );
        let o = cfg.origin(
            &process(0, 100, 200),
            "0::/\n",
            Some(ParentFacts {
                shell: false,
                ..shell
            }),
        );
        assert_eq!(o.source, NofileSource::Unknown);
    }

    #[test]
    fn debian12_units_as_packaged() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/persisted/debian12");
        let mut cfg = LimitConfig::read(&root, &root);
        // /lib links to usr/lib there: the first directory in the search path that has it.
        let o = cfg.origin(
            &process(0, 32768, 32768),
            &service("prometheus.service"),
            None,
        );
        assert_eq!(at(&o), "/usr/lib/systemd/system/prometheus.service:21");
        let o = cfg.origin(
            &process(0, 524_288, 524_288),
            &service("systemd-journald.service"),
            None,
        );
        assert_eq!(
            at(&o),
            "/usr/lib/systemd/system/systemd-journald.service:56"
        );
        // An alias link is read through to the unit it names.
        let o = cfg.origin(
            &process(0, 524_288, 524_288),
            &service("dbus-org.freedesktop.login1.service"),
            None,
        );
        assert_eq!(at(&o), "/usr/lib/systemd/system/systemd-logind.service:68");
        // nginx.service sets none; Debian's system.conf sets none either.
        let o = cfg.origin(&process(0, 1024, 524_288), &service("nginx.service"), None);
        assert_eq!(
            (o.source, o.matches),
            (NofileSource::SystemdDefault, Some(true))
        );
        assert!(cfg.bad.is_empty(), "{:?}", cfg.bad);
    }

    #[test]
    fn sysctl_files_belong_to_the_boot_namespace_only() {
        use crate::model::{NetnsInfo, NetnsKind, Snapshot};
        let ns = |inode: u64, current: bool, initial: bool| Snapshot {
            netns: Some(NetnsInfo {
                inode,
                name: inode.to_string(),
                kind: NetnsKind::IpNetns,
                current,
                initial,
                container: None,
                ip_netns: Vec::new(),
                processes: 1,
                first_pid: None,
            }),
            ..Snapshot::default()
        };
        let host = |v: Vec<Snapshot>| HostSnapshot {
            namespaces: v,
            all_namespaces: false,
            missing: Vec::new(),
        };
        // The host's namespace, first or not.
        assert_eq!(
            boot_namespace(&host(vec![ns(1, true, true), ns(2, false, false)])),
            Some(0)
        );
        assert_eq!(
            boot_namespace(&host(vec![ns(2, false, false), ns(1, true, true)])),
            Some(1)
        );
        // --netns NAME: only another namespace was read.
        assert_eq!(boot_namespace(&host(vec![ns(2, false, false)])), None);
        // Run inside another namespace (ip netns exec), or the initial one unknown.
        assert_eq!(boot_namespace(&host(vec![ns(2, true, false)])), None);
        // The initial namespace read from elsewhere: its live values are not this
        // thread's to read.
        assert_eq!(
            boot_namespace(&host(vec![ns(2, true, false), ns(1, false, true)])),
            None
        );
        // A replay.
        assert_eq!(boot_namespace(&host(vec![ns(0, true, false)])), Some(0));
        assert_eq!(boot_namespace(&host(vec![Snapshot::default()])), Some(0));
    }

    #[test]
    fn malformed_limit_files_never_panic() {
        let mut bad = Vec::new();
        for text in [
            "",
            "=",
            "[",
            "[]",
            "\\",
            "a\\",
            "\u{0}=\u{0}",
            "LimitNOFILE=\n[Service]\nLimitNOFILE=-1",
        ] {
            let _ = parse_ini(text, "/x", &mut bad);
            let _ = parse_limits(text, "/x", &mut bad);
            let _ = parse_docker_default(text, "/x");
        }
        assert_eq!(parse_limit_nofile("-1"), None);
        assert_eq!(parse_limit_nofile("18446744073709551616"), None);
        for d in ["@:", ":", "1:x", "@x:1"] {
            let l = parse_limits(&format!("{d} soft nofile 5\n"), "/x", &mut bad);
            assert!(l.is_empty(), "{d}");
        }
        assert_eq!(
            parse_docker_default(
                "{\"default-ulimits\": {\"nofile\": {\"Soft\": \"x\"}}}",
                "/x"
            ),
            None
        );
    }
}
