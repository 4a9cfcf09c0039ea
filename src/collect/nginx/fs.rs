//! Reading configuration files the way the nginx process sees them: paths are resolved
//! inside its root (`/proc/PID/root` for a process in a container, `/` otherwise),
//! symlinks included, so an absolute link inside a container points into the container
//! and not at the host. Files only: regular files, each read up to a size bound;
//! nothing is executed or written.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path (the kernel's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// Where configuration files come from. [`RootedFs`] reads a real tree; tests may use
/// another.
pub trait ConfigFs {
    /// The bytes of the regular file `path` (absolute, as nginx sees it). Fails for
    /// anything but a regular file and for files over `limit` bytes.
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>>;
    /// The paths matching the glob `pattern` (absolute; `*`, `?` and `[...]` in any
    /// component), sorted bytewise as glob(3) sorts them in the C locale nginx runs in.
    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>>;
    /// How a path is shown to the user when it is read through another root
    /// (`/proc/4410/root/etc/nginx/nginx.conf`); `None` when it is the host's own.
    fn host_path(&self, path: &Path) -> Option<PathBuf>;
}

/// Files under `root`, resolved as if `root` were `/`.
#[derive(Debug, Clone)]
pub struct RootedFs {
    pub root: PathBuf,
}

impl RootedFs {
    pub fn new(root: impl Into<PathBuf>) -> RootedFs {
        RootedFs { root: root.into() }
    }

    fn is_host_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The host path of `path` (absolute inside the root) with every symlink resolved
    /// inside the root: `..` never climbs above it and absolute link targets start at
    /// it.
    pub fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        if self.is_host_root() {
            return Ok(path.to_path_buf());
        }
        let mut pending: Vec<OsString> = components(path);
        pending.reverse();
        let mut cur: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(c) = pending.pop() {
            if c == "." {
                continue;
            }
            if c == ".." {
                cur.pop();
                continue;
            }
            let mut host = self.root.clone();
            host.extend(cur.iter());
            host.push(&c);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(io::Error::other(format!(
                            "too many levels of symbolic links resolving '{}'",
                            path.display()
                        )));
                    }
                    let target = std::fs::read_link(&host)?;
                    if target.is_absolute() {
                        cur.clear();
                    }
                    let mut t = components(&target);
                    t.reverse();
                    pending.extend(t);
                }
                Ok(_) => cur.push(c),
                Err(e) => return Err(e),
            }
        }
        let mut host = self.root.clone();
        host.extend(cur.iter());
        Ok(host)
    }
}

/// The normal and `..`/`.` components of a path, without the root.
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir => Some(OsString::from(".")),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

impl ConfigFs for RootedFs {
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        // Regular files only, never blocking on a FIFO, up to the bound: the one
        // bounded reader of every collector.
        crate::collect::bounded::read(&self.resolve(path)?, limit)
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        // In-root paths matched so far, built component by component.
        let mut found: Vec<PathBuf> = vec![PathBuf::from("/")];
        for c in components(pattern) {
            let wild = c.to_str().is_some_and(|s| s.contains(['*', '?', '[']));
            let mut next = Vec::new();
            for dir in &found {
                if !wild {
                    next.push(dir.join(&c));
                    continue;
                }
                let Ok(host) = self.resolve(dir) else {
                    continue;
                };
                let Ok(entries) = std::fs::read_dir(&host) else {
                    continue;
                };
                let pat = c.to_string_lossy();
                for e in entries.flatten() {
                    let name = e.file_name();
                    let Some(n) = name.to_str() else { continue };
                    if fnmatch(pat.as_bytes(), n.as_bytes()) {
                        next.push(dir.join(n));
                    }
                }
            }
            found = next;
            if found.len() > 100_000 {
                return Err(io::Error::other(format!(
                    "the pattern '{}' matches more than 100000 paths",
                    pattern.display()
                )));
            }
        }
        // glob(3) returns only paths that exist.
        found.retain(|p| self.resolve(p).is_ok_and(|h| h.exists()));
        found.sort_by(|a, b| {
            a.as_os_str()
                .as_encoded_bytes()
                .cmp(b.as_os_str().as_encoded_bytes())
        });
        Ok(found)
    }

    fn host_path(&self, path: &Path) -> Option<PathBuf> {
        if self.is_host_root() {
            return None;
        }
        let mut host = self.root.clone();
        host.extend(components(path));
        Some(host)
    }
}

/// Shell-style matching of one path component, as glob(3) does it: `*` any run, `?` one
/// byte, `[abc]`, `[a-z]`, `[!x]`/`[^x]` a class, `\x` a literal; a leading `.` is only
/// matched by a literal `.`.
pub fn fnmatch(pat: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pat.first() != Some(&b'.') {
        return false;
    }
    matches_from(pat, name)
}

fn matches_from(pat: &[u8], name: &[u8]) -> bool {
    // Iterative with one backtrack point for the last `*` (classic wildcard matching).
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((ok, len)) = class(&pat[p..], name[n]) {
                        if ok {
                            p += len;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        // An unclosed `[` is a literal.
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pat.len() && pat[p + 1] == name[n] => {
                    p += 2;
                    n += 1;
                    continue;
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|c| *c == b'*')
}

/// A `[...]` class at the start of `pat`: whether `c` is in it and the class's length;
/// `None` when the bracket is never closed.
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pat.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &x = pat.get(i)?;
        if x == b']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if pat.get(i + 1) == Some(&b'-') && pat.get(i + 2).is_some_and(|e| *e != b']') {
            let hi = pat[i + 2];
            hit |= x <= c && c <= hi;
            i += 3;
        } else {
            hit |= x == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_glob() {
        assert!(fnmatch(b"*.conf", b"app.conf"));
        assert!(!fnmatch(b"*.conf", b"app.conf.bak"));
        assert!(!fnmatch(b"*", b".hidden"));
        assert!(fnmatch(b".*", b".hidden"));
        assert!(fnmatch(b"site-?", b"site-a"));
        assert!(fnmatch(b"[a-c]*", b"b1"));
        assert!(!fnmatch(b"[!a-c]*", b"b1"));
        assert!(fnmatch(b"a*b*c", b"aXXbYYc"));
        assert!(!fnmatch(b"a*b*c", b"aXXbYY"));
        assert!(fnmatch(b"x\\*", b"x*"));
        assert!(fnmatch(b"[", b"["));
        assert!(fnmatch(b"[]]", b"]"));
    }

    fn tmp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tcpdoctor-nginx-fs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    #[test]
    fn absolute_links_resolve_inside_the_root_and_non_files_are_refused() {
        let root = tmp("root");
        std::fs::create_dir_all(root.join("etc/nginx/sites-available")).expect("mkdir");
        std::fs::create_dir_all(root.join("etc/nginx/sites-enabled")).expect("mkdir");
        std::fs::write(root.join("etc/nginx/sites-available/app"), "server {}\n").expect("write");
        // An absolute link, as Debian's sites-enabled has: it must point into the root.
        std::os::unix::fs::symlink(
            "/etc/nginx/sites-available/app",
            root.join("etc/nginx/sites-enabled/app"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink("../../../../../etc/passwd", root.join("etc/nginx/up"))
            .expect("symlink");
        let fs = RootedFs::new(&root);
        let got = fs
            .read(Path::new("/etc/nginx/sites-enabled/app"), 1024)
            .expect("read through the link");
        assert_eq!(got, b"server {}\n");
        // `..` cannot climb out of the root: /etc/passwd inside it does not exist.
        assert!(fs.read(Path::new("/etc/nginx/up"), 1024).is_err());
        // Directories are not files; size bound.
        let e = fs
            .read(Path::new("/etc/nginx"), 1024)
            .expect_err("a directory");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(fs
            .read(Path::new("/etc/nginx/sites-available/app"), 3)
            .is_err());
        let g = fs.glob(Path::new("/etc/nginx/sites-*/*")).expect("glob");
        assert_eq!(
            g,
            vec![
                PathBuf::from("/etc/nginx/sites-available/app"),
                PathBuf::from("/etc/nginx/sites-enabled/app")
            ]
        );
        assert!(fs
            .glob(Path::new("/etc/nginx/none/*.conf"))
            .expect("glob")
            .is_empty());
        assert_eq!(
            fs.host_path(Path::new("/etc/nginx/nginx.conf")),
            Some(root.join("etc/nginx/nginx.conf"))
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let root = tmp("fifo");
        let fifo = root.join("f.conf");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let fs = RootedFs::new("/");
        let e = fs.read(&fifo, 1024).expect_err("a fifo");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
