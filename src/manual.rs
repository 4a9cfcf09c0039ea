//! Manual pages and shell completion scripts, generated from the clap definitions in
//! [`crate::cli`] so that `man tcpdoctor` and Tab offer exactly what this binary accepts.
//! `tcpdoctor completions SHELL` and `tcpdoctor man [COMMAND]` print them, and the
//! Debian package installs what the binary it ships prints (deploy/debian/build-deb).
//! Nothing here reads the system: the text depends on the binary alone.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Roff};

use crate::cli::Cli;

/// The shells `tcpdoctor completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The program name the scripts complete and the pages are named after.
const BIN: &str = "tcpdoctor";

/// The completion script for `shell`. Built in memory first: clap_complete panics when
/// its writer fails, and `tcpdoctor completions bash | head` must end quietly instead.
pub fn completions(shell: Shell) -> Vec<u8> {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut cmd, BIN, &mut script);
    if shell == Shell::Fish {
        fish_positional_values(&cmd, &mut script);
    }
    script
}

/// clap_complete's fish script completes the values of flags but not those of a
/// command's positional argument: `tcpdoctor completions <Tab>` would offer file names.
/// One line per such argument offers its values instead (no files: `-f`).
fn fish_positional_values(cmd: &clap::Command, script: &mut Vec<u8>) {
    for sub in cmd.get_subcommands() {
        for arg in sub.get_positionals() {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if !values.is_empty() {
                script.extend_from_slice(
                    format!(
                        "complete -c {BIN} -n \"__fish_{BIN}_using_subcommand {}\" -f -a \"{}\"\n",
                        sub.get_name(),
                        values.join(" ")
                    )
                    .as_bytes(),
                );
            }
        }
    }
}

/// One manual page: `tcpdoctor-lint-nginx(1)` documents the words `lint nginx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The page's name: `tcpdoctor`, `tcpdoctor-serve`, `tcpdoctor-lint-nginx`.
    pub name: String,
    /// The command words after `tcpdoctor` (none for the main page).
    pub words: Vec<String>,
}

impl Page {
    /// The file the page is installed as (section 1).
    pub fn file_name(&self) -> String {
        format!("{}.1", self.name)
    }
}

/// The whole command tree as clap completes it (global flags propagated, the built-in
/// `help` subcommand left out: `--help` is documented on every page).
fn built_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Every page, the main one first, then each visible command depth-first in the order
/// `--help` lists them. Hidden commands would have none.
pub fn pages() -> Vec<Page> {
    fn walk(cmd: &clap::Command, words: &mut Vec<String>, out: &mut Vec<Page>) {
        let mut name = String::from(BIN);
        for w in words.iter() {
            name.push('-');
            name.push_str(w);
        }
        out.push(Page {
            name,
            words: words.clone(),
        });
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            words.push(sub.get_name().to_string());
            walk(sub, words, out);
            words.pop();
        }
    }
    let mut out = Vec::new();
    walk(&built_command(), &mut Vec::new(), &mut out);
    out
}

/// A page that does not exist: names what was asked and what exists.
#[derive(Debug, thiserror::Error)]
#[error("no manual page for '{asked}': the commands are {known}")]
pub struct UnknownPage {
    asked: String,
    known: String,
}

/// The page for `words` (`["lint", "nginx"]`; none: the main page).
pub fn page(words: &[String]) -> Result<Page, UnknownPage> {
    let all = pages();
    all.iter()
        .find(|p| p.words == words)
        .cloned()
        .ok_or_else(|| UnknownPage {
            asked: words.join(" "),
            known: all
                .iter()
                .filter(|p| !p.words.is_empty())
                .map(|p| p.words.join(" "))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The roff source of `page`: clap_mangen's page (NAME, SYNOPSIS, DESCRIPTION,
/// OPTIONS, the commands, the after-help as NOTES, VERSION), then FILES on the serve
/// page and SEE ALSO naming the parent and child pages.
pub fn render(page: &Page) -> io::Result<Vec<u8>> {
    let root = built_command();
    let mut cmd = &root;
    for w in &page.words {
        cmd = cmd
            .find_subcommand(w)
            .ok_or_else(|| io::Error::other(format!("no command '{w}'")))?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render(&mut out)?;
    let mut text = String::from_utf8(out).map_err(io::Error::other)?;
    // The title line, written here: clap_mangen leaves an empty date out instead of
    // quoting it, which moves the source into the date's place and the manual's name
    // into the source's. No date: the page changes with the binary, not the calendar.
    let title = format!(
        ".TH {} 1 \"\" \"{BIN} {}\" \"tcpdoctor manual\"",
        page.name.replace('-', "\\-"),
        env!("CARGO_PKG_VERSION")
    );
    text = text
        .lines()
        .map(|l| {
            if l.starts_with(".TH ") {
                title.as_str()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    // clap_mangen heads the after-help "EXTRA"; man-pages(7) calls such a section NOTES.
    text = text.replacen(".SH EXTRA\n", ".SH NOTES\n", 1);
    let mut extra = Roff::default();
    if page.words == ["serve"] {
        files_section(&mut extra);
    }
    see_also(page, &mut extra);
    // Roff::render starts with the apostrophe preamble the page already has.
    let more = extra.render();
    text.push_str(more.find(".SH").map_or(more.as_str(), |i| &more[i..]));
    Ok(text.into_bytes())
}

/// Where the Debian package puts the exporter's companions (deploy/README.md).
pub const PACKAGED_FILES: [(&str, &str); 3] = [
    (
        "/usr/lib/systemd/system/tcpdoctor.service",
        "the systemd unit that runs the exporter with the few capabilities it needs (not enabled on install: systemctl enable --now tcpdoctor)",
    ),
    (
        "/usr/share/tcpdoctor/prometheus/alerts.yml",
        "Prometheus alert rules on these metrics",
    ),
    (
        "/usr/share/tcpdoctor/grafana/tcpdoctor.json",
        "a Grafana dashboard",
    ),
];

fn files_section(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    roff.text([roman("As installed by the Debian package:")]);
    for (path, what) in PACKAGED_FILES {
        roff.control("TP", []);
        roff.text([bold(path)]);
        roff.text([roman(what)]);
    }
}

/// The parent page and every child page, as `name(1)` references.
fn see_also(page: &Page, roff: &mut Roff) {
    let all = pages();
    let mut related: Vec<&Page> = Vec::new();
    if let Some((_, parent)) = page.words.split_last() {
        related.extend(all.iter().filter(|p| p.words == parent));
    }
    related.extend(
        all.iter()
            .filter(|p| p.words.len() == page.words.len() + 1 && p.words.starts_with(&page.words)),
    );
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, p) in related.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(p.name.clone()));
        line.push(roman("(1)"));
    }
    // The kernel's own words on what the pages explain.
    for (name, section) in [("ss", "8"), ("tcp", "7")] {
        if !line.is_empty() {
            line.push(roman(", "));
        }
        line.push(bold(name));
        line.push(roman(format!("({section})")));
    }
    roff.text(line);
}

/// Writes every page into `dir` (created if missing); returns the paths written.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create folder '{}': {e}", dir.display()),
        )
    })?;
    let mut written = Vec::new();
    for page in pages() {
        let path = dir.join(page.file_name());
        let text = render(&page)?;
        let mut file = std::fs::File::create(&path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot write '{}': {e}", path.display()))
        })?;
        file.write_all(&text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_command_has_a_page_and_help_has_none() {
        let names: Vec<String> = pages().into_iter().map(|p| p.name).collect();
        for want in [
            "tcpdoctor",
            "tcpdoctor-check",
            "tcpdoctor-serve",
            "tcpdoctor-lint",
            "tcpdoctor-lint-nginx",
            "tcpdoctor-completions",
            "tcpdoctor-man",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "tcpdoctor-help"), "{names:?}");
        assert_eq!(names[0], "tcpdoctor");
    }

    #[test]
    fn an_unknown_page_names_the_known_commands() {
        let e = page(&words(&["frobnicate"])).unwrap_err().to_string();
        assert!(e.contains("'frobnicate'"), "{e}");
        assert!(e.contains("lint nginx"), "{e}");
        assert!(e.contains("serve"), "{e}");
        assert_eq!(
            page(&words(&["lint", "nginx"])).unwrap().name,
            "tcpdoctor-lint-nginx"
        );
        assert_eq!(page(&[]).unwrap().name, "tcpdoctor");
    }

    #[test]
    fn the_title_line_has_an_empty_date_then_source_and_manual() {
        let text =
            String::from_utf8(render(&page(&words(&["lint", "nginx"])).unwrap()).unwrap()).unwrap();
        let th: Vec<&str> = text.lines().filter(|l| l.starts_with(".TH ")).collect();
        let want = format!(
            ".TH tcpdoctor\\-lint\\-nginx 1 \"\" \"tcpdoctor {}\" \"tcpdoctor manual\"",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(th, [want.as_str()]);
    }

    #[test]
    fn pages_link_their_parent_and_children() {
        let main = String::from_utf8(render(&page(&[]).unwrap()).unwrap()).unwrap();
        assert!(main.contains(".SH \"SEE ALSO\""), "{main}");
        assert!(main.contains("tcpdoctor\\-serve"), "{main}");
        assert!(main.contains(".SH NOTES"), "{main}");
        assert!(!main.contains(".SH EXTRA"), "{main}");
        let lint = String::from_utf8(render(&page(&words(&["lint"])).unwrap()).unwrap()).unwrap();
        let see = &lint[lint.find("SEE ALSO").unwrap()..];
        assert!(see.contains("tcpdoctor\\-lint\\-nginx"), "{see}");
        assert!(see.contains("\\fBtcpdoctor\\fR(1)"), "{see}");
    }

    #[test]
    fn completions_name_the_program() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = String::from_utf8(completions(shell)).unwrap();
            assert!(s.contains("tcpdoctor"), "{shell:?}");
        }
    }
}
