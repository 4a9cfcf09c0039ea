//! What an nginx binary was built with, read from its bytes: the version banner that
//! `nginx -v` prints and the configure arguments of `nginx -V` are string literals in
//! the binary (`ngx_show_version_info()`), so they are read without running it.

use std::io::{self, Read};

use crate::model::nginx::NginxVersion;

/// Largest binary scanned (OpenResty with LuaJIT linked in is a few tens of MB).
pub const MAX_BINARY_BYTES: u64 = 256 << 20;

/// Bytes kept between chunks, so a string cut by a chunk boundary is found whole.
const CARRY: usize = 64 << 10;

/// The build facts tcpdoctor needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: Option<NginxVersion>,
    /// The text after `configure arguments:`.
    pub configure: Option<String>,
}

impl BuildInfo {
    /// `--prefix` (nginx's default `/usr/local/nginx` when not given), with a trailing
    /// slash.
    pub fn prefix(&self) -> String {
        let p = self
            .configure_arg("--prefix")
            .unwrap_or_else(|| "/usr/local/nginx".to_string());
        if p.ends_with('/') {
            p
        } else {
            format!("{p}/")
        }
    }

    /// `--conf-path` (default `conf/nginx.conf`), made absolute against the prefix as
    /// nginx's configure does.
    pub fn conf_path(&self) -> String {
        let c = self
            .configure_arg("--conf-path")
            .unwrap_or_else(|| "conf/nginx.conf".to_string());
        if c.starts_with('/') {
            c
        } else {
            format!("{}{c}", self.prefix())
        }
    }

    /// The value of `--KEY=VALUE` in the configure arguments.
    pub fn configure_arg(&self, key: &str) -> Option<String> {
        let conf = self.configure.as_deref()?;
        shell_words(conf).into_iter().find_map(|w| {
            w.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .map(str::to_string)
        })
    }
}

/// Splits configure arguments as the shell that ran configure would have: whitespace
/// separates, quotes group (`--with-cc-opt='-g -O2'`).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for ch in s.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Markers before the banner, most specific first (Tengine and Angie print their own
/// name; the other forks print `nginx version:`).
const BANNERS: [&[u8]; 3] = [b"Tengine version:", b"Angie version:", b"nginx version:"];
const CONFIGURE: &[u8] = b"configure arguments:";

/// Scans a binary (read from `r`, at most [`MAX_BINARY_BYTES`]) for its banner and
/// configure arguments.
pub fn scan(mut r: impl Read) -> io::Result<BuildInfo> {
    let mut info = BuildInfo::default();
    let mut banner_rank = usize::MAX;
    let mut buf: Vec<u8> = Vec::with_capacity(CARRY + (1 << 20));
    let mut chunk = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    let mut complete_at: Option<u64> = None;
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        buf.extend_from_slice(&chunk[..n]);
        find(&buf, &mut info, &mut banner_rank);
        // The banners and the configure line are literals stored next to each other:
        // once both are in, one more chunk covers a fork's own banner nearby.
        if info.configure.is_some() && info.version.is_some() {
            match complete_at {
                Some(at) if total >= at + (1 << 20) => break,
                Some(_) => {}
                None if banner_rank == 0 => break,
                None => complete_at = Some(total),
            }
        }
        if total >= MAX_BINARY_BYTES {
            break;
        }
        if buf.len() > CARRY {
            buf.drain(..buf.len() - CARRY);
        }
    }
    Ok(info)
}

/// Looks for the markers in `buf`; a value counts once its terminating NUL is in.
fn find(buf: &[u8], info: &mut BuildInfo, banner_rank: &mut usize) {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|b| *b == b':') {
        let colon = i + off;
        i = colon + 1;
        let upto = &buf[..=colon];
        let value = || -> Option<String> {
            let rest = &buf[colon + 1..];
            let end = rest.iter().position(|b| *b == 0 || *b == b'\n')?;
            Some(String::from_utf8_lossy(&rest[..end]).trim().to_string())
        };
        if info.configure.is_none() && upto.ends_with(CONFIGURE) {
            info.configure = value();
            continue;
        }
        for (rank, m) in BANNERS.iter().enumerate() {
            if rank < *banner_rank && upto.ends_with(m) {
                if let Some(v) = value().and_then(|v| NginxVersion::parse(&v)) {
                    info.version = Some(v);
                    *banner_rank = rank;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_and_configure_from_bytes() {
        let mut bin = vec![0x7fu8, b'E', b'L', b'F'];
        bin.extend(std::iter::repeat_n(0x3a, 5000)); // many colons
        bin.extend_from_slice(b"\0nginx version: nginx/1.22.1\n\0built with OpenSSL\0");
        bin.extend_from_slice(b"configure arguments: --with-cc-opt='-g -O2 -fPIC' --prefix=/usr/share/nginx --conf-path=/etc/nginx/nginx.conf --pid-path=/run/nginx.pid\n\0");
        let info = scan(&bin[..]).expect("scan");
        let v = info.version.clone().expect("version");
        assert_eq!(v.banner, "nginx/1.22.1");
        assert_eq!(info.prefix(), "/usr/share/nginx/");
        assert_eq!(info.conf_path(), "/etc/nginx/nginx.conf");
    }

    #[test]
    fn defaults_and_strings_cut_by_chunks() {
        // The banner straddles the 1 MiB chunk boundary.
        let mut bin = vec![0u8; (1 << 20) - 8];
        bin.extend_from_slice(
            b"nginx version: openresty/1.21.4.1\0configure arguments: --with-debug\0",
        );
        let info = scan(&bin[..]).expect("scan");
        assert_eq!(info.version.as_ref().and_then(|v| v.core), Some((1, 21, 4)));
        assert_eq!(info.prefix(), "/usr/local/nginx/");
        assert_eq!(info.conf_path(), "/usr/local/nginx/conf/nginx.conf");

        let info = BuildInfo {
            version: None,
            configure: Some("--prefix=/opt/ng --conf-path=etc/my.conf".into()),
        };
        assert_eq!(info.conf_path(), "/opt/ng/etc/my.conf");
        let info = scan(
            &b"Tengine version: Tengine/2.3.2 (nginx/1.17.3)\0nginx version: nginx/1.17.3\0"[..],
        )
        .expect("scan");
        assert_eq!(info.version.map(|v| v.product), Some("tengine".to_string()));
        assert_eq!(scan(&b""[..]).expect("empty"), BuildInfo::default());
    }

    #[test]
    fn the_installed_binary_when_there_is_one() {
        // Debian's nginx package (the tests' CI installs it); skipped where absent.
        let Ok(f) = std::fs::File::open("/usr/sbin/nginx") else {
            eprintln!("SKIP: no /usr/sbin/nginx");
            return;
        };
        let info = scan(f).expect("scan");
        let v = info.version.clone().expect("a version banner");
        assert_eq!(v.product, "nginx");
        assert!(v.core.is_some(), "{v:?}");
        assert!(
            info.conf_path().ends_with("nginx.conf"),
            "{}",
            info.conf_path()
        );
    }
}
