//! Keys from `watch`'s terminal, read with poll(2) and read(2) on standard input.
//!
//! crossterm's event reader (0.28) retries a read that returns 0 (end of file) or fails
//! with EIO without ever returning, so when the terminal went away (an ssh session
//! dropping: the pseudo-terminal's master closes) `watch` spun at 60-75% of a core inside
//! `event::poll`, never looked at its signal flags again, and only SIGKILL ended it
//! (issue 16). Reading the terminal here makes end of file, an error, and a hang-up
//! reported by poll(2) what they are: the end of the session.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::render::watch::Key;

/// What waiting on the terminal gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Keys typed (possibly none: an escape sequence of no interest).
    Keys(Vec<Key>),
    /// Nothing within the timeout, or a signal interrupted the wait.
    Nothing,
    /// The terminal is gone: end of file, a hang-up, or an error reading it (why).
    Gone(String),
}

/// Waits up to `timeout` for input on `fd` (a terminal in raw mode) and reads what is
/// there.
pub fn wait_input(fd: RawFd, timeout: Duration) -> Input {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Input::Nothing
        } else {
            Input::Gone(format!("cannot wait on the terminal: {e}"))
        };
    }
    if n == 0 {
        return Input::Nothing;
    }
    if p.revents & libc::POLLNVAL != 0 {
        return Input::Gone("the terminal's descriptor is closed".into());
    }
    if p.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        return Input::Gone("the terminal hung up".into());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: read into a buffer we own, at most its length.
    let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    match got {
        0 => Input::Gone("end of file on the terminal".into()),
        n if n > 0 => Input::Keys(parse_keys(&buf[..n as usize])),
        _ => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Input::Nothing,
                _ => Input::Gone(format!("cannot read the terminal: {e}")),
            }
        }
    }
}

/// The keys `watch` acts on in what one read of a raw-mode terminal gave. A lone ESC at
/// the end of a read is the Esc key; ESC followed by `[` or `O` starts a sequence
/// (arrows, Home, End, Page Up/Down; others are skipped whole).
pub fn parse_keys(bytes: &[u8]) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match b {
            0x03 => keys.push(Key::Interrupt),
            b'\r' | b'\n' => keys.push(Key::Enter),
            0x7f | 0x08 => keys.push(Key::Backspace),
            0x1b => match bytes.get(i) {
                Some(b'[') | Some(b'O') => {
                    let start = i + 1;
                    // Parameters and intermediates, then one final byte 0x40-0x7e.
                    let end = bytes[start..]
                        .iter()
                        .position(|c| (0x40..=0x7e).contains(c))
                        .map(|p| start + p);
                    let Some(end) = end else {
                        // Cut short: nothing more in this read is a key.
                        break;
                    };
                    if let Some(k) = sequence_key(&bytes[start..end], bytes[end]) {
                        keys.push(k);
                    }
                    i = end + 1;
                }
                _ => keys.push(Key::Esc),
            },
            c if c < 0x20 => {}
            _ => {
                // One UTF-8 character; a byte that starts none is skipped.
                let len = match b {
                    0xc2..=0xdf => 2,
                    0xe0..=0xef => 3,
                    0xf0..=0xf4 => 4,
                    _ => 1,
                };
                let from = i - 1;
                let to = (from + len).min(bytes.len());
                match std::str::from_utf8(&bytes[from..to])
                    .ok()
                    .and_then(|s| s.chars().next())
                {
                    Some(c) if c != '\u{7f}' => {
                        keys.push(Key::Char(c));
                        i = to;
                    }
                    _ => {}
                }
            }
        }
    }
    keys
}

/// The key of a CSI or SS3 sequence: its parameters and final byte.
fn sequence_key(params: &[u8], last: u8) -> Option<Key> {
    Some(match (params, last) {
        (_, b'A') => Key::Up,
        (_, b'B') => Key::Down,
        (_, b'H') => Key::Home,
        (_, b'F') => Key::End,
        (b"1" | b"7", b'~') => Key::Home,
        (b"4" | b"8", b'~') => Key::End,
        (b"5", b'~') => Key::PageUp,
        (b"6", b'~') => Key::PageDown,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn plain_keys_control_keys_and_utf8() {
        assert_eq!(
            parse_keys(b"q/ab\r\x7f\x03"),
            vec![
                Key::Char('q'),
                Key::Char('/'),
                Key::Char('a'),
                Key::Char('b'),
                Key::Enter,
                Key::Backspace,
                Key::Interrupt
            ]
        );
        assert_eq!(
            parse_keys("é€😀".as_bytes()),
            vec![Key::Char('é'), Key::Char('€'), Key::Char('😀')]
        );
        // A broken UTF-8 byte and other control characters are skipped.
        assert_eq!(parse_keys(b"\xff\x01\tx"), vec![Key::Char('x')]);
        assert_eq!(parse_keys(b"\xc3"), vec![]);
    }

    #[test]
    fn escape_sequences_and_a_lone_escape() {
        assert_eq!(
            parse_keys(b"\x1b[A\x1b[B\x1bOA\x1b[5~\x1b[6~\x1b[H\x1b[F\x1b[1~\x1b[4~"),
            vec![
                Key::Up,
                Key::Down,
                Key::Up,
                Key::PageUp,
                Key::PageDown,
                Key::Home,
                Key::End,
                Key::Home,
                Key::End
            ]
        );
        assert_eq!(parse_keys(b"\x1b"), vec![Key::Esc]);
        assert_eq!(parse_keys(b"\x1bq"), vec![Key::Esc, Key::Char('q')]);
        // Unknown sequences (F5, a mouse report, a focus event) are skipped whole.
        assert_eq!(
            parse_keys(b"\x1b[15~\x1b[<0;3;4M\x1b[Iq"),
            vec![Key::Char('q')]
        );
        // A sequence cut by the end of the read yields nothing.
        assert_eq!(parse_keys(b"\x1b[1;5"), vec![]);
    }

    #[test]
    fn end_of_file_and_hang_up_are_gone_silence_is_nothing() {
        let (r, w) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert_eq!(
            wait_input(r.as_raw_fd(), Duration::from_millis(10)),
            Input::Nothing
        );
        use std::io::Write;
        (&w).write_all(b"q").expect("write");
        assert_eq!(
            wait_input(r.as_raw_fd(), Duration::from_secs(5)),
            Input::Keys(vec![Key::Char('q')])
        );
        drop(w);
        assert!(matches!(
            wait_input(r.as_raw_fd(), Duration::from_secs(5)),
            Input::Gone(_)
        ));
    }
}
