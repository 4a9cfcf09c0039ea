//! Corruption of captured input for the fuzz tests (`replay_fuzz.rs`,
//! `parser_props.rs`): a small seeded generator, so a failing run is repeated from its
//! seed, and mutations of the kinds that broke tcpdoctor before: flipped and inserted
//! bytes, control characters, cut files, repeated and very long lines, huge files.

use std::path::{Path, PathBuf};

/// splitmix64: tiny, seedable, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that parsers have reason to fear.
const NASTY: &[&[u8]] = &[
    b"\0",
    b"\n",
    b"\r\n",
    b"\x1b[2J",
    b"\x1b]0;x\x07",
    b"\xff\xfe",
    b"\xc3",
    b"\xe2\x80\xae",
    b" ",
    b"\t",
    b":",
    b"(",
    b")",
    b";",
    b"{",
    b"}",
    b"#",
    b"\"",
    b"\\",
    b"-1",
    b"99999999999999999999999",
    b"FFFFFFFF",
    b"0A",
    b"nan",
    b"inf",
    b"-1e308",
];

/// One random mutation of `data`.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    let len = data.len();
    match rng.below(11) {
        // Flip a few bits.
        0 => {
            for _ in 0..=rng.below(8) {
                if len > 0 {
                    let i = rng.below(len);
                    data[i] ^= 1 << rng.below(8);
                }
            }
        }
        // Overwrite a byte with any value.
        1 => {
            if len > 0 {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
        }
        // Insert a nasty token.
        2 => {
            let at = rng.below(len + 1);
            let tok = rng.pick(NASTY).to_vec();
            data.splice(at..at, tok);
        }
        // Cut the file short.
        3 => data.truncate(rng.below(len + 1)),
        // Delete a range.
        4 => {
            if len > 0 {
                let a = rng.below(len);
                let b = (a + rng.below(64)).min(len);
                data.drain(a..b);
            }
        }
        // Repeat a line (what the kernel does to /proc/net/tcp under churn).
        5 => {
            let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
            if !lines.is_empty() {
                let l = rng.pick(&lines).to_vec();
                let at = rng.below(len + 1);
                let mut ins = l;
                ins.push(b'\n');
                data.splice(at..at, ins);
            }
        }
        // A very long run of one byte (a 10 MB line, sometimes).
        6 => {
            let n = if rng.chance(8) {
                10 << 20
            } else {
                1 + rng.below(100_000)
            };
            let b = *rng.pick(b"A0 \xff\x1b9:");
            let at = rng.below(len + 1);
            data.splice(at..at, std::iter::repeat_n(b, n));
        }
        // Swap two bytes far apart.
        7 => {
            if len > 1 {
                let (a, b) = (rng.below(len), rng.below(len));
                data.swap(a, b);
            }
        }
        // Random garbage appended.
        8 => {
            for _ in 0..rng.below(256) {
                data.push(rng.next_u64() as u8);
            }
        }
        // Empty file.
        9 => data.clear(),
        // Duplicate a large piece (the same sockets twice and more).
        _ => {
            if len > 0 {
                let a = rng.below(len);
                let b = (a + rng.below(4096)).min(len);
                let piece = data[a..b].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, piece);
            }
        }
    }
}

/// Every regular file under `dir`, sorted (the fixtures a replay reads).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The seed of a fuzz run: `TCPDOCTOR_FUZZ_SEED`, else a fixed one (CI is repeatable).
pub fn seed() -> u64 {
    std::env::var("TCPDOCTOR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0x7c9d_0c70_c0de_0016)
}

/// How many runs: `TCPDOCTOR_FUZZ_RUNS` (the long mode, by hand), else `default` (CI).
pub fn runs(default: usize) -> usize {
    std::env::var("TCPDOCTOR_FUZZ_RUNS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}
