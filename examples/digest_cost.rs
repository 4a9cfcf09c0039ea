//! What the socket digest costs per socket, without the kernel: builds the farm mix of
//! `bench/run.sh` in memory (60% ESTABLISHED, 12.5% CLOSE_WAIT, 12.5% FIN_WAIT2, 15%
//! TIME_WAIT with timers, 12 listeners, both sides of each loopback connection), feeds
//! it to `DigestBuilder` as `check` does and prints the median time of `--reps` builds.
//! Run with `cargo run --release --example digest_cost -- [SOCKETS] [REPS]`.
//!
//! The digest sits on the per-socket path of `check`, `watch` and `serve`; this keeps an
//! eye on it apart from the dump and the owner scan, which dominate and vary far more.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use tcpdoctor::model::{
    DigestBuilder, Endpoint, EphemeralPorts, Family, Socket, TcpState, Timer, TimerKind,
};

fn sock(state: TcpState, local: Endpoint, remote: Endpoint, inode: u64) -> Socket {
    Socket {
        family: Family::V4,
        state,
        local,
        remote,
        inode,
        uid: 0,
        recv_q: 0,
        send_q: 0,
        timer: None,
        cookie: None,
        tcp_info: None,
    }
}

/// The farm: (first pass: listeners and CLOSE_WAIT, second pass: the rest).
fn farm(n: usize) -> (Vec<Socket>, Vec<Socket>) {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let at = |port: u16| Endpoint::new(lo, port);
    let listeners: Vec<u16> = (0..12).map(|i| 5000 + i).collect();
    let mut first: Vec<Socket> = listeners
        .iter()
        .map(|p| sock(TcpState::Listen, at(*p), Endpoint::new(lo, 0), 1))
        .collect();
    let mut rest = Vec::with_capacity(n);
    let mut port = 1024u16;
    let mut next_port = || {
        port = if port >= 65000 { 1024 } else { port + 1 };
        port
    };
    let mut inode = 100u64;
    let (established, close_wait, time_wait) = (n * 60 / 200, n * 25 / 200, n * 15 / 100);
    for i in 0..established {
        // Both ends of a loopback connection: client port and the listener's.
        let (c, s) = (at(next_port()), at(listeners[i % 12]));
        inode += 2;
        rest.push(sock(TcpState::Established, c, s, inode));
        rest.push(sock(TcpState::Established, s, c, inode + 1));
    }
    for i in 0..close_wait {
        // Server side in CLOSE_WAIT, client in FIN_WAIT2.
        let (c, s) = (at(next_port()), at(listeners[i % 12]));
        inode += 2;
        first.push(sock(TcpState::CloseWait, s, c, inode));
        rest.push(sock(TcpState::FinWait2, c, s, inode + 1));
    }
    for i in 0..time_wait {
        let mut s = sock(
            TcpState::TimeWait,
            at(next_port()),
            at(listeners[i % 12]),
            0,
        );
        s.timer = Some(Timer {
            kind: TimerKind::TimeWait,
            remaining_ms: 60_000 - (i as u64 * 7) % 60_000,
            retransmits: 0,
        });
        rest.push(s);
    }
    (first, rest)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(15);
    let (first, rest) = farm(n);
    let ports = EphemeralPorts::from_sysctls(Some("1024 65000"), Some(""));
    let mut times = Vec::with_capacity(reps);
    let mut time_wait = 0;
    for _ in 0..reps {
        let started = Instant::now();
        let mut b = DigestBuilder::new(ports.clone());
        for s in &first {
            b.add_first_pass(s);
        }
        for s in &rest {
            b.add(s);
        }
        let (summary, d) = b.finish(|_| None);
        times.push(started.elapsed().as_secs_f64());
        time_wait = summary.total().get(TcpState::TimeWait);
        std::hint::black_box(d);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let sockets = first.len() + rest.len();
    println!(
        "{sockets} sockets ({time_wait} TIME_WAIT): median {:.1} ms per digest, {:.0} ns per socket (min {:.1} ms, {reps} builds)",
        median * 1e3,
        median * 1e9 / sockets as f64,
        times[0] * 1e3
    );
}
