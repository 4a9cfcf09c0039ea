//! Parser for the `TCP:` line of `/proc/net/sockstat`:
//! `TCP: inuse N orphan N tw N alloc N mem N`. `inuse` and `tw` are per network
//! namespace; `orphan`, `alloc` and `mem` (pages) are host-wide.

use crate::model::Sockstat;

/// `None` when the TCP line is missing or a field is not a number.
pub fn parse_tcp(text: &str) -> Option<Sockstat> {
    let line = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let mut st = Sockstat::default();
    let mut it = line.split_whitespace();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let v: u64 = v.parse().ok()?;
        match k {
            "inuse" => st.inuse = v,
            "orphan" => st.orphan = v,
            "tw" => st.tw = v,
            "alloc" => st.alloc = v,
            "mem" => st.mem_pages = v,
            _ => {}
        }
    }
    Some(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_fixture() {
        let text = include_str!("../../../tests/fixtures/proc/netns_mixed/net/sockstat");
        let st = parse_tcp(text).expect("TCP line");
        assert_eq!((st.inuse, st.orphan, st.tw), (30, 0, 4));
    }

    #[test]
    fn malformed() {
        assert_eq!(parse_tcp("UDP: inuse 1\n"), None);
        assert_eq!(parse_tcp("TCP: inuse x orphan 0\n"), None);
    }
}
