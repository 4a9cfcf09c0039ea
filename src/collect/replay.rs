//! A host captured into a folder (`--proc-root DIR`): checks that the folder is a
//! capture, and lists the evidence it lacks. A replay reads only the folder: sockets
//! from `net/tcp{,6}`, counters from `net/{netstat,snmp}`, sysctls from `sys/`, the
//! kernel log from `kmsg`, processes from `PID/`. How to make one: docs/replay.md.

use std::path::{Path, PathBuf};

use crate::model::{Notice, NoticeCode};

/// A folder that cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot replay --proc-root '{}': {source} (a capture holds at least '{}'; see docs/replay.md)", dir.display(), dir.join("net/tcp").display())]
    NoFolder {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot replay --proc-root '{}': it holds no net/tcp ('{}': {source}), so it is not a captured /proc; see docs/replay.md", dir.display(), dir.join("net/tcp").display())]
    NoSockets {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a captured folder holds, beyond the sockets every replay needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub dir: PathBuf,
    /// Every piece of evidence a live run reads but the folder lacks, as
    /// (what is missing, what it is for).
    lacks: Vec<(&'static str, &'static str)>,
}

/// Which evidence a command uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uses {
    /// Sockets, and their owners when `owners` (`states`, `sockets`).
    Sockets { owners: bool },
    /// Everything `check`, `watch` and `serve` judge.
    Diagnosis,
}

impl Capture {
    /// Checks that `dir` exists and holds `net/tcp`, then notes what else is missing.
    pub fn open(dir: &Path) -> Result<Capture, ReplayError> {
        if let Err(source) = std::fs::metadata(dir) {
            return Err(ReplayError::NoFolder {
                dir: dir.to_path_buf(),
                source,
            });
        }
        if let Err(source) = std::fs::metadata(dir.join("net/tcp")) {
            return Err(ReplayError::NoSockets {
                dir: dir.to_path_buf(),
                source,
            });
        }
        let has = |p: &str| dir.join(p).exists();
        let mut lacks = Vec::new();
        for (file, what) in [
            ("net/netstat", "TcpExt counters"),
            ("net/snmp", "Tcp counters"),
            ("net/sockstat", "sockstat"),
            ("sys/net/ipv4/ip_local_port_range", "sysctls"),
            ("sys/fs/file-nr", "file table"),
            ("kmsg", "kernel log"),
        ] {
            if !has(file) {
                lacks.push((file, what));
            }
        }
        let (pids, with_fds) = process_folders(dir);
        if pids == 0 {
            lacks.push(("PID/", "processes"));
        }
        if with_fds == 0 {
            lacks.push(("PID/fd/", "socket owners"));
        }
        Ok(Capture {
            dir: dir.to_path_buf(),
            lacks,
        })
    }

    /// What the folder lacks that `uses` needs.
    pub fn lacks(&self, uses: Uses) -> Vec<String> {
        self.lacks
            .iter()
            .filter(|(file, _)| match uses {
                Uses::Diagnosis => true,
                Uses::Sockets { owners } => owners && *file == "PID/fd/",
            })
            .map(|(file, what)| format!("{file} ({what})"))
            .collect()
    }

    /// The `replay_missing` notice for a command that uses `uses`: what the folder
    /// lacks, and for a diagnosis that one capture is one reading, so no counter
    /// rates. `None` when nothing it uses is missing.
    pub fn notice(&self, uses: Uses) -> Option<Notice> {
        let lacks = self.lacks(uses);
        let mut parts = Vec::new();
        if !lacks.is_empty() {
            parts.push(format!(
                "the capture in '{}' lacks {}",
                self.dir.display(),
                lacks.join(", ")
            ));
        }
        if uses == Uses::Diagnosis {
            parts.push(
                "a capture is one reading of the counters, so no rates (listen overflows/s, resets/s...) are judged"
                    .to_string(),
            );
        }
        (!parts.is_empty()).then(|| Notice::new(NoticeCode::ReplayMissing, parts.join("; ")))
    }
}

/// (numeric folders, those with an `fd` folder).
fn process_folders(dir: &Path) -> (usize, usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut pids = 0;
    let mut with_fds = 0;
    for e in rd.filter_map(Result::ok) {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok())
        {
            pids += 1;
            if e.path().join("fd").is_dir() {
                with_fds += 1;
            }
        }
    }
    (pids, with_fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_is_a_capture_without_kernel_log_or_descriptor_links() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/netns_mixed");
        let c = Capture::open(&dir).expect("a capture");
        assert_eq!(
            c.lacks(Uses::Diagnosis),
            vec!["kmsg (kernel log)", "PID/fd/ (socket owners)"]
        );
        assert_eq!(
            c.lacks(Uses::Sockets { owners: true }),
            vec!["PID/fd/ (socket owners)"]
        );
        assert!(c.lacks(Uses::Sockets { owners: false }).is_empty());
        assert!(c.notice(Uses::Sockets { owners: false }).is_none());
        let n = c.notice(Uses::Diagnosis).expect("notice");
        assert_eq!(n.code, NoticeCode::ReplayMissing);
        assert!(
            n.message.contains("kmsg (kernel log)") && n.message.contains("no rates"),
            "{}",
            n.message
        );
    }

    #[test]
    fn a_missing_folder_or_one_without_sockets_is_refused_by_name() {
        let e = Capture::open(Path::new("/nonexistent/capture")).expect_err("no folder");
        let msg = e.to_string();
        assert!(
            msg.contains("'/nonexistent/capture'") && msg.contains("No such file"),
            "{msg}"
        );
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        let e = Capture::open(&here).expect_err("no net/tcp");
        assert!(e.to_string().contains("holds no net/tcp"), "{e}");
    }
}
