//! Settings as the host's configuration files persist them, each with the file and line
//! that sets it: the kernel settings the sysctl files apply at every boot (compared with
//! the live values), and where a process's open-files limit (RLIMIT_NOFILE) comes from.
//! Plain data: filled by `collect::sysctl_files` and `collect::limits_source`, read by
//! the `sysctl_persisted`, `sysctl_audit` and `fd_exhaustion` rules.

use serde::Serialize;

use super::nginx::SourceRef;
use super::Limit;

/// The order the kernel settings are applied in at boot: systemd-sysctl's (sysctl.d(5)).
pub const SYSCTL_ORDER: &str = "systemd-sysctl";

/// Read last by procps `sysctl --system`, and by systemd only through the
/// `/etc/sysctl.d/99-sysctl.conf` link to it.
pub const SYSCTL_CONF: &str = "/etc/sysctl.conf";

/// What the host's sysctl files set, in the order systemd-sysctl applies them at boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PersistedSysctls {
    /// Every file applied, in order, as the host names it (`/etc/sysctl.conf` when it is
    /// reached through the `/etc/sysctl.d/99-sysctl.conf` link).
    pub files: Vec<String>,
    /// Files hidden by a file of the same name in a directory that comes first
    /// (`/etc` before `/run` before `/usr/local/lib` before `/usr/lib`), or masked by a
    /// link to /dev/null: (hidden file, the one that hides it).
    pub hidden: Vec<(String, String)>,
    /// The setting each key ends up with, sorted by key.
    pub settings: Vec<PersistedSysctl>,
    /// Lines that are neither comments nor assignments (systemd-sysctl skips them with
    /// a warning), and unreadable files: how many, and the first few.
    pub skipped: u64,
    pub skipped_examples: Vec<String>,
}

impl PersistedSysctls {
    pub fn get(&self, key: &str) -> Option<&PersistedSysctl> {
        self.settings.iter().find(|p| p.key == key)
    }
}

/// One kernel setting as the files leave it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PersistedSysctl {
    /// Dotted name, as `sysctl` prints it (`net.ipv4.tcp_fin_timeout`).
    pub key: String,
    /// The value written at boot (whitespace as in the file, trimmed).
    pub value: String,
    /// The line that sets it last, so the one that wins.
    pub at: SourceRef,
    /// The assignment starts with `-`: errors writing it are ignored.
    pub ignore_errors: bool,
    /// Set through a glob key (`net.ipv4.conf.*.rp_filter`): the pattern.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Earlier lines that set it to another value and lose to `at`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overridden: Vec<OverriddenLine>,
    /// The value now in /proc/sys.
    pub live: LiveValue,
    /// Where `sysctl --system` (procps) takes it from when that differs from
    /// systemd-sysctl: procps reads /etc/sysctl.conf once more after every other file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub procps_at: Option<OverriddenLine>,
}

impl PersistedSysctl {
    /// The last component of the key (`tcp_fin_timeout`).
    pub fn short(&self) -> &str {
        self.key.rsplit('.').next().unwrap_or(&self.key)
    }

    /// Whether the live value differs from the persisted one (false when the key is
    /// missing or unreadable).
    pub fn differs_from_live(&self) -> bool {
        match &self.live {
            LiveValue::Value(v) => !same_sysctl_value(v, &self.value),
            _ => false,
        }
    }

    /// The live value, when readable.
    pub fn live_value(&self) -> Option<&str> {
        match &self.live {
            LiveValue::Value(v) => Some(v),
            _ => None,
        }
    }
}

/// Another line that sets a key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverriddenLine {
    pub value: String,
    pub at: SourceRef,
}

/// A key's value in /proc/sys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "value", rename_all = "snake_case")]
pub enum LiveValue {
    /// Read, whitespace collapsed to single spaces.
    Value(String),
    /// No such key on this kernel (removed, a module not loaded, an interface absent).
    Missing,
    /// It exists but cannot be read (write-only keys, permissions): the reason.
    Unreadable(String),
}

/// Whether two sysctl values are the same setting: equal once whitespace is collapsed,
/// or the same integers (`"1"` and `"01"`, tabs in `ip_local_port_range`).
pub fn same_sysctl_value(a: &str, b: &str) -> bool {
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let (wa, wb) = (words(a), words(b));
    if wa == wb {
        return true;
    }
    // Lists (`ip_local_reserved_ports = 8080, 9000-9100`) read back without spaces.
    if (a.contains(',') || b.contains(',')) && wa.concat() == wb.concat() {
        return true;
    }
    let ints = |w: &[String]| {
        w.iter()
            .map(|x| x.parse::<i128>().ok())
            .collect::<Option<Vec<_>>>()
    };
    matches!((ints(&wa), ints(&wb)), (Some(x), Some(y)) if x == y)
}

/// A soft and hard open-files limit as a configuration file writes it. In JSON each is
/// a number or `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NofilePair {
    #[serde(serialize_with = "limit_json")]
    pub soft: Limit,
    #[serde(serialize_with = "limit_json")]
    pub hard: Limit,
}

fn limit_json<S: serde::Serializer>(l: &Limit, s: S) -> Result<S::Ok, S::Error> {
    match l {
        Limit::Value(v) => s.serialize_u64(*v),
        Limit::Unlimited => s.serialize_str("unlimited"),
    }
}

/// Who sets a process's open-files limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NofileSource {
    /// `LimitNOFILE=` in the service's unit file or one of its drop-ins.
    Unit,
    /// The service sets none: `DefaultLimitNOFILE=` in system.conf (or a drop-in).
    ManagerDefault,
    /// Neither is set: systemd's built-in default (1024:524288 since systemd 240).
    SystemdDefault,
    /// A PAM login session: a `nofile` line of /etc/security/limits.conf or limits.d.
    PamLimits,
    /// A PAM login session with no `nofile` line for its user: the limit of the login
    /// daemon that opened it (sshd, getty), unchanged.
    PamUnset,
    /// A container: its runtime's default (docker's `default-ulimits`, or the limit of
    /// the containerd or docker service the container's processes descend from).
    ContainerRuntime,
    /// Not a service or session of its own: inherited from its parent, a shell.
    ParentShell,
    /// Nothing in the files explains it.
    Unknown,
}

impl NofileSource {
    pub fn name(self) -> &'static str {
        match self {
            NofileSource::Unit => "unit",
            NofileSource::ManagerDefault => "manager_default",
            NofileSource::SystemdDefault => "systemd_default",
            NofileSource::PamLimits => "pam_limits",
            NofileSource::PamUnset => "pam_unset",
            NofileSource::ContainerRuntime => "container_runtime",
            NofileSource::ParentShell => "parent_shell",
            NofileSource::Unknown => "unknown",
        }
    }
}

/// Where one process's open-files limit comes from, read from the files (no running
/// systemd needed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NofileOrigin {
    pub source: NofileSource,
    /// The limit those files give; `None` when they give none.
    pub configured: Option<NofilePair>,
    /// Whether the process runs with exactly that limit (`None`: nothing configured or
    /// the process's limit is unknown). False means something changed it after start:
    /// the program itself (setrlimit), a wrapper's `ulimit -n`, or `prlimit`.
    pub matches: Option<bool>,
    /// The line that sets it; `None` for built-in defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<SourceRef>,
    /// Other lines that set it and lose to `at` (the unit file under a drop-in).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overridden: Vec<SourceRef>,
    /// The systemd unit the process runs in, from its cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitFiles>,
    /// The user of a login session (limits.conf matches it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The container, `docker 7cd0c0ffee5e`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The parent process and its limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentFacts>,
}

/// A systemd unit and the files systemd builds it from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitFiles {
    /// `nginx.service`.
    pub name: String,
    /// The unit file as the host names it; `None` when no unit file exists (a
    /// transient unit, or a cgroup named like a unit).
    pub file: Option<String>,
    /// Drop-ins applied after it, in order.
    pub dropins: Vec<String>,
}

/// A process's parent, as far as the limit goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentFacts {
    pub pid: u32,
    pub comm: String,
    pub nofile: Option<NofilePair>,
    /// Its name is a shell's (bash, sh, zsh, ...).
    pub shell: bool,
}
