//! Accept queues per (network namespace, listening address), the N fullest across
//! namespaces. Sockets sharing one address in one namespace (SO_REUSEPORT) are one
//! series; the same address in two namespaces is two listeners with two queues, so two
//! series, never a sum.

use std::collections::BTreeMap;

use super::namespaces::NetnsLabels;
use super::{Kind, Text};
use crate::model::HostSnapshot;

/// One listening address of one namespace, its sockets summed.
#[derive(Debug, Clone, Copy)]
struct Queue {
    waiting: u64,
    backlog: u64,
    /// False when any socket's limit is unknown (/proc/net/tcp does not show it).
    backlog_known: bool,
}

impl Queue {
    fn fill(&self) -> f64 {
        if self.backlog_known && self.backlog > 0 {
            self.waiting as f64 / self.backlog as f64
        } else {
            0.0
        }
    }
}

pub(super) fn write(t: &mut Text, h: &HostSnapshot, netns: &NetnsLabels, top: usize) {
    let mut by_addr: BTreeMap<(usize, String), Queue> = BTreeMap::new();
    for (i, s) in h.namespaces.iter().enumerate() {
        for l in &s.sockets.listeners {
            let q = by_addr.entry((i, l.local.to_string())).or_insert(Queue {
                waiting: 0,
                backlog: 0,
                backlog_known: true,
            });
            q.waiting += u64::from(l.accept_queue);
            q.backlog += u64::from(l.backlog);
            q.backlog_known &= l.backlog_known;
        }
    }
    let mut rows: Vec<((usize, String), Queue)> = by_addr.into_iter().collect();
    rows.sort_by(|a, b| {
        b.1.fill()
            .total_cmp(&a.1.fill())
            .then(b.1.waiting.cmp(&a.1.waiting))
            .then(a.0.cmp(&b.0))
    });
    rows.truncate(top);
    let queue = "tcpdoctor_listener_accept_queue";
    t.family(
        queue,
        Kind::Gauge,
        "Connections waiting in the accept queue per network namespace and listening address (the N fullest across namespaces).",
    );
    for ((i, addr), q) in &rows {
        t.sample(
            queue,
            &[("netns", netns.of(*i)), ("listen", addr)],
            q.waiting,
        );
    }
    let backlog = "tcpdoctor_listener_backlog";
    t.family(
        backlog,
        Kind::Gauge,
        "Accept queue limit (min(listen() backlog, somaxconn)) of the same listeners; absent when the source cannot tell (/proc/net/tcp).",
    );
    for ((i, addr), q) in &rows {
        if q.backlog_known {
            t.sample(
                backlog,
                &[("netns", netns.of(*i)), ("listen", addr)],
                q.backlog,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ep, family, host_of, namespace};
    use super::*;
    use crate::model::{ListenerSocket, Snapshot};

    fn listen(s: &mut Snapshot, addr: &str, queued: u32, backlog: u32, known: bool) {
        s.sockets.listeners.push(ListenerSocket {
            local: ep(addr),
            accept_queue: queued,
            backlog,
            backlog_known: known,
            inode: 1,
            owner: None,
        });
    }

    fn written(h: &HostSnapshot, top: usize) -> String {
        let mut t = Text::default();
        write(&mut t, h, &NetnsLabels::new(h), top);
        t.buf
    }

    #[test]
    fn one_address_in_two_namespaces_is_two_listeners() {
        let mut a = namespace("a", 1, "40000 40099");
        let mut b = namespace("b", 2, "40000 40099");
        // a: two SO_REUSEPORT sockets, 128 of 256 waiting; b: idle.
        listen(&mut a, "0.0.0.0:80", 128, 128, true);
        listen(&mut a, "0.0.0.0:80", 0, 128, true);
        listen(&mut b, "0.0.0.0:80", 0, 128, true);
        listen(&mut b, "0.0.0.0:22", 1, 4096, true);
        let text = written(&host_of(vec![a, b]), 2);
        assert_eq!(
            family(&text, "tcpdoctor_listener_accept_queue"),
            vec![
                "tcpdoctor_listener_accept_queue{netns=\"a\",listen=\"0.0.0.0:80\"} 128",
                "tcpdoctor_listener_accept_queue{netns=\"b\",listen=\"0.0.0.0:22\"} 1",
            ]
        );
        assert_eq!(
            family(&text, "tcpdoctor_listener_backlog"),
            vec![
                "tcpdoctor_listener_backlog{netns=\"a\",listen=\"0.0.0.0:80\"} 256",
                "tcpdoctor_listener_backlog{netns=\"b\",listen=\"0.0.0.0:22\"} 4096",
            ]
        );
    }

    #[test]
    fn an_unknown_backlog_is_absent_not_zero() {
        let mut a = namespace("a", 1, "40000 40099");
        listen(&mut a, "127.0.0.1:5000", 3, 0, false);
        let text = written(&host_of(vec![a]), 2);
        assert!(text.contains(
            "tcpdoctor_listener_accept_queue{netns=\"a\",listen=\"127.0.0.1:5000\"} 3\n"
        ));
        assert!(family(&text, "tcpdoctor_listener_backlog").is_empty());
    }
}
