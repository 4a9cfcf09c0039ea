//! The running kernel's BTF (`/sys/kernel/btf/vmlinux`), parsed once per process and
//! shared by the BPF programs tcpdoctor loads: the owner scan's iterators and the
//! connection tracer. A parse costs tens of milliseconds (several MB of type
//! information), and `check` as root may load both.

use std::sync::OnceLock;

/// The parsed BTF, or why it could not be read (the first attempt's error, kept: the
/// file does not appear later in a process's life).
#[cfg_attr(all(tcpdoctor_no_bpf, tcpdoctor_no_trace_bpf), allow(dead_code))]
pub fn kernel() -> Result<&'static aya::Btf, String> {
    static BTF: OnceLock<Result<aya::Btf, String>> = OnceLock::new();
    BTF.get_or_init(|| aya::Btf::from_sys_fs().map_err(|e| chain(&e)))
        .as_ref()
        .map_err(Clone::clone)
}

/// An error and its sources, `outer: inner: innermost` (aya's outer messages alone,
/// like "error relocating section", do not say what went wrong). Shared by every BPF
/// loader.
#[cfg_attr(all(tcpdoctor_no_bpf, tcpdoctor_no_trace_bpf), allow(dead_code))]
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}
