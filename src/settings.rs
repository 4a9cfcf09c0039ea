//! Resolved settings: what the commands run with, after flags are checked. Built from
//! [`crate::cli`] in one place so command code never sees clap types.

use std::path::PathBuf;

use crate::cli::{self, ByArg, ColorArg, SourceArg, StateWord};
use crate::collect::sockets::SourcePref;
use crate::model::{GroupBy, SocketFilter, StateSet, TcpState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub source: SourcePref,
    pub proc_root: PathBuf,
    pub color: bool,
    /// Threads for the /proc owner scan.
    pub threads: usize,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    States(StatesSettings),
    Sockets(SocketsSettings),
}

/// Facts about the terminal the caller knows (main owns stdout and the environment).
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    pub stdout_is_tty: bool,
    pub no_color_env: bool,
}

pub fn resolve(cli: cli::Cli, term: Terminal) -> (Common, Action) {
    let g = cli.global;
    let color = match g.color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => term.stdout_is_tty && !term.no_color_env,
    };
    let common = Common {
        source: match g.source {
            SourceArg::Auto => SourcePref::Auto,
            SourceArg::Netlink => SourcePref::Netlink,
            SourceArg::Proc => SourcePref::Proc,
        },
        proc_root: g.proc_root,
        color,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let action = match cli.command {
        // No subcommand: the doctor will run here; until then, the state summary.
        None => Action::States(StatesSettings {
            states: StateSet::all(),
            by: None,
            top: 20,
            ipv4: true,
            ipv6: true,
            json: false,
        }),
        Some(cli::Command::States(a)) => {
            let (ipv4, ipv6) = families(&a.family);
            Action::States(StatesSettings {
                states: state_set(&a.state),
                by: a.by.map(|b| match b {
                    ByArg::Process => GroupBy::Process,
                    ByArg::Peer => GroupBy::Peer,
                    ByArg::LocalPort => GroupBy::LocalPort,
                    ByArg::RemotePort => GroupBy::RemotePort,
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
    (common, action)
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

#[cfg(test)]
mod tests {
    use super::*;

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
