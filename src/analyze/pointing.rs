//! Fix commands pointed at the namespace a finding is about, so that each one works
//! pasted into the shell the user ran tcpdoctor from. Rules write their commands for the
//! namespace they run in; here `tcpdoctor` commands get `--netns`, commands that act on
//! a network namespace (sockets, per-namespace sysctls, counters, the firewall) get
//! `ip netns exec NAME` or `nsenter`, and commands that do not (host-wide sysctls,
//! `/proc/PID` files, `prlimit`, `systemctl`) are left alone: they work from anywhere,
//! and some (`tcp_mem`, `tcp_max_orphans`) exist only in the initial namespace, so
//! entering another would break them.

use crate::model::{Finding, FixStep, NetnsInfo, NetnsKind, HOST_WIDE_SYSCTLS};

use crate::model::units::compact_list;

/// Programs whose effect or output depends on the network namespace they run in.
const NETNS_PROGRAMS: &[&str] = &[
    "ss",
    "nstat",
    "netstat",
    "conntrack",
    "iptables",
    "ip6tables",
    "iptables-save",
    "nft",
    "ip",
    "tc",
    "tcpdump",
];

/// Host-wide keys beyond the ones tcpdoctor reads ([`HOST_WIDE_SYSCTLS`]): visible in
/// every namespace, but only the initial namespace's value counts (the conntrack hash
/// is one table for the host; nf_conntrack_generic_timeout etc. are per namespace).
const HOST_WIDE_EXTRA: &[&str] = &["net.netfilter.nf_conntrack_buckets"];

/// The words of a shell command, with quotes and the punctuation around words removed.
fn words(cmd: &str) -> impl Iterator<Item = &str> {
    cmd.split(|c: char| c.is_whitespace() || matches!(c, '|' | ';' | '&' | '(' | ')' | '`'))
        .map(|w| w.trim_matches(|c: char| matches!(c, '\'' | '"' | '$' | '{' | '}' | ',')))
        .filter(|w| !w.is_empty())
}

/// Whether the sysctl `key` (dotted, or a /proc/sys path) is set per network namespace.
fn per_netns_key(key: &str) -> bool {
    let key = key.split('=').next().unwrap_or(key);
    let dotted = match key.strip_prefix("/proc/sys/") {
        Some(path) => path.replace('/', "."),
        None => key.to_string(),
    };
    dotted.starts_with("net.")
        && !HOST_WIDE_SYSCTLS.contains(&dotted.as_str())
        && !HOST_WIDE_EXTRA.contains(&dotted.as_str())
}

/// Whether running `cmd` in another network namespace gives another result: it runs a
/// program that reads or changes the namespace's sockets, counters or firewall, reads
/// `/proc/net`, or names a per-namespace sysctl.
pub fn acts_on_netns(cmd: &str) -> bool {
    let w: Vec<&str> = words(cmd).collect();
    let sysctl = w.iter().any(|x| *x == "sysctl" || x.ends_with("/sysctl"));
    w.iter().any(|x| {
        NETNS_PROGRAMS.contains(x)
            || x.starts_with("/proc/net/")
            || x.starts_with("/proc/self/net/")
            || (x.starts_with("/proc/sys/net/") && per_netns_key(x))
            || (sysctl && x.starts_with("net.") && per_netns_key(x))
    })
}

/// Whether words in a fix step's prose look like a shell command that acts on a
/// namespace (`ss -tan`, `sysctl -w`, `nstat -az`): rules keep commands in
/// `FixStep::command`, so this is a safety net. Whole words only, so "process " or
/// "address" never count as `ss`.
pub fn prose_has_command(text: &str) -> bool {
    let w: Vec<&str> = text
        .split_whitespace()
        .map(|x| x.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_'))
        .collect();
    w.iter().enumerate().any(|(i, x)| {
        let next = w.get(i + 1).copied().unwrap_or("");
        match *x {
            "ss" | "nstat" | "conntrack" | "iptables" | "nft" => {
                next.starts_with('-') || matches!(next, "state" | "list" | "add")
            }
            "sysctl" => next == "-w" || next.starts_with("net."),
            _ => false,
        }
    })
}

/// A word the shell passes through as is: quoted when it holds anything else.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How `tcpdoctor --netns` names `ns`: its `ip netns` name, else a pid (a container
/// name may be ambiguous or long), else its name.
fn netns_selector(ns: &NetnsInfo) -> String {
    if ns.current {
        return "current".to_string();
    }
    match (ns.ip_netns.first(), ns.first_pid) {
        (Some(n), _) => shell_quote(n),
        (None, Some(pid)) if ns.kind != NetnsKind::Container => pid.to_string(),
        _ => shell_quote(&ns.name),
    }
}

/// A file that `nsenter --net=FILE` enters: /run/netns/NAME, /proc/PID/ns/net, or for
/// the user's own namespace /proc/$$/ns/net (the shell's: where they run it).
fn netns_file(ns: &NetnsInfo) -> Option<String> {
    if ns.current {
        return Some("/proc/$$/ns/net".to_string());
    }
    match (ns.ip_netns.first(), ns.first_pid) {
        (Some(n), _) => Some(format!("/run/netns/{}", shell_quote(n))),
        (None, Some(pid)) => Some(format!("/proc/{pid}/ns/net")),
        (None, None) => None,
    }
}

/// `cmd` run inside `ns` from the user's shell.
fn enter(ns: &NetnsInfo, cmd: &str) -> String {
    match (ns.ip_netns.first(), ns.first_pid) {
        (Some(n), _) => format!("ip netns exec {} {cmd}", shell_quote(n)),
        (None, Some(pid)) => format!("nsenter -t {pid} -n {cmd}"),
        // Held open by a bind mount tcpdoctor did not find: the user has to say where.
        (None, None) => format!("nsenter --net=<a file of net:[{}]> {cmd}", ns.inode),
    }
}

/// `tcpdoctor SUB ARGS` with `--netns SELECTOR` after the subcommand.
fn with_netns(cmd: &str, selector: &str) -> Option<String> {
    let rest = cmd.strip_prefix("tcpdoctor ")?;
    let (sub, args) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(
        format!("tcpdoctor {sub} --netns {selector} {args}")
            .trim_end()
            .to_string(),
    )
}

/// One command for every namespace of a finding about several: a loop over their
/// selectors (`tcpdoctor --netns`) or their files (`nsenter --net`).
fn for_each_netns(cmd: &str, namespaces: &[&NetnsInfo]) -> String {
    if cmd.starts_with("tcpdoctor ") {
        let list: Vec<String> = namespaces.iter().map(|n| netns_selector(n)).collect();
        let body = with_netns(cmd, "\"$ns\"").unwrap_or_else(|| cmd.to_string());
        return format!("for ns in {}; do {body}; done", list.join(" "));
    }
    let files: Vec<String> = namespaces
        .iter()
        .map(|n| netns_file(n).unwrap_or_else(|| format!("<a file of net:[{}]>", n.inode)))
        .collect();
    format!(
        "for ns in {}; do nsenter --net=\"$ns\" {cmd}; done",
        files.join(" ")
    )
}

/// Points the commands of `f`, written for the namespace its rule ran in, at
/// `namespaces` (the ones it is about). Nothing changes for a finding about the user's
/// own namespace only. Steps whose commands are still in their prose get one closing
/// step saying where to run them.
pub fn point_commands(f: &mut Finding, namespaces: &[&NetnsInfo]) {
    if namespaces.iter().all(|n| n.current) {
        return;
    }
    let mut prose_commands = false;
    for step in &mut f.fix {
        let Some(cmd) = &mut step.command else {
            prose_commands |= prose_has_command(&step.text);
            continue;
        };
        let tcpdoctor = cmd.starts_with("tcpdoctor ");
        if !tcpdoctor && !acts_on_netns(cmd) {
            continue;
        }
        *cmd = match namespaces {
            [one] if tcpdoctor => with_netns(cmd, &netns_selector(one)).unwrap_or_default(),
            [one] => enter(one, cmd),
            several => for_each_netns(cmd, several),
        };
    }
    if prose_commands {
        let names: Vec<String> = namespaces.iter().map(|n| n.name.clone()).collect();
        let how = match namespaces {
            [one] => enter(one, "COMMAND"),
            several => for_each_netns("COMMAND", several),
        };
        f.fix.push(FixStep::say(format!(
            "The ss and sysctl commands above act on the network namespace they run in: run them inside {} ({how}). For a container, set sysctls in its spec (Kubernetes securityContext.sysctls, docker run --sysctl); a change made with nsenter is lost when it restarts.",
            compact_list(&names, 3)
        )));
    }
}

/// [`point_commands`] for a finding about one namespace.
pub fn point_commands_at(f: &mut Finding, ns: &NetnsInfo) {
    point_commands(f, &[ns]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Nature, Severity};

    fn finding(fix: &[&str]) -> Finding {
        let mut f = Finding::new("close_wait_leak", Severity::Warning, Nature::Live, "t");
        f.fix = fix
            .iter()
            .map(|s| match s.split_once(": ") {
                Some((text, cmd)) => FixStep::run(text, cmd),
                None => FixStep::say(*s),
            })
            .collect();
        f
    }

    fn ns(name: &str, ip: &[&str], pid: Option<u32>) -> NetnsInfo {
        NetnsInfo {
            inode: 4026532198,
            name: name.into(),
            kind: if ip.is_empty() {
                NetnsKind::Container
            } else {
                NetnsKind::IpNetns
            },
            current: false,
            initial: false,
            container: None,
            ip_netns: ip.iter().map(|s| s.to_string()).collect(),
            processes: 1,
            first_pid: pid,
        }
    }

    fn commands(f: &Finding) -> Vec<&str> {
        f.fix.iter().filter_map(|s| s.command.as_deref()).collect()
    }

    #[test]
    fn commands_of_another_namespace_say_where_to_run() {
        let mut f = finding(&[
            "List them: tcpdoctor sockets --state close-wait --pid 9 -i",
            "Stopgap: ss -K state close-wait sport = :80",
        ]);
        point_commands_at(&mut f, &ns("pod default/web", &[], Some(4242)));
        assert_eq!(
            commands(&f),
            [
                "tcpdoctor sockets --netns 'pod default/web' --state close-wait --pid 9 -i",
                "nsenter -t 4242 -n ss -K state close-wait sport = :80"
            ]
        );
        assert_eq!(f.fix.len(), 2, "every command is pointed: no closing note");

        let mut g = finding(&["Set: sysctl -w net.ipv4.tcp_fin_timeout=30"]);
        point_commands_at(&mut g, &ns("blue", &["blue"], Some(1)));
        assert_eq!(
            commands(&g),
            ["ip netns exec blue sysctl -w net.ipv4.tcp_fin_timeout=30"]
        );
        let mut h = finding(&["then run ss -tan in it"]);
        point_commands_at(&mut h, &ns("blue", &["blue"], Some(1)));
        assert!(
            h.fix[1].text.contains("ip netns exec blue COMMAND"),
            "{}",
            h.fix[1].text
        );
    }

    #[test]
    fn the_users_own_namespace_is_left_alone() {
        let mut f = finding(&["Set: sysctl -w net.ipv4.tcp_fin_timeout=30"]);
        let mut own = ns("host", &[], Some(1));
        own.current = true;
        point_commands_at(&mut f, &own);
        assert_eq!(commands(&f), ["sysctl -w net.ipv4.tcp_fin_timeout=30"]);
    }

    #[test]
    fn host_wide_commands_are_not_entered() {
        // tcp_mem and tcp_max_orphans exist only in the initial namespace, fs.* and
        // /proc/PID files are the same everywhere: entering would break or add nothing.
        let host_wide = [
            "Limits: sysctl net.ipv4.tcp_max_orphans net.ipv4.tcp_mem",
            "Raise: sysctl -w fs.file-max=2000000",
            "More room: sysctl -w net.netfilter.nf_conntrack_max=262144",
            "Check: cat /proc/sys/fs/file-nr",
            "Limits: grep 'open files' /proc/42/limits",
            "Relief: prlimit --pid 42 --nofile=65536:65536",
            "Unit: systemctl status 42",
            "Where: grep -rn tcp_fin_timeout /etc/sysctl.conf /etc/sysctl.d",
            "Hash: echo NEW_SIZE > /sys/module/nf_conntrack/parameters/hashsize",
        ];
        let mut f = finding(&host_wide);
        point_commands_at(&mut f, &ns("blue", &["blue"], Some(1)));
        let want: Vec<&str> = host_wide
            .iter()
            .map(|s| s.split_once(": ").expect("step").1)
            .collect();
        assert_eq!(commands(&f), want);
        for netns_bound in [
            "ss -tn | sort -k2,2nr | head",
            "grep TCP: /proc/net/sockstat",
            "nstat -az TcpExtListenOverflows",
            "conntrack -L -p tcp 2>/dev/null | awk '{print $4}' | sort | uniq -c",
            "sysctl net.ipv4.tcp_max_tw_buckets",
            "cat /proc/sys/net/ipv4/ip_local_port_range",
            "iptables -t raw -A OUTPUT -p tcp --sport 80 -j NOTRACK",
        ] {
            assert!(acts_on_netns(netns_bound), "{netns_bound}");
        }
    }

    #[test]
    fn prose_words_are_not_commands() {
        for calm in [
            "Fix the process that leaks.",
            "Restart the process so the address is free.",
            "Keep net.ipv4.tcp_syncookies=1 so a flood costs options.",
            "Use a class of service with less loss.",
        ] {
            assert!(!prose_has_command(calm), "{calm}");
        }
        for cmd in [
            "then run ss -tan in it",
            "run `sysctl -w net.ipv4.tcp_fin_timeout=30`",
            "see nstat -az",
            "check with ss state close-wait",
        ] {
            assert!(prose_has_command(cmd), "{cmd}");
        }
        let mut f = finding(&["Restart the process once fixed: its descriptors come back."]);
        point_commands_at(&mut f, &ns("blue", &["blue"], Some(1)));
        assert_eq!(f.fix.len(), 1, "no closing note for prose about a process");
    }

    #[test]
    fn several_namespaces_get_one_loop_each_command() {
        let blue = ns("blue", &["blue"], Some(10));
        let web = ns("pod default/web", &[], Some(4242));
        let mut own = ns("host", &[], Some(1));
        own.current = true;
        let mut f = finding(&[
            "List: tcpdoctor sockets --state close-wait -i",
            "Set: sysctl -w net.ipv4.ip_local_port_range=\"40000 60999\"",
            "Where: grep -rn ip_local_port_range /etc/sysctl.d",
        ]);
        point_commands(&mut f, &[&own, &blue, &web]);
        assert_eq!(
            commands(&f),
            [
                "for ns in current blue 'pod default/web'; do tcpdoctor sockets --netns \"$ns\" --state close-wait -i; done",
                "for ns in /proc/$$/ns/net /run/netns/blue /proc/4242/ns/net; do nsenter --net=\"$ns\" sysctl -w net.ipv4.ip_local_port_range=\"40000 60999\"; done",
                "grep -rn ip_local_port_range /etc/sysctl.d",
            ]
        );
    }

    #[test]
    fn quoting_keeps_odd_names_one_word() {
        assert_eq!(shell_quote("blue"), "blue");
        assert_eq!(shell_quote("pod a/b"), "'pod a/b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
