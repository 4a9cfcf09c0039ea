//! Compiles the BPF owner scan (`bpf/owners.bpf.c`) into `$OUT_DIR/owners.bpf.o` with
//! clang; `src/collect/procfs/bpf_owners.rs` embeds it.
//!
//! Without clang tcpdoctor still builds: it sets `cfg(tcpdoctor_no_bpf)` and always
//! scans /proc for socket owners. Under CI (`CI` set) a missing clang or a C error
//! fails the build instead, so the BPF path is never skipped there by accident.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/owners.bpf.c";
const HEADER: &str = "bpf/kernel.h";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tcpdoctor_no_bpf)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-changed={HEADER}");
    println!("cargo::rerun-if-env-changed=CLANG");
    println!("cargo::rerun-if-env-changed=CI");

    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        disable("OUT_DIR is not set");
        return;
    };
    let clang = std::env::var_os("CLANG").unwrap_or_else(|| "clang".into());
    let object = out_dir.join("owners.bpf.o");
    // -g: the BTF that CO-RE relocation and the kernel's verifier need.
    // -O2: the verifier rejects clang's unoptimised output.
    let result = Command::new(&clang)
        .args([
            "-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-c", SOURCE, "-o",
        ])
        .arg(&object)
        .output();
    match result {
        Ok(out) if out.status.success() => {}
        Ok(out) => disable(&format!(
            "{} failed on {SOURCE} ({}): {}",
            clang.to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => {
            watch_for_clang();
            disable(&format!(
                "cannot run {} ({e}); install clang (Debian: apt-get install clang)",
                clang.to_string_lossy()
            ))
        }
    }
}

/// Without clang, rerun once it appears: on another PATH, or installed into a PATH
/// folder (which changes that folder's mtime; cargo compares it with the last run).
/// Only existing absolute folders are watched: cargo would take a missing one as always
/// changed and rebuild every time. With clang found, none of this is printed, so a PATH
/// change then never rebuilds.
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

fn disable(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("BPF owner scan cannot be built under CI: {why}");
    }
    for line in why.lines() {
        println!("cargo::warning=fast BPF owner scan disabled, tcpdoctor will scan /proc: {line}");
    }
    println!("cargo::rustc-cfg=tcpdoctor_no_bpf");
}
