//! The one way collectors read a file: regular files only, each up to a size bound.
//!
//! A replayed capture (`--proc-root`) or a configuration tree is input anyone could have
//! made: a FIFO put where `net/tcp` was expected would block `open()` forever, a link to
//! `/dev/zero` would be read until memory runs out, `/dev/urandom` never ends. So every
//! read opens without blocking (`O_NONBLOCK`, `O_NOCTTY`), refuses anything that is not a
//! regular file once open (`fstat` on the descriptor, so a file swapped after a check
//! cannot slip through), and stops at a bound. procfs and sysfs files are regular files
//! that report size 0, so the bound is enforced while reading, never taken from the size.
//!
//! Character devices that are read on purpose (`/dev/kmsg`) do not come through here.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Bound for the small text files of `/proc` and `/sys`: a sysctl, `comm`, `limits`,
/// `status`, `stat`, `net/netstat`, `net/snmp`, `net/sockstat`, cgroup files. The
/// largest a kernel writes is `net/netstat` at a few KiB.
pub const SMALL: u64 = 1 << 20;

/// Bound for one `/proc/net/tcp` or `tcp6`: about 4 GiB, some 28 million IPv4 sockets of
/// 150 bytes (a host at a million sockets writes 150 MB). Read as a stream, so memory
/// does not grow with it; the bound only ends a file that never ends.
pub const SOCKET_TABLE: u64 = 4 << 30;

/// Bound for a replayed kernel log (`<capture>/kmsg`): the ring buffer is at most
/// 32 MiB (CONFIG_LOG_BUF_SHIFT 25) and its text a little more.
pub const KERNEL_LOG: u64 = 64 << 20;

/// How much of `/proc/PID/cmdline` is read: enough for any command line worth showing
/// and for the flags read from it (`nginx -c FILE`); the rest is cut, not refused.
pub const COMMAND_LINE: u64 = 64 << 10;

/// Opens `path` for reading if it is a regular file; anything else (FIFO, device,
/// socket, directory) is an `InvalidInput` error saying so, returned without blocking.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let kind = f.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", describe(kind)),
        ));
    }
    // O_NONBLOCK means nothing to a regular file's reads; it stays set.
    Ok(f)
}

/// What a non-regular file is, for the error.
fn describe(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// The whole regular file `path`, or an `InvalidData` error if it holds more than
/// `limit` bytes.
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let hint = f.metadata().map_or(0, |m| m.len()).min(limit);
    let mut buf = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    f.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_big(limit));
    }
    Ok(buf)
}

/// [`read`] as UTF-8 text (`InvalidData` if it is not).
pub fn read_to_string(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// At most the first `limit` bytes of the regular file `path`; the rest is not read.
pub fn read_prefix(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    Ok(buf)
}

/// A reader of the regular file `path` that fails with `InvalidData` once more than
/// `limit` bytes came through it, for files parsed as a stream.
pub fn open_stream(path: &Path, limit: u64) -> io::Result<Bounded<File>> {
    Ok(Bounded {
        inner: open_regular(path)?,
        left: limit,
        limit,
    })
}

/// See [`open_stream`].
#[derive(Debug)]
pub struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // One byte more tells a file of exactly `limit` bytes from a longer one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(too_big(self.limit)),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn too_big(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than the {} read per file", bytes(limit)),
    )
}

/// `4 GiB`, `64 KiB`, `100 bytes`.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::PathBuf;

    fn scratch(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tcpdoctor-bounded-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_at_once() {
        let d = scratch("kinds");
        let fifo = d.join("tcp");
        mkfifo(&fifo);
        // Nobody writes to the FIFO: a blocking open would never return.
        for (path, what) in [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a character device"),
            (Path::new("/dev/urandom"), "a character device"),
            (d.as_path(), "a directory"),
        ] {
            let e = read(path, SMALL).expect_err("not a regular file");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{}", path.display());
            assert!(e.to_string().contains(what), "{}: {e}", path.display());
            assert!(open_stream(path, SMALL).is_err());
            assert!(read_prefix(path, 16).is_err());
        }
        // A symlink to a device is the device.
        let link = d.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        assert!(read(&link, SMALL).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn procfs_files_are_regular_and_read_despite_their_zero_size() {
        let text = read_to_string(Path::new("/proc/self/status"), SMALL).expect("status");
        assert!(text.contains("Pid:"));
        assert!(std::fs::metadata("/proc/self/status").expect("stat").len() == 0);
    }

    #[test]
    fn the_bound_is_exact() {
        let d = scratch("bound");
        let f = d.join("f");
        std::fs::write(&f, b"0123456789").expect("write");
        assert_eq!(read(&f, 10).expect("exactly the bound"), b"0123456789");
        let e = read(&f, 9).expect_err("one byte over");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("9 bytes read per file"), "{e}");
        assert_eq!(read_prefix(&f, 4).expect("prefix"), b"0123");
        let mut s = String::new();
        open_stream(&f, 10)
            .expect("open")
            .read_to_string(&mut s)
            .expect("exactly the bound");
        assert_eq!(s, "0123456789");
        let mut s = String::new();
        let e = open_stream(&f, 7)
            .expect("open")
            .read_to_string(&mut s)
            .expect_err("over the bound");
        assert!(e.to_string().contains("7 bytes"), "{e}");
        assert_eq!(bytes(SOCKET_TABLE), "4 GiB");
        assert_eq!(bytes(COMMAND_LINE), "64 KiB");
        let _ = std::fs::remove_dir_all(&d);
    }
}
