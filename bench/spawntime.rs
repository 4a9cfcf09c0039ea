//! `spawntime OUT CMD [ARG...]`: runs CMD and writes one line to OUT:
//! `wall_ns exit_code signal maxrss_kib user_us sys_us`.
//!
//! What `/usr/bin/time -f "%e %M %U %S"` measures (fork, exec, wait4), but with
//! nanosecond wall-clock resolution instead of 10 ms, and the clock starts right
//! before the spawn, so this helper's own start-up is not counted. It exists because the
//! Python driver cannot spawn the command itself: a child forked (or vforked) from a
//! 25 MiB Python process reports at least 25 MiB of peak RSS, since Linux carries the
//! pre-exec high-water mark over into ru_maxrss. Built by bench/run.sh with plain rustc
//! (std only, no crates).

use std::fs;
use std::process::{exit, Command};
use std::time::Instant;

/// `struct rusage` on 64-bit Linux: two `struct timeval`, then 14 longs.
#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: [i64; 2],
    stime: [i64; 2],
    maxrss: i64,
    rest: [i64; 13],
}

extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut Rusage) -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: spawntime OUT CMD [ARG...]");
        exit(2);
    }
    let start = Instant::now();
    let child = match Command::new(&args[2]).args(&args[3..]).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spawntime: cannot run \"{}\": {e}", args[2]);
            exit(127);
        }
    };
    let mut status = 0i32;
    let mut ru = Rusage::default();
    // We reap the child ourselves (std's Child is never waited on) to get its rusage.
    // SAFETY: status and ru are valid, writable and of the kernel's layout.
    let rc = loop {
        let rc = unsafe { wait4(child.id() as i32, &mut status, 0, &mut ru) };
        if rc >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break rc;
        }
    };
    let wall = start.elapsed();
    if rc < 0 {
        eprintln!("spawntime: wait4: {}", std::io::Error::last_os_error());
        exit(2);
    }
    let (code, signal) = if status & 0x7f == 0 {
        ((status >> 8) & 0xff, 0)
    } else {
        (-1, status & 0x7f)
    };
    let us = |tv: [i64; 2]| tv[0] * 1_000_000 + tv[1];
    let line = format!(
        "{} {code} {signal} {} {} {}\n",
        wall.as_nanos(),
        ru.maxrss,
        us(ru.utime),
        us(ru.stime)
    );
    if let Err(e) = fs::write(&args[1], line) {
        eprintln!("spawntime: cannot write \"{}\": {e}", args[1]);
        exit(2);
    }
    exit(if code >= 0 { code } else { 128 + signal });
}
