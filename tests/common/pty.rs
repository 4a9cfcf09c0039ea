//! A child on a pseudo-terminal this test owns: its output collected by a reader
//! thread, and the master side closable at will, as an ssh server closes it when the
//! connection drops. Every wait is bounded; the child is killed by its pid if the test
//! ends first.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::run::{kill_if_running, wait_exit, wait_for};

/// A child whose standard input, output and error are the slave side of a new
/// pseudo-terminal, in a session of its own. `controlling`: the terminal is its
/// controlling terminal (closing the master then also sends it SIGHUP, as for a login
/// shell's child); otherwise it merely has the terminal open (as a process re-parented
/// after its session ended), and closing the master shows only as end of file or EIO.
pub struct PtyChild {
    pub child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    hang_up: Arc<AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl PtyChild {
    pub fn spawn(mut cmd: Command, cols: u16, rows: u16, controlling: bool) -> PtyChild {
        let (master, slave) = open_pty(cols, rows);
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty"));
        cmd.stdin(io(&slave)).stdout(io(&slave)).stderr(io(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs before exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if controlling && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd.spawn().expect("spawn on the pty");
        drop(slave);
        let output = Arc::new(Mutex::new(Vec::new()));
        let hang_up = Arc::new(AtomicBool::new(false));
        let reader = {
            let (output, hang_up) = (Arc::clone(&output), Arc::clone(&hang_up));
            let mut master = File::from(master);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // Bounded by the child: it ends at EIO once every slave descriptor is
                // closed, or when the test hangs up.
                while !hang_up.load(Ordering::SeqCst) {
                    let mut p = libc::pollfd {
                        fd: master.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    if unsafe { libc::poll(&mut p, 1, 50) } <= 0 {
                        continue;
                    }
                    match master.read(&mut buf) {
                        Ok(n) if n > 0 => {
                            if let Ok(mut o) = output.lock() {
                                o.extend_from_slice(&buf[..n]);
                            }
                        }
                        _ => return,
                    }
                }
                // Dropping `master` closes it: the terminal is gone.
            })
        };
        PtyChild {
            child,
            output,
            hang_up,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote so far.
    pub fn output(&self) -> Vec<u8> {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits (bounded) until the output contains `needle`.
    pub fn wait_output(&self, needle: &[u8], timeout: Duration) -> bool {
        wait_for(timeout, Duration::from_millis(50), || {
            contains(&self.output(), needle).then_some(())
        })
        .is_some()
    }

    /// Closes the master side, as a dropped ssh connection does.
    pub fn hang_up(&mut self) {
        self.hang_up.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped (reaping takes &mut self).
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_exit(&mut self.child, timeout);
        if status.is_some() {
            // Let the reader take the last output (it ends at EIO).
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
        }
        status
    }
}

impl Drop for PtyChild {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
        self.hang_up.store(true, Ordering::SeqCst);
    }
}

/// A new pseudo-terminal (master, slave) of `cols` x `rows`, both close-on-exec from
/// the start: other tests of this process fork children at any moment, and a copy of
/// the master in one of them would keep the terminal from ever hanging up.
fn open_pty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let last = std::io::Error::last_os_error;
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(m >= 0, "posix_openpt: {}", last());
    // SAFETY: a descriptor posix_openpt just returned, owned from here on.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: grantpt/unlockpt on the master we own.
    let ok = unsafe { libc::grantpt(m) == 0 && libc::unlockpt(m) == 0 };
    assert!(ok, "grantpt/unlockpt: {}", last());
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name of at most name.len() bytes.
    let rc = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    assert_eq!(
        rc,
        0,
        "ptsname_r: {}",
        std::io::Error::from_raw_os_error(rc)
    );
    // SAFETY: the name ptsname_r just wrote, NUL-terminated.
    let s = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    assert!(s >= 0, "open the pty's slave: {}", last());
    // SAFETY: a descriptor open just returned.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    let rc = unsafe { libc::ioctl(s, libc::TIOCSWINSZ, &size) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", last());
    (master, slave)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
