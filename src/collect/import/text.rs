//! The small captures: counters (`netstat -s`, `nstat -az`, copies of
//! `/proc/net/{netstat,snmp}`), `sysctl -a`, `ulimit -n`, `/proc/sys/fs/file-nr`,
//! `/proc/net/sockstat`. Each parser keeps what it can read and counts what it cannot.

use std::collections::BTreeMap;

/// Values read, and the lines that could not be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed<T> {
    pub values: T,
    pub skipped: u64,
    pub first_error: Option<String>,
}

impl<T> Parsed<T> {
    fn skip(&mut self, line_no: usize, why: impl Into<String>) {
        self.skipped += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("line {line_no}: {}", why.into()));
        }
    }
}

/// `nstat -az` (or `-as`, `-zas`): `TcpExtListenOverflows   12   0.0`, keyed as
/// /proc/net/netstat is (`TcpExt.ListenOverflows`). The `#kernel` line is skipped.
pub fn parse_nstat(text: &str) -> Parsed<BTreeMap<String, i64>> {
    let mut p: Parsed<BTreeMap<String, i64>> = Parsed::default();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut it = l.split_whitespace();
        let (Some(name), Some(value)) = (it.next(), it.next()) else {
            p.skip(i + 1, "no value");
            continue;
        };
        let Ok(v) = value.parse::<i64>() else {
            p.skip(i + 1, format!("'{}' is not a number", cut(value)));
            continue;
        };
        match nstat_key(name) {
            Some(k) => {
                p.values.insert(k, v);
            }
            None => p.skip(i + 1, format!("unknown counter '{}'", cut(name))),
        }
    }
    p
}

/// The groups of /proc/net/{snmp,netstat,snmp6}, longest first so `TcpExt` wins over
/// `Tcp` and `IpExt` over `Ip`.
const GROUPS: &[&str] = &[
    "TcpExt", "IpExt", "MPTcpExt", "UdpLite6", "UdpLite", "IcmpMsg", "Icmp6", "Icmp", "Udp6",
    "Ip6", "Tcp", "Udp", "Ip", "Sctp", "TlsStat",
];

fn nstat_key(name: &str) -> Option<String> {
    GROUPS.iter().find_map(|g| {
        let rest = name.strip_prefix(g)?;
        (!rest.is_empty()).then(|| format!("{g}.{rest}"))
    })
}

/// `netstat -s` sentences of the Tcp and TcpExt sections (net-tools, C locale), with
/// `N` where the number stands, and the counter each one prints. Older spellings
/// (net-tools 1.60) are listed beside the current ones.
const SENTENCES: &[(&str, &str)] = &[
    ("N active connection openings", "Tcp.ActiveOpens"),
    ("N active connections openings", "Tcp.ActiveOpens"),
    ("N passive connection openings", "Tcp.PassiveOpens"),
    ("N passive connections openings", "Tcp.PassiveOpens"),
    ("N failed connection attempts", "Tcp.AttemptFails"),
    ("N connection resets received", "Tcp.EstabResets"),
    ("N connections established", "Tcp.CurrEstab"),
    ("N segments received", "Tcp.InSegs"),
    ("N segments sent out", "Tcp.OutSegs"),
    ("N segments send out", "Tcp.OutSegs"),
    ("N segments retransmitted", "Tcp.RetransSegs"),
    ("N segments retransmited", "Tcp.RetransSegs"),
    ("N bad segments received", "Tcp.InErrs"),
    ("N bad segments received.", "Tcp.InErrs"),
    ("N resets sent", "Tcp.OutRsts"),
    ("N SYN cookies sent", "TcpExt.SyncookiesSent"),
    ("N SYN cookies received", "TcpExt.SyncookiesRecv"),
    ("N invalid SYN cookies received", "TcpExt.SyncookiesFailed"),
    (
        "N resets received for embryonic SYN_RECV sockets",
        "TcpExt.EmbryonicRsts",
    ),
    (
        "N TCP sockets finished time wait in fast timer",
        "TcpExt.TW",
    ),
    (
        "N time wait sockets recycled by time stamp",
        "TcpExt.TWRecycled",
    ),
    (
        "N TCP sockets finished time wait in slow timer",
        "TcpExt.TWKilled",
    ),
    (
        "N passive connections rejected because of time stamp",
        "TcpExt.PAWSPassive",
    ),
    (
        "N active connections rejected because of time stamp",
        "TcpExt.PAWSActive",
    ),
    (
        "N times the listen queue of a socket overflowed",
        "TcpExt.ListenOverflows",
    ),
    ("N SYNs to LISTEN sockets dropped", "TcpExt.ListenDrops"),
    ("N SYNs to LISTEN sockets ignored", "TcpExt.ListenDrops"),
    (
        "N connections reset due to unexpected data",
        "TcpExt.TCPAbortOnData",
    ),
    (
        "N connections reset due to early user close",
        "TcpExt.TCPAbortOnClose",
    ),
    (
        "N connections aborted due to memory pressure",
        "TcpExt.TCPAbortOnMemory",
    ),
    (
        "N connections aborted due to timeout",
        "TcpExt.TCPAbortOnTimeout",
    ),
    (
        "N connections aborted after user close in linger timeout",
        "TcpExt.TCPAbortOnLinger",
    ),
    (
        "N times unable to send RST due to no memory",
        "TcpExt.TCPAbortFailed",
    ),
    ("TCP ran low on memory N times", "TcpExt.TCPMemoryPressures"),
];

/// `netstat -s`: sentences of the `Tcp:` and `TcpExt:` sections, and the
/// `Name: value` lines net-tools prints for counters it has no sentence for. Other
/// sections are passed over; a Tcp/TcpExt line that matches nothing is counted
/// (a translated netstat: save it with LC_ALL=C).
pub fn parse_netstat_s(text: &str) -> Parsed<BTreeMap<String, i64>> {
    let mut p: Parsed<BTreeMap<String, i64>> = Parsed::default();
    let mut group: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            let head = line.trim().trim_end_matches(':');
            group = match head {
                "Tcp" => Some("Tcp"),
                "TcpExt" => Some("TcpExt"),
                _ => None,
            };
            continue;
        }
        let Some(g) = group else {
            continue;
        };
        let l = line.trim();
        // `TCPTimeWaitOverflow: 3`
        if let Some((name, v)) = l.split_once(": ") {
            if !name.contains(' ') {
                match v.trim().parse::<i64>() {
                    Ok(v) => {
                        p.values.insert(format!("{g}.{name}"), v);
                    }
                    Err(_) => p.skip(i + 1, format!("'{}' is not a number", cut(v))),
                }
                continue;
            }
        }
        // The one number in the sentence.
        let words: Vec<&str> = l.split_whitespace().collect();
        let nums: Vec<(usize, i64)> = words
            .iter()
            .enumerate()
            .filter_map(|(k, w)| w.parse::<i64>().ok().map(|v| (k, v)))
            .collect();
        let [(at, value)] = nums.as_slice() else {
            p.skip(i + 1, format!("'{}' is not a counter sentence", cut(l)));
            continue;
        };
        let shape: Vec<&str> = words
            .iter()
            .enumerate()
            .map(|(k, w)| if k == *at { "N" } else { w })
            .collect();
        let shape = shape.join(" ");
        match SENTENCES.iter().find(|(s, _)| *s == shape) {
            Some((_, key)) => {
                p.values.insert((*key).to_string(), *value);
            }
            // A sentence for a counter no rule reads is no loss.
            None if g == "TcpExt" => {}
            None => p.skip(i + 1, format!("unknown Tcp sentence '{}'", cut(l))),
        }
    }
    p
}

/// `sysctl -a` (`name = value`, or `name: value` from busybox), keyed by the dotted
/// name, the value's whitespace collapsed as /proc/sys reads are.
pub fn parse_sysctl_a(text: &str) -> Parsed<BTreeMap<String, String>> {
    let mut p: Parsed<BTreeMap<String, String>> = Parsed::default();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with("sysctl:") {
            continue;
        }
        let Some((k, v)) = l.split_once(" = ").or_else(|| l.split_once(": ")) else {
            // `name =` with an empty value.
            if let Some(k) = l.strip_suffix(" =") {
                p.values.insert(k.trim().to_string(), String::new());
            } else {
                p.skip(i + 1, format!("'{}' is not name = value", cut(l)));
            }
            continue;
        };
        let k = k.trim().replace('/', ".");
        if k.is_empty() || k.contains(' ') {
            p.skip(i + 1, format!("'{}' is not a sysctl name", cut(&k)));
            continue;
        }
        p.values
            .insert(k, v.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    p
}

/// `ulimit -n`: one number or `unlimited`.
pub fn parse_ulimit(text: &str) -> Option<crate::model::Limit> {
    match text.trim() {
        "unlimited" => Some(crate::model::Limit::Unlimited),
        t => t.parse().ok().map(crate::model::Limit::Value),
    }
}

/// `cat /proc/sys/fs/file-nr`: three numbers, kept as the sysctl is.
pub fn parse_file_nr(text: &str) -> Option<String> {
    let nums: Vec<u64> = text
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    (nums.len() == 3).then(|| format!("{} {} {}", nums[0], nums[1], nums[2]))
}

fn cut(s: &str) -> String {
    crate::model::units::ellipsize(s, 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nstat_names_become_proc_keys() {
        let p = parse_nstat(
            "#kernel\nTcpExtListenOverflows 12 0.0\nTcpActiveOpens 7 0.0\nIpExtInOctets 9 0.0\nBogus 1\n",
        );
        assert_eq!(p.values.get("TcpExt.ListenOverflows"), Some(&12));
        assert_eq!(p.values.get("Tcp.ActiveOpens"), Some(&7));
        assert_eq!(p.values.get("IpExt.InOctets"), Some(&9));
        assert_eq!(p.skipped, 1);
    }

    #[test]
    fn netstat_s_sentences_and_named_counters() {
        let text = "Ip:\n    Forwarding: 2\nTcp:\n    6 active connection openings\n    0 failed connection attempts\n    31 connection resets received\n    12 fancy new things\nTcpExt:\n    3 times the listen queue of a socket overflowed\n    TCP ran low on memory 2 times\n    TCPTimeWaitOverflow: 5\n    9 delayed acks sent\n";
        let p = parse_netstat_s(text);
        assert_eq!(p.values.get("Tcp.ActiveOpens"), Some(&6));
        assert_eq!(p.values.get("Tcp.EstabResets"), Some(&31));
        assert_eq!(p.values.get("TcpExt.ListenOverflows"), Some(&3));
        assert_eq!(p.values.get("TcpExt.TCPMemoryPressures"), Some(&2));
        assert_eq!(p.values.get("TcpExt.TCPTimeWaitOverflow"), Some(&5));
        assert_eq!(p.skipped, 1, "the unknown Tcp sentence");
        assert!(!p.values.contains_key("Ip.Forwarding"));
    }

    #[test]
    fn sysctl_lines() {
        let p = parse_sysctl_a(
            "net.ipv4.ip_local_port_range = 32768\t60999\nnet.ipv4.ip_local_reserved_ports =\nkernel.x: 1\ngarbage\n",
        );
        assert_eq!(
            p.values
                .get("net.ipv4.ip_local_port_range")
                .map(String::as_str),
            Some("32768 60999")
        );
        assert_eq!(
            p.values
                .get("net.ipv4.ip_local_reserved_ports")
                .map(String::as_str),
            Some("")
        );
        assert_eq!(p.values.get("kernel.x").map(String::as_str), Some("1"));
        assert_eq!(p.skipped, 1);
    }

    #[test]
    fn small_files() {
        assert_eq!(
            parse_file_nr("1139\t0\t2466239\n").as_deref(),
            Some("1139 0 2466239")
        );
        assert_eq!(parse_file_nr("1 2"), None);
        assert_eq!(
            parse_ulimit("1024\n"),
            Some(crate::model::Limit::Value(1024))
        );
        assert_eq!(
            parse_ulimit("unlimited"),
            Some(crate::model::Limit::Unlimited)
        );
        assert_eq!(parse_ulimit("lots"), None);
    }
}
