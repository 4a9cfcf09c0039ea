//! Loads a whole nginx configuration: the main file, then every `include` in place, the
//! way nginx does (`ngx_conf_include()`): a relative path is relative to the directory
//! of the main file (nginx's conf prefix), a path with `*`, `?` or `[` is a glob whose
//! matches are read in sorted order and may match nothing, any other path must exist.
//! Bounded: per-file size, total size, number of files and include depth; a file that
//! includes itself (directly or not) is an error with the include's file:line.

use std::fmt;
use std::path::{Path, PathBuf};

use super::fs::ConfigFs;
use super::parse::{self, Directive, FileId};

/// Largest configuration file read (a big generated map or block list fits).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// All files of one configuration together.
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;
/// Files read for one configuration (an include used in many places counts each time).
pub const MAX_FILES: usize = 5000;
/// Includes inside includes.
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// One file read: its path as nginx sees it, and its text (for patch context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// Line `n` (1-based), without its newline; "" past the end.
    pub fn line(&self, n: u32) -> &str {
        self.text
            .lines()
            .nth((n as usize).saturating_sub(1))
            .unwrap_or("")
    }
}

/// A configuration with every include expanded in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedConfig {
    /// Indexed by [`FileId`]; the main file first. A file included twice is listed once
    /// per inclusion.
    pub files: Vec<SourceFile>,
    pub directives: Vec<Directive>,
    pub bytes: u64,
}

impl LoadedConfig {
    pub fn file(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id as usize)
    }

    /// `path:line` of a directive.
    pub fn at(&self, d: &Directive) -> String {
        match self.file(d.file) {
            Some(f) => format!("{}:{}", f.path.display(), d.line),
            None => format!("?:{}", d.line),
        }
    }
}

/// Why a configuration could not be loaded: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file the problem is in (or the file that includes a missing one).
    pub file: PathBuf,
    /// 0 when the problem is the file as a whole (cannot be read).
    pub line: u32,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)
        }
    }
}

impl std::error::Error for LoadError {}

struct Loader<'a> {
    fs: &'a dyn ConfigFs,
    conf_prefix: PathBuf,
    out: LoadedConfig,
    /// Files being expanded, outermost first (include cycle detection).
    stack: Vec<PathBuf>,
}

/// Loads `main` (absolute, as nginx sees it) and everything it includes. `extra` is
/// text given with `-g` on nginx's command line, parsed after the file as nginx does
/// (its directives are appended to the main context).
pub fn load(
    fs: &dyn ConfigFs,
    main: &Path,
    extra: Option<&str>,
) -> Result<LoadedConfig, LoadError> {
    let conf_prefix = main
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let mut l = Loader {
        fs,
        conf_prefix,
        out: LoadedConfig::default(),
        stack: Vec::new(),
    };
    let mut top = l.file(main, None)?;
    if let Some(g) = extra.filter(|g| !g.trim().is_empty()) {
        let id = l.out.files.len() as FileId;
        l.out.files.push(SourceFile {
            path: PathBuf::from("(nginx -g)"),
            text: g.to_string(),
        });
        let parsed = parse::parse(g.as_bytes(), id).map_err(|e| LoadError {
            file: PathBuf::from("(nginx -g)"),
            line: e.line,
            message: e.message,
        })?;
        top.extend(parsed);
    }
    l.out.directives = top;
    Ok(l.out)
}

impl Loader<'_> {
    /// Reads, parses and expands one file. `from`: the include directive's location.
    fn file(
        &mut self,
        path: &Path,
        from: Option<(&Path, u32)>,
    ) -> Result<Vec<Directive>, LoadError> {
        let at = |message: String| match from {
            Some((f, line)) => LoadError {
                file: f.to_path_buf(),
                line,
                message,
            },
            None => LoadError {
                file: path.to_path_buf(),
                line: 0,
                message,
            },
        };
        if self.stack.iter().any(|p| p == path) {
            let chain: Vec<String> = self
                .stack
                .iter()
                .chain(std::iter::once(&path.to_path_buf()))
                .map(|p| p.display().to_string())
                .collect();
            return Err(at(format!("include cycle: {}", chain.join(" -> "))));
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(at(format!(
                "includes nested deeper than {MAX_INCLUDE_DEPTH} (reading '{}')",
                path.display()
            )));
        }
        if self.out.files.len() >= MAX_FILES {
            return Err(at(format!(
                "more than {MAX_FILES} files read; '{}' not read",
                path.display()
            )));
        }
        let bytes = self
            .fs
            .read(path, MAX_FILE_BYTES)
            .map_err(|e| at(format!("cannot read '{}': {e}", self.shown(path))))?;
        self.out.bytes += bytes.len() as u64;
        if self.out.bytes > MAX_TOTAL_BYTES {
            return Err(at(format!(
                "the configuration passes {MAX_TOTAL_BYTES} bytes at '{}'",
                path.display()
            )));
        }
        let id = self.out.files.len() as FileId;
        let tree = parse::parse(&bytes, id).map_err(|e| LoadError {
            file: path.to_path_buf(),
            line: e.line,
            message: e.message,
        })?;
        self.out.files.push(SourceFile {
            path: path.to_path_buf(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        });
        self.stack.push(path.to_path_buf());
        let expanded = self.expand(tree);
        self.stack.pop();
        expanded
    }

    fn shown(&self, path: &Path) -> String {
        match self.fs.host_path(path) {
            Some(h) => format!("{}' (read as '{}", path.display(), h.display()),
            None => path.display().to_string(),
        }
    }

    /// Replaces every `include` in `list` (and in nested blocks) by the directives of the
    /// files it names.
    fn expand(&mut self, list: Vec<Directive>) -> Result<Vec<Directive>, LoadError> {
        let mut out = Vec::with_capacity(list.len());
        for mut d in list {
            if d.name == "include" && d.block.is_none() && !d.raw_block {
                let here = self
                    .out
                    .file(d.file)
                    .map(|f| f.path.clone())
                    .unwrap_or_default();
                if d.args.len() != 1 {
                    return Err(LoadError {
                        file: here,
                        line: d.line,
                        message: format!(
                            "\"include\" takes one file or pattern, got {} arguments",
                            d.args.len()
                        ),
                    });
                }
                let arg = PathBuf::from(&d.args[0]);
                let target = if arg.is_absolute() {
                    arg
                } else {
                    self.conf_prefix.join(arg)
                };
                let pattern = target.to_str().is_some_and(|s| s.contains(['*', '?', '[']));
                let paths = if pattern {
                    self.fs.glob(&target).map_err(|e| LoadError {
                        file: here.clone(),
                        line: d.line,
                        message: format!("cannot expand '{}': {e}", target.display()),
                    })?
                } else {
                    vec![target]
                };
                for p in paths {
                    out.extend(self.file(&p, Some((&here, d.line)))?);
                }
                continue;
            }
            if let Some(children) = d.block.take() {
                d.block = Some(self.expand(children)?);
            }
            out.push(d);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io;

    /// Files in memory, for include rules without a real tree.
    struct MemFs(BTreeMap<PathBuf, String>);

    impl ConfigFs for MemFs {
        fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
            let t = self
                .0
                .get(path)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            if t.len() as u64 > limit {
                return Err(io::Error::other("too big"));
            }
            Ok(t.clone().into_bytes())
        }
        fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
            let dir = pattern.parent().unwrap_or(Path::new("/"));
            let pat = pattern
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(self
                .0
                .keys()
                .filter(|k| {
                    k.parent() == Some(dir)
                        && k.file_name().is_some_and(|n| {
                            super::super::fs::fnmatch(
                                pat.as_bytes(),
                                n.to_string_lossy().as_bytes(),
                            )
                        })
                })
                .cloned()
                .collect())
        }
        fn host_path(&self, _: &Path) -> Option<PathBuf> {
            None
        }
    }

    fn mem(files: &[(&str, &str)]) -> MemFs {
        MemFs(
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect(),
        )
    }

    fn names(ds: &[Directive]) -> Vec<String> {
        ds.iter().map(|d| d.name.clone()).collect()
    }

    #[test]
    fn includes_expand_in_place_relative_to_the_main_files_directory() {
        let fs = mem(&[
            ("/etc/nginx/nginx.conf", "user x;\nhttp {\n  include mime.types;\n  include conf.d/*.conf;\n  include /none/*.conf;\n}\n"),
            ("/etc/nginx/mime.types", "types { text/html html; }\n"),
            ("/etc/nginx/conf.d/b.conf", "server { listen 2; }\n"),
            ("/etc/nginx/conf.d/a.conf", "\n\nserver { listen 1; }\n"),
            ("/etc/nginx/conf.d/a.conf.bak", "broken {\n"),
        ]);
        let c = load(
            &fs,
            Path::new("/etc/nginx/nginx.conf"),
            Some("daemon off; pid /x.pid;"),
        )
        .expect("loads");
        assert_eq!(names(&c.directives), vec!["user", "http", "daemon", "pid"]);
        let http = c.directives[1].children();
        assert_eq!(names(http), vec!["types", "server", "server"]);
        // Sorted: a.conf first, with its own file and line.
        assert_eq!(http[1].children()[0].args, vec!["1"]);
        assert_eq!(c.at(&http[1]), "/etc/nginx/conf.d/a.conf:3");
        assert_eq!(c.at(&http[2]), "/etc/nginx/conf.d/b.conf:1");
        assert_eq!(c.at(&c.directives[2]), "(nginx -g):1");
        assert_eq!(c.files[0].line(2), "http {");
    }

    #[test]
    fn missing_files_cycles_and_errors_in_included_files_name_the_line() {
        let fs = mem(&[("/c/nginx.conf", "http {\n\n  include missing.conf;\n}\n")]);
        let e = load(&fs, Path::new("/c/nginx.conf"), None).expect_err("missing include");
        assert_eq!((e.file.as_path(), e.line), (Path::new("/c/nginx.conf"), 3));
        assert!(e.message.contains("/c/missing.conf"), "{e}");

        let fs = mem(&[
            ("/c/nginx.conf", "include a.conf;\n"),
            ("/c/a.conf", "\ninclude b.conf;\n"),
            ("/c/b.conf", "include /c/a.conf;\n"),
        ]);
        let e = load(&fs, Path::new("/c/nginx.conf"), None).expect_err("cycle");
        assert_eq!((e.file.as_path(), e.line), (Path::new("/c/b.conf"), 1));
        assert!(
            e.message
                .contains("include cycle: /c/nginx.conf -> /c/a.conf -> /c/b.conf -> /c/a.conf"),
            "{e}"
        );

        let fs = mem(&[
            ("/c/nginx.conf", "http { include x.conf; }\n"),
            ("/c/x.conf", "server {\n  listen 80\n}\n"),
        ]);
        let e = load(&fs, Path::new("/c/nginx.conf"), None).expect_err("syntax");
        assert_eq!((e.file.as_path(), e.line), (Path::new("/c/x.conf"), 3));
        assert_eq!(e.to_string(), format!("/c/x.conf:3: {}", e.message));

        // An included file cannot close the block it is included in.
        let fs = mem(&[
            ("/c/nginx.conf", "http { include x.conf; }\n"),
            ("/c/x.conf", "}\n"),
        ]);
        let e = load(&fs, Path::new("/c/nginx.conf"), None).expect_err("stray brace");
        assert_eq!(e.file, Path::new("/c/x.conf"));

        let e = load(&fs, Path::new("/c/none.conf"), None).expect_err("no main file");
        assert_eq!(e.line, 0);
    }

    #[test]
    fn a_snippet_included_twice_is_fine_and_depth_is_bounded() {
        let fs = mem(&[
            (
                "/c/nginx.conf",
                "http { server { include p.conf; } server { include p.conf; } }\n",
            ),
            ("/c/p.conf", "proxy_set_header Connection \"\";\n"),
        ]);
        let c = load(&fs, Path::new("/c/nginx.conf"), None).expect("loads");
        assert_eq!(
            c.directives[0].children()[1].children()[0].args,
            vec!["Connection", ""]
        );
        assert_eq!(c.files.len(), 3);

        // A chain of 40 distinct files: refused at the depth bound.
        let mut files: Vec<(String, String)> = (0..40)
            .map(|i| (format!("/d/{i}.conf"), format!("include {}.conf;\n", i + 1)))
            .collect();
        files.push(("/d/40.conf".into(), "x;\n".into()));
        let fs = MemFs(
            files
                .into_iter()
                .map(|(p, t)| (PathBuf::from(p), t))
                .collect(),
        );
        let e = load(&fs, Path::new("/d/0.conf"), None).expect_err("too deep");
        assert!(e.message.contains("nested deeper"), "{e}");
    }
}
