//! The kernel ring buffer, read from `/dev/kmsg` without waiting: whatever is still in
//! the buffer. Each read() returns one record, `prio,seq,usec,flags[,...];message`
//! (Documentation/ABI/testing/dev-kmsg). Needs CAP_SYSLOG when dmesg_restrict is 1.

use std::io::Read;
use std::path::Path;

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
    let message = rest.lines().next().unwrap_or("").to_string();
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
    fn missing_device_is_an_error_not_a_panic() {
        assert!(read_all(Path::new("/nonexistent/kmsg")).is_err());
    }
}
