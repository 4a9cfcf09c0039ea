//! Names that come from outside (a process's `comm` and command line, a namespace or
//! container name, a hostname, a kernel log line) made safe to keep and print: valid
//! UTF-8, no control characters, bounded in length.
//!
//! Anyone can name a process (`prctl(PR_SET_NAME)`, a binary's file name), and a
//! replayed capture is a folder anyone could have written, so none of these strings is
//! trusted: an escape sequence in a name would drive the terminal of whoever reads the
//! report, a newline would forge a line of it, and a 10 MB name would break table
//! layout. Collectors pass every such string through here once, where it is read;
//! renderers still measure by characters (never bytes) and cut cells that are too wide.

/// Characters kept of a short name: a `comm` (15 bytes in the kernel, TASK_COMM_LEN),
/// a container or pod name, a hostname (64 bytes, __NEW_UTS_LEN).
pub const NAME_MAX: usize = 64;

/// Characters kept of a network namespace name (a file name under `/run/netns`, at most
/// 255 bytes): kept whole where it fits, because fix commands name it
/// (`ip netns exec NAME`).
pub const NETNS_NAME_MAX: usize = 255;

/// Characters kept of a command line.
pub const COMMAND_LINE_MAX: usize = 4096;

/// Characters kept of one kernel log message (a record is at most 1 KiB of text,
/// LOG_LINE_MAX, before the kernel's own escaping).
pub const LOG_LINE_MAX: usize = 2048;

/// What stands in for a character that must not be printed.
pub const REPLACEMENT: char = '?';

/// `raw` as text fit to print: invalid UTF-8 becomes U+FFFD, control characters (C0,
/// DEL, C1) and the bidirectional overrides that reorder what a terminal shows become
/// [`REPLACEMENT`], and at most `max` characters are kept, the last of them an
/// ellipsis when the name was cut.
pub fn name(raw: &[u8], max: usize) -> String {
    clean(&String::from_utf8_lossy(raw), max)
}

/// [`name`] for a string that is already UTF-8.
pub fn clean(s: &str, max: usize) -> String {
    if max == 0 {
        return String::new();
    }
    let mut out = String::with_capacity(s.len().min(max.saturating_mul(4)));
    let mut kept = 0usize;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if kept + 1 == max && chars.clone().next().is_some() {
            // Room for one more: an ellipsis says the rest was cut.
            out.push('…');
            return out;
        }
        out.push(if printable(c) { c } else { REPLACEMENT });
        kept += 1;
    }
    out
}

/// `/proc/PID/cmdline` as one line: arguments separated by NULs become words separated
/// by spaces (the trailing NULs dropped), then [`name`] with [`COMMAND_LINE_MAX`].
pub fn command_line(raw: &[u8]) -> String {
    let end = raw.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let joined: Vec<u8> = raw[..end]
        .iter()
        .map(|b| if *b == 0 { b' ' } else { *b })
        .collect();
    name(&joined, COMMAND_LINE_MAX)
}

/// Whether `c` may be printed as it is.
pub fn printable(c: char) -> bool {
    !(c.is_control()
        // LRE, RLE, PDF, LRO, RLO and LRI, RLI, FSI, PDI: they reorder the rest of the
        // line on a terminal that implements bidi (the "Trojan Source" characters).
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c))
}

/// Whether `s` needs [`clean`] (any character [`printable`] refuses).
pub fn is_clean(s: &str) -> bool {
    s.chars().all(printable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bad_bytes_are_replaced() {
        assert_eq!(name(b"nginx", NAME_MAX), "nginx");
        assert_eq!(name(b"evil\x1b[2J\n", NAME_MAX), "evil?[2J?");
        assert_eq!(name(b"a\x7fb\xc2\x9bc", NAME_MAX), "a?b?c");
        assert_eq!(name(b"\xff\xfe", NAME_MAX), "\u{fffd}\u{fffd}");
        assert_eq!(clean("x\u{202e}gnp.exe", NAME_MAX), "x?gnp.exe");
        assert_eq!(
            clean("caf\u{e9} \u{65e5}\u{672c}", NAME_MAX),
            "caf\u{e9} \u{65e5}\u{672c}"
        );
        assert!(is_clean("python3") && !is_clean("a\tb"));
    }

    #[test]
    fn length_is_bounded_in_characters_with_an_ellipsis() {
        assert_eq!(clean("abcdef", 6), "abcdef");
        assert_eq!(clean("abcdefg", 6), "abcde…");
        assert_eq!(clean("ééééééé", 3), "éé…");
        assert_eq!(clean("abc", 0), "");
        assert_eq!(clean("abc", 1), "…");
        let huge = "A".repeat(10 << 20);
        let got = name(huge.as_bytes(), NAME_MAX);
        assert_eq!(got.chars().count(), NAME_MAX);
        assert!(got.ends_with('…'));
    }

    #[test]
    fn command_lines_join_arguments() {
        assert_eq!(
            command_line(b"nginx: master\0-c\0/etc/x.conf\0\0"),
            "nginx: master -c /etc/x.conf"
        );
        assert_eq!(command_line(b""), "");
        assert_eq!(command_line(b"\0\0"), "");
        assert_eq!(command_line(b"a\nb\0"), "a?b");
    }
}
