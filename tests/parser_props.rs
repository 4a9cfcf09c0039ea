//! Property tests of every parser of outside input, in process: sock_diag replies,
//! `/proc` files (net/tcp, netstat/snmp, sockstat, limits, status, kmsg, cgroup),
//! threshold flags and config files (TOML), nginx configurations, JIT perf maps, and the
//! names and table cells the renderers print. Inputs are the real captures in tests/fixtures,
//! corrupted (common/fuzz.rs), plus arbitrary bytes. Whatever the input: no panic, and
//! what comes out keeps its invariants (a skipped line is counted, a name is printable
//! and bounded, an error is one short line).
//!
//! 256 cases per property by default; the long mode is proptest's own knob:
//! `PROPTEST_CASES=100000 cargo test --release --test parser_props`.

mod common;

use std::path::PathBuf;

use proptest::prelude::*;

use common::fixtures::repo_path;
use common::fuzz::{self, Rng};
use tcpdoctor::collect::netlink::parse::{parse_datagram, DumpStats};
use tcpdoctor::collect::procfs::{counters, limits, net_tcp, sockstat, status};
use tcpdoctor::collect::symbolize::PerfMap;
use tcpdoctor::collect::{cgroup, kmsg};
use tcpdoctor::model::{text, Family, Socket, StateSet};
use tcpdoctor::render::{Style, Table, CELL_MAX};

/// The captured files of one kind, read once.
fn corpus(dirs: &[&str], keep: impl Fn(&PathBuf) -> bool) -> Vec<Vec<u8>> {
    let files: Vec<Vec<u8>> = dirs
        .iter()
        .flat_map(|d| fuzz::files_under(&repo_path(d)))
        .filter(|p| keep(p) && !p.ends_with("NOTE.md"))
        .map(|p| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    assert!(!files.is_empty(), "no corpus in {dirs:?}");
    files
}

/// One corpus file after `n` mutations picked by `seed`.
fn corrupted(corpus: &[Vec<u8>], pick: usize, seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut data = corpus[pick % corpus.len()].clone();
    for _ in 0..n {
        fuzz::mutate(&mut rng, &mut data);
    }
    data
}

fn named(name: &'static str) -> impl Fn(&PathBuf) -> bool {
    move |p| p.file_name().is_some_and(|f| f == name)
}

proptest! {
    #[test]
    fn netlink_replies_never_panic(pick in 0usize..64, seed: u64, n in 0usize..6) {
        let replies = corpus(&["tests/fixtures/netlink"], named("reply.bin"));
        let data = corrupted(&replies, pick, seed, n);
        let mut stats = DumpStats::default();
        let mut seen = 0u64;
        let _ = parse_datagram(&data, &mut stats, &mut |s: &Socket| {
            seen += 1;
            assert!(s.local.address.is_ipv4() == (s.family == Family::V4) || s.local.address.is_ipv6());
        });
        // A reply of N bytes cannot hold more than N / 72 sockets (header + inet_diag_msg).
        prop_assert!(seen <= data.len() as u64 / 72 + 1);
    }

    #[test]
    fn proc_net_tcp_counts_every_line(pick in 0usize..64, seed: u64, n in 0usize..8) {
        let tables = corpus(&["tests/fixtures/proc"], |p| {
            p.file_name().is_some_and(|f| f == "tcp" || f == "tcp6")
        });
        let data = corrupted(&tables, pick, seed, n);
        for family in [Family::V4, Family::V6] {
            let mut seen = 0u64;
            let stats = net_tcp::parse(data.as_slice(), family, StateSet::all(), &mut |s: &Socket| {
                assert_eq!(s.family, family);
                seen += 1;
            })
            .expect("in-memory read");
            prop_assert_eq!(seen, stats.sockets);
            let lines = data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
            prop_assert!(stats.sockets + stats.skipped + stats.repeated <= lines);
            if stats.skipped > 0 {
                prop_assert!(stats.first_error.is_some());
            }
        }
    }

    #[test]
    fn proc_net_tcp_read_twice_over_is_the_same_sockets(pick in 0usize..64, seed: u64) {
        // The kernel repeats entries of a table that changes during the read: a file
        // holding every line twice, shuffled, passes on each socket once.
        let tables = corpus(&["tests/fixtures/proc"], named("tcp"));
        let data = tables[pick % tables.len()].clone();
        let mut rng = Rng::new(seed);
        let mut lines: Vec<&[u8]> = data.split(|b| *b == b'\n').skip(1).filter(|l| !l.is_empty()).collect();
        let once: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
        lines.extend(once.iter().map(Vec::as_slice));
        for i in (1..lines.len()).rev() {
            lines.swap(i, rng.below(i + 1));
        }
        let twice = lines.join(&b'\n');
        let collect = |bytes: &[u8]| {
            let mut v = Vec::new();
            net_tcp::parse(bytes, Family::V4, StateSet::all(), &mut |s: &Socket| {
                v.push((s.local, s.remote, s.inode))
            })
            .expect("in-memory read");
            v.sort();
            v
        };
        prop_assert_eq!(collect(&data), collect(&twice));
    }

    #[test]
    fn proc_counters_and_small_files_never_panic(pick in 0usize..64, seed: u64, n in 0usize..8) {
        let files = corpus(&["tests/fixtures/proc"], |p| {
            ["netstat", "snmp", "sockstat", "sockstat6", "limits", "status", "comm", "cmdline"]
                .iter()
                .any(|f| p.file_name().is_some_and(|x| x == *f))
        });
        let data = corrupted(&files, pick, seed, n);
        let text = String::from_utf8_lossy(&data);
        let (_, errors) = counters::parse(&text);
        for e in errors {
            prop_assert!(e.to_string().len() < 400, "{}", e);
        }
        let _ = sockstat::parse_tcp(&text);
        let _ = limits::parse_nofile(&text);
        let _ = status::effective_caps(&data);
        let _ = status::nspid(&data);
    }

    #[test]
    fn kernel_log_records_come_out_printable(raw: Vec<u8>, seed: u64) {
        let mut rng = Rng::new(seed);
        let mut rec = b"6,1234,5678,-;".to_vec();
        rec.extend_from_slice(&raw);
        fuzz::mutate(&mut rng, &mut rec);
        if let Some(r) = kmsg::parse_record(&rec) {
            prop_assert!(text::is_clean(&r.message));
            prop_assert!(r.message.chars().count() <= text::LOG_LINE_MAX);
        }
    }

    #[test]
    fn cgroup_paths_never_panic(pick in 0usize..64, seed: u64, n in 0usize..6) {
        let files = corpus(&["tests/fixtures/cgroup/proc"], |p| {
            p.extension().is_some_and(|e| e == "cgroup")
        });
        let data = corrupted(&files, pick, seed, n);
        let text = String::from_utf8_lossy(&data);
        for path in cgroup::cgroup_paths(&text) {
            let _ = cgroup::container_from_path(path);
        }
        let _ = cgroup::parse_proc_cgroup(&text);
    }

    #[test]
    fn nginx_configurations_never_panic(pick in 0usize..64, seed: u64, n in 0usize..6) {
        let files = corpus(&["tests/fixtures/nginx"], |p| {
            p.extension().is_some_and(|e| e == "conf")
        });
        let data = corrupted(&files, pick, seed, n);
        if let Err(e) = tcpdoctor::collect::nginx::parse::parse(&data, 0) {
            prop_assert!(e.to_string().len() < 1000, "{} bytes of error", e.to_string().len());
        }
    }

    #[test]
    fn threshold_flags_are_refused_in_one_short_line(key in "[a-z_]{0,40}", value: String) {
        let given = format!("{key}={value}");
        if let Err(e) = tcpdoctor::settings::thresholds(None, &[given]) {
            let e = e.to_string();
            prop_assert_eq!(e.lines().count(), 1, "{}", e);
            // The error quotes a prefix of the value, never all of it.
            prop_assert!(e.chars().count() < 700, "{} chars", e.chars().count());
        }
    }

    #[test]
    fn perf_maps_count_every_line_and_name_only_what_holds_the_address(
        pick in 0usize..64,
        seed: u64,
        n in 0usize..8,
        raw: Vec<u8>,
        probes in proptest::collection::vec(any::<u64>(), 0..16),
    ) {
        let maps = corpus(&["tests/fixtures/perfmap"], |p| p.extension().is_some_and(|e| e == "map"));
        for data in [corrupted(&maps, pick, seed, n), raw.clone()] {
            let map = PerfMap::parse(data.as_slice()).expect("in-memory read");
            // Every line that is not blank is either kept or counted as skipped.
            let lines = data
                .split(|&b| b == b'\n')
                .filter(|l| l.iter().any(|&b| b != b'\r'))
                .count() as u64;
            prop_assert_eq!(map.skipped + map.entries().len() as u64, lines);
            let starts = map.entries().iter().take(32).map(|e| e.start + e.size / 2);
            for addr in probes.iter().copied().chain(starts) {
                if let Some(e) = map.lookup(addr) {
                    prop_assert!(e.start <= addr && addr - e.start < e.size, "{:x} in {:?}", addr, e);
                }
            }
            for e in map.entries().iter().take(32) {
                prop_assert!(map.lookup(e.start).is_some());
            }
        }
    }

    #[test]
    fn names_are_printable_and_bounded(raw: Vec<u8>, max in 0usize..100) {
        let s = text::name(&raw, max);
        prop_assert!(text::is_clean(&s));
        prop_assert!(s.chars().count() <= max);
        let c = text::command_line(&raw);
        prop_assert!(text::is_clean(&c));
    }

    #[test]
    fn tables_take_any_cell(cells in proptest::collection::vec(any::<String>(), 1..6), big in 0usize..3) {
        let mut t = Table::new(&[("A", false), ("B", true)]);
        for c in &cells {
            let mut c = c.clone();
            if big == 0 {
                c.push_str(&"x".repeat(70_000));
            }
            t.row(vec![(c.clone(), None), (c, None)]);
        }
        let mut out = Vec::new();
        t.write(&mut out, Style { color: false }).expect("write to memory");
        let text = String::from_utf8(out).expect("utf8");
        for line in text.lines() {
            prop_assert!(text::is_clean(line));
            prop_assert!(line.chars().count() <= 2 * CELL_MAX + 2);
        }
    }
}

proptest! {
    // Each case writes a file: fewer of them.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn config_files_are_refused_in_one_short_line(seed: u64, n in 0usize..6) {
        let good = b"close_wait_warn = 3\nport_warn_pct = 50\nfd_critical_pct = 95.5\n".to_vec();
        let data = corrupted(&[good], 0, seed, n);
        let dir = common::fixtures::TempDir::new("toml-prop");
        let path = dir.path().join("tcpdoctor.toml");
        std::fs::write(&path, &data).expect("write config");
        if let Err(e) = tcpdoctor::settings::thresholds(Some(&path), &[]) {
            let e = e.to_string();
            prop_assert_eq!(e.lines().count(), 1, "{}", e);
            prop_assert!(e.chars().count() < 800, "{} chars", e.chars().count());
        }
    }
}
