//! The kernel ring buffer, read from `/dev/kmsg` without waiting: whatever is still in
//! the buffer. Each read() returns one record, `prio,seq,usec,flags[,...];message`
//! (Documentation/ABI/testing/dev-kmsg). Needs CAP_SYSLOG when dmesg_restrict is 1.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::model::{text, KernelLogEntry, Notice, NoticeCode};

/// One kernel log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgRecord {
    pub seq: u64,
    /// Microseconds since boot.
    pub usec: u64,
    pub message: String,
}

/// Parses one record; continuation lines (starting with a space: key=value dictionary
/// entries) are dropped. `None` for anything malformed.
pub fn parse_record(raw: &[u8]) -> Option<KmsgRecord> {
    let text = String::from_utf8_lossy(raw);
    let (prefix, rest) = text.split_once(';')?;
    let mut f = prefix.split(',');
    let _prio: u32 = f.next()?.parse().ok()?;
    let seq = f.next()?.parse().ok()?;
    let usec = f.next()?.parse().ok()?;
    // A capture's kmsg is a file anyone could have written: no control characters, a
    // bounded length.
    let message = text::clean(rest.lines().next().unwrap_or(""), text::LOG_LINE_MAX);
    Some(KmsgRecord { seq, usec, message })
}

/// Reads every record currently in the buffer. Records the buffer overwrote while we
/// read (EPIPE) are skipped.
pub fn read_all(path: &Path) -> std::io::Result<Vec<KmsgRecord>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let mut out = Vec::new();
    // A record is at most 8 KiB (CONSOLE_EXT_LOG_MAX); the buffer holds a bounded number.
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..1_000_000 {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend(parse_record(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Where the kernel log is: `/dev/kmsg` on a live host; `<capture>/kmsg` (the records
/// as /dev/kmsg gives them, one per line) when replaying a captured one.
pub fn log_path(proc_root: &Path, replay: bool) -> PathBuf {
    if replay {
        proc_root.join("kmsg")
    } else {
        PathBuf::from("/dev/kmsg")
    }
}

/// The kernel log grouped by message (count, last time seen). `Err` is the notice that
/// says why it could not be read; `Ok(None)` when a replayed capture has no `kmsg`
/// (the capture's inventory says so).
pub fn read_log(proc_root: &Path, replay: bool) -> Result<Option<Vec<KernelLogEntry>>, Notice> {
    let path = log_path(proc_root, replay);
    let records = if replay {
        super::bounded::read(&path, super::bounded::KERNEL_LOG).map(|b| {
            b.split(|c| *c == b'\n')
                .filter_map(parse_record)
                .collect::<Vec<_>>()
        })
    } else {
        read_all(&path)
    };
    let records = match records {
        Ok(r) => r,
        Err(e) if replay && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (run as root, or allow it with kernel.dmesg_restrict=0)"
            } else {
                ""
            };
            return Err(Notice::new(
                NoticeCode::KernelLogUnavailable,
                format!("cannot read the kernel log '{}': {e}{hint}", path.display()),
            ));
        }
    };
    Ok(Some(group(records)))
}

/// One entry per distinct message.
fn group(records: Vec<KmsgRecord>) -> Vec<KernelLogEntry> {
    let mut grouped: BTreeMap<String, KernelLogEntry> = BTreeMap::new();
    for r in records {
        let e = grouped.entry(r.message.clone()).or_insert(KernelLogEntry {
            message: r.message,
            count: 0,
            last_seen_s: 0,
        });
        e.count += 1;
        e.last_seen_s = e.last_seen_s.max(r.usec / 1_000_000);
    }
    grouped.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_rejects_garbage() {
        let r = parse_record(b"4,1234,5678901,-;TCP: too many orphaned sockets\n").expect("record");
        assert_eq!((r.seq, r.usec), (1234, 5678901));
        assert_eq!(r.message, "TCP: too many orphaned sockets");
        let cont = parse_record(b"6,9,10,-,caller=T1;hello\n SUBSYSTEM=net\n").expect("record");
        assert_eq!(cont.message, "hello");
        assert_eq!(parse_record(b"no semicolon"), None);
        assert_eq!(parse_record(b"x,1,2,-;msg"), None);
        assert_eq!(parse_record(b""), None);
    }

    #[test]
    fn a_captured_log_is_grouped_by_message() {
        let dir = std::env::temp_dir().join(format!("tcpdoctor-kmsg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("kmsg"),
            "4,1,2000000,-;TCP: out of memory\n SUBSYSTEM=net\n4,2,5000000,-;TCP: out of memory\n6,3,9,-;hello\n",
        )
        .expect("write");
        let log = read_log(&dir, true).expect("readable").expect("present");
        let missing = read_log(Path::new("/nonexistent/capture"), true).expect("not an error");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(log.len(), 2);
        let oom = log
            .iter()
            .find(|e| e.message == "TCP: out of memory")
            .expect("oom");
        assert_eq!((oom.count, oom.last_seen_s), (2, 5));
        assert_eq!(
            missing, None,
            "a capture without kmsg: said by its inventory"
        );
    }

    #[test]
    fn missing_device_is_an_error_not_a_panic() {
        assert!(read_all(Path::new("/nonexistent/kmsg")).is_err());
    }
}
