//! File descriptor headroom: the system file table (`fs.file-nr`, `fs.file-max`) and the
//! N processes closest to their soft `RLIMIT_NOFILE`.

use super::processes::comm_of;
use super::{Kind, Text};
use crate::model::{Limit, Snapshot};

/// What one family shows of a process: from (open fds, soft limit).
type FdValue = fn(u64, u64) -> u64;

/// `s`: every namespace folded into one (the file table is the primary's: host-wide).
pub(super) fn write(t: &mut Text, s: &Snapshot, top: usize) {
    if let Some(ft) = s.file_table() {
        t.single(
            "tcpdoctor_file_table_allocated",
            Kind::Gauge,
            "File handles allocated system-wide (first field of fs.file-nr).",
            ft.allocated,
        );
        t.single(
            "tcpdoctor_file_table_max",
            Kind::Gauge,
            "System-wide file handle limit (fs.file-max).",
            ft.max,
        );
        t.single(
            "tcpdoctor_file_table_headroom",
            Kind::Gauge,
            "File handles left system-wide (fs.file-max - allocated).",
            ft.max.saturating_sub(ft.allocated),
        );
    }

    // The processes closest to their soft RLIMIT_NOFILE, by the fraction used (what
    // the alert compares); unlimited or unknown limits cannot run out and are left out.
    let mut worst: Vec<(u32, u64, u64)> = s
        .processes
        .values()
        .filter_map(|p| match p.nofile_soft {
            Some(Limit::Value(soft)) if soft > 0 => Some((p.pid, p.open_fds, soft)),
            _ => None,
        })
        .collect();
    worst.sort_by(|a, b| {
        let (ra, rb) = (a.1 as f64 / a.2 as f64, b.1 as f64 / b.2 as f64);
        rb.total_cmp(&ra).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0))
    });
    worst.truncate(top);
    let families: [(&str, &str, FdValue); 3] = [
        (
            "tcpdoctor_process_open_fds",
            "Open file descriptors of the N processes closest to their soft RLIMIT_NOFILE.",
            |open, _| open,
        ),
        (
            "tcpdoctor_process_fd_limit",
            "Soft RLIMIT_NOFILE of the same processes.",
            |_, soft| soft,
        ),
        (
            "tcpdoctor_process_fd_headroom",
            "Descriptors left before EMFILE (soft RLIMIT_NOFILE - open fds) for the same processes.",
            |open, soft| soft.saturating_sub(open),
        ),
    ];
    for (name, help, value) in families {
        t.family(name, Kind::Gauge, help);
        for (pid, open, soft) in &worst {
            t.sample(
                name,
                &[("comm", comm_of(s, *pid)), ("pid", &pid.to_string())],
                value(*open, *soft),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{family, snapshot};
    use super::*;

    fn written(s: &Snapshot) -> String {
        let mut t = Text::default();
        write(&mut t, s, 2);
        t.buf
    }

    #[test]
    fn processes_closest_to_their_limit_first_with_consistent_numbers() {
        let text = written(&snapshot());
        // Worst first: 90 of 100 beats 10 of 1000; cron (1 of 1024) is beyond top 2.
        assert_eq!(
            family(&text, "tcpdoctor_process_fd_headroom"),
            vec![
                "tcpdoctor_process_fd_headroom{comm=\"web\\\"app\",pid=\"10\"} 10",
                "tcpdoctor_process_fd_headroom{comm=\"db\",pid=\"11\"} 990",
            ]
        );
        assert!(text.contains("tcpdoctor_process_open_fds{comm=\"web\\\"app\",pid=\"10\"} 90\n"));
        assert!(text.contains("tcpdoctor_process_fd_limit{comm=\"db\",pid=\"11\"} 1000\n"));
    }

    #[test]
    fn unlimited_processes_are_left_out_and_the_file_table_is_exact() {
        let mut s = snapshot();
        for p in s.processes.values_mut() {
            p.nofile_soft = Some(Limit::Unlimited);
        }
        let text = written(&s);
        assert!(family(&text, "tcpdoctor_process_fd_headroom").is_empty());
        assert!(text.contains("# TYPE tcpdoctor_process_fd_headroom gauge\n"));
        assert!(text.contains("tcpdoctor_file_table_allocated 1000\n"));
        assert!(text.contains("tcpdoctor_file_table_max 9223372036854775807\n"));
        assert!(text.contains("tcpdoctor_file_table_headroom 9223372036854774807\n"));
        s.sysctls.remove("fs.file-nr");
        assert!(!written(&s).contains("tcpdoctor_file_table"));
    }
}
