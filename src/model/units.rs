//! Units as the reports write them: durations, counts with their noun. Rules build
//! titles with these, renderers print them; neither owns them.

/// `59.1s`, `850ms`, `1m30s`, `2h05m`: short, and exact enough to act on.
pub fn human_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// `1 socket`, `2 sockets`: the count with its noun in the right number. `plural` is
/// given whole because English is irregular (`1 process`, `2 processes`).
pub fn count(n: u64, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// The noun alone, for sentences that place the number elsewhere.
pub fn noun<'a>(n: u64, singular: &'a str, plural: &'a str) -> &'a str {
    if n == 1 {
        singular
    } else {
        plural
    }
}

/// `text` cut to at most `max` characters, ending with an ellipsis when cut. Counts
/// characters, never bytes, so a multi-byte name is never split.
pub fn ellipsize(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(1);
    let mut out: String = text.chars().take(keep).collect();
    out.push('…');
    out
}

/// Like [`ellipsize`], but cut between words, so that a figure is never cut in two
/// (`2084 socket…` is fine, `20…` would mislead). A single word longer than `max` is
/// cut where it must be.
pub fn ellipsize_words(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let keep: String = text.chars().take(max.saturating_sub(1)).collect();
    // The next character decides whether the cut falls inside a word.
    let next = text.chars().nth(keep.chars().count());
    let cut = match next {
        Some(c) if c.is_whitespace() => keep.trim_end().len(),
        _ => match keep.rfind(char::is_whitespace) {
            Some(i) if i > 0 => keep[..i].trim_end().len(),
            _ => keep.len(),
        },
    };
    let mut out = keep[..cut].to_string();
    // Leftover punctuation before the cut reads as part of the sentence: drop it.
    while out.ends_with([',', ':', ';', '(', '.']) {
        out.pop();
    }
    out.push('…');
    out
}

/// The first `shown` items and how many more: `a`, `a and b`, `a, b and c`,
/// `a, b, c and 9 more` (never "and 1 more": the one is named instead).
pub fn compact_list(items: &[String], shown: usize) -> String {
    let shown = shown.max(1);
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n if n <= shown + 1 => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
        n => format!(
            "{} and {n_more} more",
            items[..shown].join(", "),
            n_more = n - shown
        ),
    }
}

/// A size for people: `512 bytes`, `3.4 KiB`, `1.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} bytes"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_bytes_kib_or_mib() {
        assert_eq!(human_bytes(1023), "1023 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(17_783_205), "17.0 MiB");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration_ms(850), "850ms");
        assert_eq!(human_duration_ms(59_140), "59.1s");
        assert_eq!(human_duration_ms(90_000), "1m30s");
        assert_eq!(human_duration_ms(7_500_000), "2h05m");
    }

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(count(1, "socket", "sockets"), "1 socket");
        assert_eq!(count(0, "socket", "sockets"), "0 sockets");
        assert_eq!(count(2, "process", "processes"), "2 processes");
        assert_eq!(noun(1, "was", "were"), "was");
    }

    #[test]
    fn ellipsis_counts_characters() {
        assert_eq!(ellipsize("short", 10), "short");
        assert_eq!(ellipsize("abcdefghij", 5), "abcd…");
        assert_eq!(ellipsize("ééééé", 3), "éé…");
        assert_eq!(ellipsize("x", 0), "…");
    }

    #[test]
    fn word_ellipsis_never_cuts_a_figure() {
        let t = "sockfarm (pid 21930) leaks CLOSE_WAIT: 2084 sockets, oldest idle 2m10s";
        assert_eq!(ellipsize_words(t, 100), t);
        assert_eq!(
            ellipsize_words(t, 45),
            "sockfarm (pid 21930) leaks CLOSE_WAIT: 2084…"
        );
        assert_eq!(
            ellipsize_words(t, 42),
            "sockfarm (pid 21930) leaks CLOSE_WAIT…"
        );
        assert_eq!(
            ellipsize_words(t, 44),
            "sockfarm (pid 21930) leaks CLOSE_WAIT: 2084…"
        );
        assert_eq!(ellipsize_words("abcdefghij", 5), "abcd…", "one long word");
        for n in 1..t.len() {
            assert!(ellipsize_words(t, n).chars().count() <= n.max(1), "{n}");
        }
    }

    #[test]
    fn lists_name_a_few_and_count_the_rest() {
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(compact_list(&names[..0], 3), "");
        assert_eq!(compact_list(&names[..1], 3), "a");
        assert_eq!(compact_list(&names[..2], 3), "a and b");
        assert_eq!(compact_list(&names[..3], 3), "a, b and c");
        assert_eq!(compact_list(&names[..4], 3), "a, b, c and d");
        assert_eq!(compact_list(&names, 3), "a, b, c and 2 more");
    }
}
