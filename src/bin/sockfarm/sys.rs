//! Checked wrappers around the few libc calls sockfarm needs (sockets, TCP_INFO,
//! rlimits, fork, pipes, poll, signals). Every failure becomes a `FarmError` that
//! names the call and the address involved; nothing here prints or panics.

use std::ffi::c_int;
use std::fmt;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An error with enough context to act on; sockfarm prints it and exits 1.
#[derive(Debug)]
pub struct FarmError(pub String);

impl fmt::Display for FarmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FarmError {}

pub type Result<T> = std::result::Result<T, FarmError>;

/// Builds an error from a message (no OS error involved).
pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(FarmError(msg.into()))
}

/// Wraps `errno` of the call that just failed, prefixed by what we tried to do.
fn last_os(what: impl fmt::Display) -> FarmError {
    FarmError(format!("{what}: {}", io::Error::last_os_error()))
}

/// Returns `Ok(ret)` when a libc call returned >= 0, else the errno with context.
fn check(ret: c_int, what: impl fmt::Display) -> Result<c_int> {
    if ret < 0 {
        Err(last_os(what))
    } else {
        Ok(ret)
    }
}

/// Kernel TCP state codes (include/net/tcp_states.h) that sockfarm waits for.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;

/// Kernel spelling of a TCP state code, for error messages.
pub fn state_name(code: u8) -> &'static str {
    match code {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// A `sockaddr_storage` filled from a std address, with the length the kernel expects.
fn to_raw(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Converts what the kernel wrote into a std address; `None` for other families.
fn from_raw(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn family_of(ip: &IpAddr) -> c_int {
    match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

/// A new blocking TCP socket of the address family of `ip`, close-on-exec.
pub fn tcp_socket(ip: &IpAddr) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned by us from here on.
    let fd = unsafe {
        libc::socket(
            family_of(ip),
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    let fd = check(fd, "socket(SOCK_STREAM)")?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt_raw<T>(fd: RawFd, level: c_int, name: c_int, value: &T, what: &str) -> Result<()> {
    // SAFETY: value points to a live T and the length matches it.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(ret, format_args!("setsockopt({what})")).map(|_| ())
}

/// Sets an integer socket option; `what` names it in errors.
pub fn set_int_opt(
    fd: &OwnedFd,
    level: c_int,
    name: c_int,
    value: c_int,
    what: &str,
) -> Result<()> {
    setsockopt_raw(fd.as_raw_fd(), level, name, &value, what)
}

/// SO_LINGER {on, 0 s}: close() then aborts the connection with an RST instead of a
/// FIN (tcp_close() -> tcp_disconnect() -> tcp_send_active_reset()).
pub fn set_linger_zero(fd: &OwnedFd) -> Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt_raw(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &l,
        "SO_LINGER",
    )
}

/// Bounds blocking connect()/send() (SO_SNDTIMEO) or accept()/recv() (SO_RCVTIMEO).
pub fn set_timeout(fd: &OwnedFd, name: c_int, timeout: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    let what = if name == libc::SO_SNDTIMEO {
        "SO_SNDTIMEO"
    } else {
        "SO_RCVTIMEO"
    };
    setsockopt_raw(fd.as_raw_fd(), libc::SOL_SOCKET, name, &tv, what)
}

pub fn bind(fd: &OwnedFd, addr: &SocketAddr) -> Result<()> {
    let (storage, len) = to_raw(addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &storage as *const _ as *const libc::sockaddr,
            len,
        )
    };
    check(ret, format_args!("bind to {addr}")).map(|_| ())
}

pub fn listen(fd: &OwnedFd, backlog: u32, addr: &SocketAddr) -> Result<()> {
    let backlog = c_int::try_from(backlog).unwrap_or(c_int::MAX);
    // SAFETY: plain syscall on a descriptor we own.
    let ret = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    check(ret, format_args!("listen on {addr}")).map(|_| ())
}

/// connect() without waiting for the handshake (the socket is made non-blocking
/// first); EINPROGRESS is the expected answer.
pub fn connect_nowait(fd: &OwnedFd, addr: &SocketAddr) -> Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    check(flags, "fcntl(F_GETFL)")?;
    // SAFETY: as above.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    check(ret, "fcntl(F_SETFL, O_NONBLOCK)")?;
    let ret = raw_connect(fd, addr);
    if ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS) {
        return Ok(());
    }
    check(ret, format_args!("connect to {addr}")).map(|_| ())
}

/// connect(2) itself: returns its result; errno is left for the caller.
fn raw_connect(fd: &OwnedFd, addr: &SocketAddr) -> c_int {
    let (storage, len) = to_raw(addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &storage as *const _ as *const libc::sockaddr,
            len,
        )
    }
}

/// Blocking connect; on loopback the handshake completes inside the call. The
/// caller bounds it with SO_SNDTIMEO.
pub fn connect(fd: &OwnedFd, addr: &SocketAddr) -> Result<()> {
    let ret = raw_connect(fd, addr);
    check(ret, format_args!("connect to {addr}")).map(|_| ())
}

/// accept4() with close-on-exec; returns the new socket and the peer address.
pub fn accept(
    listener: &OwnedFd,
    listen_addr: &SocketAddr,
) -> Result<(OwnedFd, Option<SocketAddr>)> {
    // SAFETY: sockaddr_storage is plain old data.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a writable buffer of the right size.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    let fd = check(fd, format_args!("accept on {listen_addr}"))?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((owned, from_raw(&storage)))
}

pub fn shutdown_write(fd: &OwnedFd) -> Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    let ret = unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
    check(ret, "shutdown(SHUT_WR)").map(|_| ())
}

/// Reads and discards until EOF. The caller has set SO_RCVTIMEO, so a peer that
/// never sends FIN yields an EAGAIN error instead of a hang.
pub fn read_to_eof(fd: &OwnedFd) -> Result<()> {
    let mut buf = [0u8; 256];
    // The peers never send data, so one read normally returns 0; the bound only
    // guards against a misbehaving peer.
    for _ in 0..1024 {
        // SAFETY: buf is a writable buffer of buf.len() bytes.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if n == 0 {
            return Ok(());
        }
        if n < 0 {
            return Err(last_os(
                "read to EOF (peer FIN not seen within SO_RCVTIMEO)",
            ));
        }
    }
    fail("read to EOF: peer kept sending data")
}

fn name_of(fd: &OwnedFd, peer: bool) -> Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = &mut storage as *mut _ as *mut libc::sockaddr;
    // SAFETY: storage/len describe a writable buffer of the right size.
    let ret = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), ptr, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), ptr, &mut len)
        }
    };
    check(ret, if peer { "getpeername" } else { "getsockname" })?;
    from_raw(&storage).ok_or_else(|| FarmError("socket has a non-IP address family".into()))
}

pub fn local_addr(fd: &OwnedFd) -> Result<SocketAddr> {
    name_of(fd, false)
}

/// TCP_INFO of a socket (state, and for listeners the accept queue in `tcpi_unacked`).
pub fn tcp_info(fd: &OwnedFd) -> Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; all-zero is valid.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info/len describe a writable buffer; the kernel copies at most len bytes.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    check(ret, "getsockopt(TCP_INFO)")?;
    Ok(info)
}

/// Raises the RLIMIT_NOFILE soft limit to the hard limit; returns the new limit.
pub fn raise_nofile_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer.
    check(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) },
        "getrlimit(RLIMIT_NOFILE)",
    )?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: lim is a valid in-pointer.
        check(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) },
            "setrlimit(RLIMIT_NOFILE)",
        )?;
    }
    Ok(lim.rlim_cur)
}

/// Asks the kernel to SIGKILL this process when its parent exits, then closes the
/// race where the parent died before the call (we would have been reparented).
pub fn die_with_parent(expected_parent: libc::pid_t) -> Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes one integer argument.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(ret, "prctl(PR_SET_PDEATHSIG)")?;
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } != expected_parent {
        return fail("parent exited before the worker started");
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds is a writable array of two ints.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe2",
    )?;
    // SAFETY: both descriptors are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What `fork_process` returned in the current process.
pub enum Forked {
    Child,
    Parent(libc::pid_t),
}

/// fork(). Must only be called while the process has a single thread (sockfarm
/// never starts threads), so the child may keep running ordinary Rust code.
pub fn fork_process() -> Result<Forked> {
    // SAFETY: single-threaded process (see above), so no lock can be held by a
    // thread that does not exist in the child.
    let pid = check(unsafe { libc::fork() }, "fork")?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid)
    })
}

/// Non-blocking waitpid: `Some(status text)` once the child has exited.
pub fn try_reap(pid: libc::pid_t) -> Option<String> {
    let mut status: c_int = 0;
    // SAFETY: status is a valid out-pointer.
    let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if ret == pid {
        Some(if libc::WIFEXITED(status) {
            format!("exited with status {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            "stopped".to_string()
        })
    } else if ret < 0 {
        // ECHILD: already reaped or not ours; nothing left to wait for.
        Some("already reaped".to_string())
    } else {
        None
    }
}

pub fn kill(pid: libc::pid_t, sig: c_int) {
    // SAFETY: plain syscall; pid is one of our own children.
    unsafe { libc::kill(pid, sig) };
}

/// poll() on `fds` (events already set) for at most `timeout`; returns how many are ready.
pub fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> Result<usize> {
    let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: fds is a valid, writable slice of pollfd.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(FarmError(format!("poll: {err}")));
    }
    Ok(ret as usize)
}

/// Blocks SIGTERM and SIGINT and returns a signalfd that becomes readable when one
/// arrives, so the hold loop can poll it together with stdin.
pub fn termination_signalfd() -> Result<OwnedFd> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset below.
    let mut mask: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: mask is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGTERM);
        libc::sigaddset(&mut mask, libc::SIGINT);
    }
    // SAFETY: mask is initialised; old mask not needed.
    let ret = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
    check(ret, "sigprocmask")?;
    // SAFETY: mask is initialised.
    let fd = check(
        unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC) },
        "signalfd",
    )?;
    // SAFETY: fresh descriptor owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads whatever is available (at most `buf.len()`); 0 means EOF.
pub fn read_some(fd: RawFd, buf: &mut [u8]) -> Result<usize> {
    loop {
        // SAFETY: buf is writable for buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(FarmError(format!("read: {err}")));
        }
    }
}

/// Writes all of `data`, retrying on short writes and EINTR.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        // SAFETY: data is readable for data.len() bytes.
        let n = unsafe { libc::write(fd, data.as_ptr() as *const libc::c_void, data.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(FarmError(format!("write: {err}")));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Points fd 0 and 1 at /dev/null (workers must never touch the farm's stdout
/// pipe, which carries exactly one JSON line from the parent).
pub fn detach_stdio() -> Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| FarmError(format!("open /dev/null: {e}")))?;
    for target in [0, 1] {
        // SAFETY: both descriptors are valid; dup2 replaces target atomically.
        check(
            unsafe { libc::dup2(null.as_raw_fd(), target) },
            "dup2(/dev/null)",
        )?;
    }
    Ok(())
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}
