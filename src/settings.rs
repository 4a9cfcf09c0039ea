//! Resolved settings: what the commands run with, after flags are checked. Built from
//! [`crate::cli`] in one place so command code never sees clap types.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::analyze::Thresholds;

use crate::cli::{self, ByArg, ColorArg, SourceArg, StateWord};
use crate::collect::owners::{BpfUse, OwnerScan, BPF_MIN_FILES};
use crate::collect::sockets::SourcePref;
use crate::model::{GroupBy, SocketFilter, StateSet, TcpState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub source: SourcePref,
    pub proc_root: PathBuf,
    /// `proc_root` is not the live /proc but a captured host: read only the capture
    /// (sockets from its net/tcp{,6}, never from sock_diag), one reading, no namespaces.
    pub replay: bool,
    pub color: bool,
    /// Threads for reading namespaces.
    pub threads: usize,
    /// How to find socket owners (threads of the /proc pass, when to use BPF).
    pub owner_scan: OwnerScan,
    pub netns: NetnsChoice,
}

/// Which network namespaces to read (`--netns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsChoice {
    /// Not given: every namespace for check/watch/serve (with the privilege to enter
    /// them), the current one for states/sockets.
    Default,
    All,
    Current,
    /// An nsfs file: /run/netns/NAME, /proc/PID/ns/net, a bind mount elsewhere.
    Path(PathBuf),
    /// The namespace of this process.
    Pid(u32),
    /// An `ip netns` name, a container or pod name, or a container id prefix.
    Name(String),
}

impl NetnsChoice {
    pub fn parse(s: &str) -> Result<NetnsChoice, SettingsError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(SettingsError::Netns(s.to_string()));
        }
        Ok(match t {
            "all" => NetnsChoice::All,
            "current" | "self" => NetnsChoice::Current,
            _ if t.contains('/') => NetnsChoice::Path(PathBuf::from(t)),
            _ if t.bytes().all(|b| b.is_ascii_digit()) => match t.parse() {
                Ok(pid) if pid > 0 => NetnsChoice::Pid(pid),
                _ => return Err(SettingsError::Netns(s.to_string())),
            },
            _ => NetnsChoice::Name(t.to_string()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatesSettings {
    pub states: StateSet,
    pub by: Option<GroupBy>,
    pub top: usize,
    pub ipv4: bool,
    pub ipv6: bool,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketsSettings {
    pub states: StateSet,
    pub filter: SocketFilter,
    pub limit: Option<usize>,
    pub tcp_info: bool,
    pub owners: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckSettings {
    pub interval: Duration,
    pub thresholds: Thresholds,
    pub verbose: bool,
    pub emit_sysctl: bool,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WatchSettings {
    pub interval: Duration,
    pub top: usize,
    pub thresholds: Thresholds,
    /// One JSON line per sample on stdout instead of the terminal UI.
    pub headless: bool,
    /// Stop after this many samples.
    pub samples: Option<u64>,
    /// CPU budget of sampling as a fraction of one core (0.05 = 5%); `None`: no limit.
    pub cpu_budget: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    pub listen: std::net::SocketAddr,
    pub top: usize,
    /// Scrapes within this long of a collection reuse it.
    pub cache: Duration,
    pub thresholds: Thresholds,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Check(CheckSettings),
    Watch(WatchSettings),
    Serve(ServeSettings),
    States(StatesSettings),
    Sockets(SocketsSettings),
}

/// A setting that cannot be used; the message names the value and what to change.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("interval '{0}' is out of range (check --interval: 0-60 s, watch --interval: 0.1-3600 s, serve --cache: 0-3600 s)")]
    Interval(f64),
    #[error("cannot read config file '{path}': {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file '{path}': {message}")]
    ConfigParse { path: PathBuf, message: String },
    #[error("--threshold '{0}' must look like KEY=NUMBER, e.g. port_warn_pct=60")]
    ThresholdSyntax(String),
    #[error("--threshold '{given}': {message}")]
    Threshold { given: String, message: String },
    #[error("--max-cpu '{0}' is out of range: give a percentage of one core, above 0 and at most 100, or 0 for no limit")]
    MaxCpu(f64),
    #[error("--netns '{0}' is not a namespace: use all, current, a path such as /run/netns/NAME, a pid, or a name")]
    Netns(String),
    #[error("--source netlink reads the live kernel and cannot replay --proc-root '{}': use --source proc, or leave --source out", .0.display())]
    ReplayNetlink(PathBuf),
    #[error("TCPDOCTOR_BPF_MIN_FILES '{0}' is not a number of open files (0: use the BPF owner scan whatever the size)")]
    BpfMinFiles(String),
}

/// Facts about the terminal the caller knows (main owns stdout and the environment).
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    pub stdout_is_tty: bool,
    pub no_color_env: bool,
}

/// Debugging and benchmarking knobs from the environment (main reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// `TCPDOCTOR_NO_BPF` is set: always the /proc owner scan.
    pub no_bpf: bool,
    /// `TCPDOCTOR_BPF_MIN_FILES`: open files from which the BPF owner scan is used.
    pub bpf_min_files: Option<String>,
    /// `TCPDOCTOR_DEBUG` is set: say on stderr which owner scan ran.
    pub debug: bool,
}

impl Environment {
    /// Reads the variables; a variable counts as set whatever its value.
    pub fn from_process() -> Environment {
        Environment {
            no_bpf: std::env::var_os("TCPDOCTOR_NO_BPF").is_some(),
            bpf_min_files: std::env::var_os("TCPDOCTOR_BPF_MIN_FILES")
                .map(|v| v.to_string_lossy().into_owned()),
            debug: std::env::var_os("TCPDOCTOR_DEBUG").is_some(),
        }
    }
}

/// The owner scan as the environment shapes it.
fn owner_scan(env: &Environment, threads: usize) -> Result<OwnerScan, SettingsError> {
    let bpf = if env.no_bpf {
        BpfUse::Never
    } else {
        match &env.bpf_min_files {
            Some(v) => BpfUse::FromOpenFiles(
                v.trim()
                    .parse()
                    .map_err(|_| SettingsError::BpfMinFiles(v.clone()))?,
            ),
            None => BpfUse::FromOpenFiles(BPF_MIN_FILES),
        }
    };
    Ok(OwnerScan {
        bpf,
        debug: env.debug,
        threads,
    })
}

pub fn resolve(
    cli: cli::Cli,
    term: Terminal,
    env: &Environment,
) -> Result<(Common, Action), SettingsError> {
    let g = cli.global;
    let color = match g.color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => term.stdout_is_tty && !term.no_color_env,
    };
    // Anything but the live /proc is a captured host (Path equality ignores a trailing
    // slash). A capture is read from its files only: sock_diag would answer for this
    // machine instead.
    let replay = g.proc_root != Path::new("/proc");
    let source = match (g.source, replay) {
        (SourceArg::Netlink, true) => return Err(SettingsError::ReplayNetlink(g.proc_root)),
        (SourceArg::Auto, true) | (SourceArg::Proc, _) => SourcePref::Proc,
        (SourceArg::Auto, false) => SourcePref::Auto,
        (SourceArg::Netlink, false) => SourcePref::Netlink,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let common = Common {
        source,
        proc_root: g.proc_root,
        replay,
        color,
        threads,
        owner_scan: owner_scan(env, threads)?,
        netns: match &g.netns {
            Some(v) => NetnsChoice::parse(v)?,
            None => NetnsChoice::Default,
        },
    };
    let action = match cli.command {
        // No subcommand: the doctor.
        None => Action::Check(check_settings(&cli::CheckArgs {
            interval: 1.0,
            ..cli::CheckArgs::default()
        })?),
        Some(cli::Command::Check(a)) => Action::Check(check_settings(&a)?),
        Some(cli::Command::Watch(a)) => {
            if !(0.1..=3600.0).contains(&a.interval) {
                return Err(SettingsError::Interval(a.interval));
            }
            Action::Watch(WatchSettings {
                interval: Duration::from_secs_f64(a.interval),
                top: a.top.max(1),
                thresholds: thresholds(a.config.as_deref(), &a.threshold)?,
                headless: a.headless,
                samples: a.samples,
                cpu_budget: if a.max_cpu == 0.0 {
                    None
                } else if a.max_cpu > 0.0 && a.max_cpu <= 100.0 {
                    Some(a.max_cpu / 100.0)
                } else {
                    return Err(SettingsError::MaxCpu(a.max_cpu));
                },
            })
        }
        Some(cli::Command::Serve(a)) => {
            if !(0.0..=3600.0).contains(&a.cache) {
                return Err(SettingsError::Interval(a.cache));
            }
            Action::Serve(ServeSettings {
                listen: a.listen,
                top: a.top.max(1),
                cache: Duration::from_secs_f64(a.cache),
                thresholds: thresholds(a.config.as_deref(), &a.threshold)?,
            })
        }
        Some(cli::Command::States(a)) => {
            let (ipv4, ipv6) = families(&a.family);
            Action::States(StatesSettings {
                states: state_set(&a.state),
                by: a.by.map(|b| match b {
                    ByArg::Process => GroupBy::Process,
                    ByArg::Peer => GroupBy::Peer,
                    ByArg::LocalPort => GroupBy::LocalPort,
                    ByArg::RemotePort => GroupBy::RemotePort,
                    ByArg::Netns => GroupBy::Netns,
                }),
                top: a.top,
                ipv4,
                ipv6,
                json: a.json,
            })
        }
        Some(cli::Command::Sockets(a)) => {
            let (ipv4, ipv6) = families(&a.family);
            Action::Sockets(SocketsSettings {
                states: state_set(&a.state),
                filter: SocketFilter {
                    ports: a.port,
                    local: a.local,
                    peer: a.peer,
                    pids: a.pid,
                    comms: a.comm,
                },
                limit: a.limit,
                tcp_info: a.info,
                owners: !a.no_owners,
                ipv4,
                ipv6,
                json: a.json,
            })
        }
    };
    Ok((common, action))
}

fn check_settings(a: &cli::CheckArgs) -> Result<CheckSettings, SettingsError> {
    if !(0.0..=60.0).contains(&a.interval) || a.interval.is_nan() {
        return Err(SettingsError::Interval(a.interval));
    }
    Ok(CheckSettings {
        interval: Duration::from_secs_f64(a.interval),
        thresholds: thresholds(a.config.as_deref(), &a.threshold)?,
        verbose: a.verbose,
        emit_sysctl: a.emit_sysctl,
        json: a.json,
    })
}

/// Defaults, then the config file, then each `--threshold KEY=VALUE`.
pub fn thresholds(
    config: Option<&Path>,
    overrides: &[String],
) -> Result<Thresholds, SettingsError> {
    let mut table = toml::Table::new();
    if let Some(path) = config {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        table = text
            .parse::<toml::Table>()
            .map_err(|e| SettingsError::ConfigParse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?;
        // Validate the file on its own so its errors name the file.
        Thresholds::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
            SettingsError::ConfigParse {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
    }
    for given in overrides {
        let (k, v) = given
            .split_once('=')
            .ok_or_else(|| SettingsError::ThresholdSyntax(given.clone()))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| SettingsError::ThresholdSyntax(given.clone()))?;
        let value = if v.fract() == 0.0 && v >= 0.0 && !k.ends_with("_pct") {
            toml::Value::Integer(v as i64)
        } else {
            toml::Value::Float(v)
        };
        table.insert(k.trim().to_string(), value);
        Thresholds::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
            SettingsError::Threshold {
                given: given.clone(),
                message: e.to_string(),
            }
        })?;
    }
    Thresholds::deserialize(toml::Value::Table(table)).map_err(|e| SettingsError::Threshold {
        given: String::new(),
        message: e.to_string(),
    })
}

fn families(f: &cli::FamilyArgs) -> (bool, bool) {
    match (f.ipv4, f.ipv6) {
        (true, false) => (true, false),
        (false, true) => (false, true),
        _ => (true, true),
    }
}

/// No `--state` means every state.
pub fn state_set(words: &[StateWord]) -> StateSet {
    if words.is_empty() {
        return StateSet::all();
    }
    let mut set = StateSet::empty();
    for w in words {
        match w {
            StateWord::One(s) => set.insert(*s),
            StateWord::All => set = StateSet::all(),
            StateWord::Connected => {
                for s in TcpState::ALL {
                    if s != TcpState::Listen && s != TcpState::Close {
                        set.insert(s);
                    }
                }
            }
        }
    }
    set
}

use serde::Deserialize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_layer_defaults_file_and_flags() {
        let dir = std::env::temp_dir().join(format!("tcpdoctor-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("t.toml");
        std::fs::write(&file, "port_warn_pct = 40\nclose_wait_warn = 3\n").expect("write");
        let t = thresholds(Some(&file), &["port_warn_pct=45".to_string()]).expect("valid");
        assert_eq!(t.port_warn_pct, 45.0);
        assert_eq!(t.close_wait_warn, 3);
        assert_eq!(t.port_critical_pct, Thresholds::default().port_critical_pct);
        std::fs::write(&file, "port_warn = 40\n").expect("write");
        let e = thresholds(Some(&file), &[]).expect_err("unknown key");
        assert!(e.to_string().contains("port_warn"), "{e}");
        let e = thresholds(None, &["close_wait_warn=lots".to_string()]).expect_err("bad value");
        assert!(e.to_string().contains("'close_wait_warn=lots'"), "{e}");
        let e = thresholds(None, &["nope=1".to_string()]).expect_err("unknown key");
        assert!(e.to_string().contains("nope"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn cli(args: &[&str]) -> cli::Cli {
        use clap::Parser;
        cli::Cli::try_parse_from(std::iter::once("tcpdoctor").chain(args.iter().copied()))
            .expect("valid flags")
    }

    fn common(args: &[&str], env: &Environment) -> Result<Common, SettingsError> {
        let term = Terminal {
            stdout_is_tty: false,
            no_color_env: false,
        };
        resolve(cli(args), term, env).map(|(c, _)| c)
    }

    #[test]
    fn a_proc_root_other_than_proc_is_a_replay_read_from_its_files() {
        let env = Environment::default();
        let live = common(&["states"], &env).expect("live");
        assert!(!live.replay);
        assert_eq!(live.source, SourcePref::Auto);
        let slash = common(&["--proc-root", "/proc/", "states"], &env).expect("live");
        assert!(!slash.replay, "a trailing slash is still the live /proc");
        let replay = common(&["--proc-root", "/tmp/cap", "states"], &env).expect("replay");
        assert!(replay.replay);
        assert_eq!(
            replay.source,
            SourcePref::Proc,
            "never sock_diag on a replay"
        );
        let e = common(
            &["--source", "netlink", "--proc-root", "/tmp/cap", "check"],
            &env,
        )
        .expect_err("netlink cannot replay");
        assert!(e.to_string().contains("'/tmp/cap'"), "{e}");
    }

    #[test]
    fn bpf_knobs_come_from_the_environment_once() {
        let scan = |env: Environment| common(&["states"], &env).map(|c| c.owner_scan);
        let default = scan(Environment::default()).expect("default");
        assert_eq!(default.bpf, BpfUse::FromOpenFiles(BPF_MIN_FILES));
        assert!(!default.debug);
        let off = scan(Environment {
            no_bpf: true,
            bpf_min_files: Some("0".into()),
            debug: true,
        })
        .expect("off");
        assert_eq!(off.bpf, BpfUse::Never, "TCPDOCTOR_NO_BPF wins");
        assert!(off.debug);
        let always = scan(Environment {
            bpf_min_files: Some(" 0 ".into()),
            ..Environment::default()
        })
        .expect("always");
        assert_eq!(always.bpf, BpfUse::FromOpenFiles(0));
        let e = scan(Environment {
            bpf_min_files: Some("lots".into()),
            ..Environment::default()
        })
        .expect_err("not a number");
        assert!(e.to_string().contains("'lots'"), "{e}");
    }

    #[test]
    fn netns_choices_parse() {
        assert_eq!(NetnsChoice::parse("all").ok(), Some(NetnsChoice::All));
        assert_eq!(
            NetnsChoice::parse("current").ok(),
            Some(NetnsChoice::Current)
        );
        assert_eq!(
            NetnsChoice::parse("1234").ok(),
            Some(NetnsChoice::Pid(1234))
        );
        assert_eq!(
            NetnsChoice::parse("/run/netns/blue").ok(),
            Some(NetnsChoice::Path(PathBuf::from("/run/netns/blue")))
        );
        assert_eq!(
            NetnsChoice::parse("blue").ok(),
            Some(NetnsChoice::Name("blue".into()))
        );
        assert!(NetnsChoice::parse("").is_err());
        assert!(NetnsChoice::parse("0").is_err());
        assert!(NetnsChoice::parse("99999999999999999999").is_err());
    }

    #[test]
    fn state_words_combine() {
        assert!(state_set(&[]).is_all());
        let cw = state_set(&[StateWord::One(TcpState::CloseWait)]);
        assert_eq!(cw.iter().collect::<Vec<_>>(), vec![TcpState::CloseWait]);
        let conn = state_set(&[StateWord::Connected]);
        assert!(!conn.contains(TcpState::Listen));
        assert!(conn.contains(TcpState::TimeWait));
        assert_eq!(conn.iter().count(), 9);
    }
}
