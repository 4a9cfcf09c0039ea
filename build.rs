//! Compiles the BPF programs with clang into `$OUT_DIR`:
//! - `bpf/owners.bpf.c` -> `owners.bpf.o`, the socket owner scan
//!   (`src/collect/owners/bpf.rs` embeds it);
//! - `bpf/trace.bpf.c` -> `trace.bpf.o`, the connection tracer of `tcpdoctor trace`
//!   (`src/collect/trace/` embeds it).
//!
//! Without clang tcpdoctor still builds: an object that cannot be compiled sets
//! `cfg(tcpdoctor_no_bpf)` (the owner scan then always reads /proc) or
//! `cfg(tcpdoctor_no_trace_bpf)` (`trace` then says it was built without BPF). Under CI
//! (`CI` set) a missing clang or a C error fails the build instead, so the BPF paths are
//! never skipped there by accident.

use std::path::{Path, PathBuf};
use std::process::Command;

const HEADER: &str = "bpf/kernel.h";

/// One BPF object: its source, the cfg set when it cannot be built, and what is lost.
struct Object {
    source: &'static str,
    output: &'static str,
    /// Extra clang flags.
    flags: &'static [&'static str],
    disabled_cfg: &'static str,
    fallback: &'static str,
}

const OBJECTS: [Object; 2] = [
    Object {
        source: "bpf/owners.bpf.c",
        output: "owners.bpf.o",
        flags: &[],
        disabled_cfg: "tcpdoctor_no_bpf",
        fallback: "fast BPF owner scan disabled, tcpdoctor will scan /proc",
    },
    Object {
        source: "bpf/trace.bpf.c",
        output: "trace.bpf.o",
        // v3: atomic fetch-or/add (Linux 5.12+; tracing itself needs 5.17+).
        flags: &["-mcpu=v3"],
        disabled_cfg: "tcpdoctor_no_trace_bpf",
        fallback: "connection tracer disabled, `tcpdoctor trace` will say so",
    },
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={HEADER}");
    println!("cargo::rerun-if-env-changed=CLANG");
    println!("cargo::rerun-if-env-changed=CI");
    for o in &OBJECTS {
        println!("cargo::rustc-check-cfg=cfg({})", o.disabled_cfg);
        println!("cargo::rerun-if-changed={}", o.source);
    }

    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        for o in &OBJECTS {
            disable(o, "OUT_DIR is not set");
        }
        return;
    };
    let clang = std::env::var_os("CLANG").unwrap_or_else(|| "clang".into());
    for o in &OBJECTS {
        if let Err(why) = compile(&clang, o, &out_dir.join(o.output)) {
            disable(o, &why);
        }
    }
}

fn compile(clang: &std::ffi::OsStr, o: &Object, object: &Path) -> Result<(), String> {
    // -g: the BTF that CO-RE relocation and the kernel's verifier need.
    // -O2: the verifier rejects clang's unoptimised output.
    let out = Command::new(clang)
        .args(["-target", "bpf"])
        .args(o.flags)
        .args(["-O2", "-g", "-Wall", "-Werror", "-c", o.source, "-o"])
        .arg(object)
        .output()
        .map_err(|e| {
            watch_for_clang();
            format!(
                "cannot run {} ({e}); install clang (Debian: apt-get install clang)",
                clang.to_string_lossy()
            )
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{} failed on {} ({}): {}",
        clang.to_string_lossy(),
        o.source,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Without clang, rerun once it appears: on another PATH, or installed into a PATH
/// folder (which changes that folder's mtime; cargo compares it with the last run).
/// Only existing absolute folders are watched: cargo would take a missing one as always
/// changed and rebuild every time. With clang found, none of this is printed, so a PATH
/// change then never rebuilds. (Printed once per object; cargo takes repeats as one.)
fn watch_for_clang() {
    println!("cargo::rerun-if-env-changed=PATH");
    let Some(path) = std::env::var_os("PATH") else {
        return;
    };
    for dir in std::env::split_paths(&path) {
        if dir.is_absolute() && dir.is_dir() {
            if let Some(d) = dir.to_str() {
                println!("cargo::rerun-if-changed={d}");
            }
        }
    }
}

fn disable(o: &Object, why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{} cannot be built under CI: {why}", o.source);
    }
    for line in why.lines() {
        println!("cargo::warning={}: {line}", o.fallback);
    }
    println!("cargo::rustc-cfg={}", o.disabled_cfg);
}
