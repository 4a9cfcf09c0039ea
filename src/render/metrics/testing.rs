//! Hand-built snapshots and text checks shared by the unit tests of the metric families.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::CollectionStats;
use crate::model::{
    CloseWaitSocket, CounterSample, Endpoint, HostSnapshot, Limit, ListenerSocket, NetnsInfo,
    NetnsKind, Owner, PortUse, ProcessFacts, Snapshot, Source, StateCounts, TcpState,
};

pub fn stats() -> CollectionStats {
    CollectionStats {
        collections: 3,
        failures: 1,
        duration_s: 0.25,
        started_unix_ms: 1_700_000_000_500,
        top: 2,
    }
}

pub fn ep(s: &str) -> Endpoint {
    let a: std::net::SocketAddr = s.parse().expect("addr");
    Endpoint::new(a.ip(), a.port())
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub fn process(pid: u32, comm: &str, open: u64, soft: u64) -> ProcessFacts {
    ProcessFacts {
        pid,
        comm: comm.to_string(),
        uid: 0,
        cmdline: format!("/usr/bin/{comm} --password=hunter2"),
        open_fds: open,
        nofile_soft: Some(Limit::Value(soft)),
        nofile_hard: Some(Limit::Value(soft)),
        detached_tcp_fds: None,
    }
}

pub fn close_wait(pid: Option<u32>) -> CloseWaitSocket {
    CloseWaitSocket {
        local: ep("10.0.0.1:8080"),
        remote: ep("10.0.0.9:5000"),
        inode: if pid.is_some() { 1 } else { 0 },
        recv_q: 1,
        owner: pid.map(|pid| Owner { pid, fd: 3 }),
        idle_ms: None,
        cookie: None,
        still_there: None,
    }
}

/// `n` sockets in `state`.
pub fn counts(state: TcpState, n: u64) -> StateCounts {
    let mut c = StateCounts::default();
    for _ in 0..n {
        c.add(state);
    }
    c
}

/// `used` ports of the namespace `s` towards `remote` from `local`, against the
/// namespace's own range (as the digest fills `usable`).
pub fn use_ports(s: &mut Snapshot, local: &str, remote: &str, used: u64) {
    let usable = s.ephemeral_ports().usable();
    s.sockets.port_use.push(PortUse {
        local_ip: ip(local),
        remote: ep(remote),
        counts: counts(TcpState::Established, used),
        sample_owner: None,
        usable,
        time_wait_ages: Default::default(),
        tw_reuse: false,
    });
}

/// One namespace (no sockets yet) called `name`, with that port range.
pub fn namespace(name: &str, inode: u64, port_range: &str) -> Snapshot {
    let mut s = Snapshot {
        source: Some(Source::Netlink),
        netns: Some(NetnsInfo {
            inode,
            name: name.into(),
            kind: NetnsKind::IpNetns,
            current: false,
            initial: false,
            container: None,
            ip_netns: vec![name.into()],
            processes: 1,
            first_pid: Some(1),
        }),
        owners_known: true,
        ..Snapshot::default()
    };
    s.sysctls
        .insert("net.ipv4.ip_local_port_range".into(), port_range.into());
    s
}

pub fn host_of(namespaces: Vec<Snapshot>) -> HostSnapshot {
    HostSnapshot {
        namespaces,
        all_namespaces: true,
        missing: Vec::new(),
    }
}

/// One namespace with a bit of everything: CLOSE_WAIT leaks of three processes and one
/// unowned, a listener with one connection waiting, 30 TIME_WAIT ports towards one
/// destination out of 90 usable, descriptors near a limit, and counters.
pub fn snapshot() -> Snapshot {
    let mut s = Snapshot {
        source: Some(Source::Netlink),
        ..Snapshot::default()
    };
    for (pid, n) in [(10, 5), (11, 3), (12, 1)] {
        for _ in 0..n {
            s.sockets.close_wait.push(close_wait(Some(pid)));
            s.summary.ipv4.add(TcpState::CloseWait);
        }
    }
    s.sockets.close_wait.push(close_wait(None));
    s.sockets.listeners.push(ListenerSocket {
        local: ep("10.0.0.1:8080"),
        accept_queue: 1,
        backlog: 128,
        backlog_known: true,
        inode: 2,
        owner: Some(Owner { pid: 10, fd: 4 }),
    });
    s.summary.ipv4.add(TcpState::CloseWait);
    s.summary.ipv6.add(TcpState::Listen);
    s.processes.insert(10, process(10, "web\"app", 90, 100));
    s.processes.insert(11, process(11, "db", 10, 1000));
    s.processes.insert(12, process(12, "cron", 1, 1024));
    s.sockets
        .by_process
        .insert(10, counts(TcpState::CloseWait, 1));
    s.sysctls
        .insert("net.ipv4.ip_local_port_range".into(), "40000 40099".into());
    s.sysctls.insert(
        "net.ipv4.ip_local_reserved_ports".into(),
        "40000-40009".into(),
    );
    s.sockets.port_use.push(PortUse {
        local_ip: ip("10.0.0.1"),
        remote: ep("10.0.0.7:5432"),
        counts: counts(TcpState::TimeWait, 30),
        sample_owner: None,
        usable: 90,
        time_wait_ages: Default::default(),
        tw_reuse: false,
    });
    s.sockets.time_wait.client_side = 30;
    s.sockets
        .time_wait
        .by_destination
        .insert(ep("10.0.0.7:5432"), 30);
    s.sysctls
        .insert("fs.file-nr".into(), "1000 0 9223372036854775807".into());
    let mut c = CounterSample::default();
    c.after.insert("TcpExt.ListenOverflows".into(), 7);
    c.after.insert("Tcp.ActiveOpens".into(), 100);
    s.counters = Some(c);
    s.owners_known = true;
    s
}

/// The sample lines (no comments).
pub fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

/// The sample lines of one family, in output order.
pub fn family<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    lines(text)
        .into_iter()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .collect()
}

/// The label sets (`{...}`) of one family, in output order.
pub fn label_sets<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    family(text, name)
        .into_iter()
        .map(|l| {
            let series = l.rsplit_once(' ').map_or(l, |(k, _)| k);
            &series[name.len()..]
        })
        .collect()
}

/// No two samples of one exposition share a name and label set.
pub fn assert_unique_series(text: &str) {
    let mut seen = BTreeSet::new();
    for l in lines(text) {
        let series = l.rsplit_once(' ').map_or(l, |(k, _)| k);
        assert!(seen.insert(series.to_string()), "twice: {series}");
    }
}
