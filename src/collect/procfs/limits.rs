//! Parser for `/proc/PID/limits` (`proc_pid_limits()` in fs/proc/base.c): we need the
//! "Max open files" row (RLIMIT_NOFILE).

use crate::model::Limit;

fn parse_limit(s: &str) -> Option<Limit> {
    if s == "unlimited" {
        Some(Limit::Unlimited)
    } else {
        s.parse().ok().map(Limit::Value)
    }
}

/// Soft and hard RLIMIT_NOFILE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: Limit,
    pub hard: Limit,
}

/// Finds the "Max open files" row. `None` if it is missing or malformed.
pub fn parse_nofile(text: &str) -> Option<NofileLimit> {
    let row = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    let mut f = row.split_whitespace();
    let soft = parse_limit(f.next()?)?;
    let hard = parse_limit(f.next()?)?;
    Some(NofileLimit { soft, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_limits_fixture() {
        let text = include_str!("../../../tests/fixtures/proc/netns_mixed/6326/limits");
        assert_eq!(
            parse_nofile(text),
            Some(NofileLimit {
                soft: Limit::Value(20000),
                hard: Limit::Value(20000)
            })
        );
    }

    #[test]
    fn unlimited_and_malformed() {
        let t = "Limit Soft Limit Hard Limit Units\nMax open files unlimited unlimited files\n";
        assert_eq!(parse_nofile(t).map(|l| l.soft), Some(Limit::Unlimited));
        assert_eq!(parse_nofile("Max open files lots 5 files"), None);
        assert_eq!(parse_nofile("Max open files"), None);
        assert_eq!(parse_nofile(""), None);
    }
}
