//! `tcpdoctor man` and `tcpdoctor completions` as a user and a package use them: every
//! command has a page that groff and man render without a warning and that documents
//! every flag; the completion scripts offer every command and flag, and bash and fish
//! really complete them when sourced; errors are one line.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use clap::CommandFactory;

use common::fixtures::TempDir;
use common::run::{run_bounded, run_tcpdoctor};
use common::tools::tool;

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Every command path (`[]`, `["serve"]`, `["lint", "nginx"]`) with its visible long
/// flags, from the same clap definitions the binary parses with.
fn commands() -> Vec<(Vec<String>, BTreeSet<String>)> {
    fn walk(
        cmd: &clap::Command,
        words: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, BTreeSet<String>)>,
    ) {
        let flags = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        out.push((words.clone(), flags));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            words.push(sub.get_name().to_string());
            walk(sub, words, out);
            words.pop();
        }
    }
    let mut cmd = tcpdoctor::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, &mut Vec::new(), &mut out);
    out
}

fn stdout_of(args: &[&str]) -> String {
    let out = run_tcpdoctor(args);
    assert!(
        out.status.success(),
        "tcpdoctor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = run_bounded(cmd, TOOL_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn there_is_a_page_per_command_and_each_renders_without_warnings() {
    let tmp = TempDir::new("man");
    let listed = stdout_of(&["man", "--out-dir", &tmp.path().display().to_string()]);
    let cmds = commands();
    let expected: Vec<String> = cmds
        .iter()
        .map(|(words, _)| {
            let mut name = String::from("tcpdoctor");
            for w in words {
                name = format!("{name}-{w}");
            }
            tmp.path().join(format!("{name}.1")).display().to_string()
        })
        .collect();
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        expected,
        "pages written"
    );
    assert!(cmds.iter().any(|(w, _)| w == &["lint", "nginx"]));
    assert!(cmds.iter().any(|(w, _)| w == &["completions"]));

    let groff = tool("groff", "--version", "Debian groff-base", "man pages");
    let man = tool("man", "--version", "Debian man-db", "man pages");
    let lexgrog = tool("lexgrog", "--version", "Debian man-db", "man pages' NAME");
    for ((words, flags), path) in cmds.iter().zip(&expected) {
        let page = Path::new(path);
        let name = page.file_stem().and_then(|s| s.to_str()).expect("name");
        // `tcpdoctor man WORDS` prints the same page.
        let mut args = vec!["man"];
        args.extend(words.iter().map(String::as_str));
        let printed = stdout_of(&args);
        assert_eq!(
            printed,
            std::fs::read_to_string(page).expect("page"),
            "{name}"
        );
        assert!(printed.contains(".SH NAME\n"), "{name}");
        assert!(printed.contains(".SH \"SEE ALSO\"\n"), "{name}");

        if let Some(groff) = groff {
            // -ww: every warning; -z: no output, only the diagnostics.
            let (ok, _, err) = run(Command::new(groff)
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(page));
            assert!(ok && err.is_empty(), "groff on {name}: {err}");
        }
        if let Some(man) = man {
            let (ok, text, err) = run(Command::new(man)
                .args(["--warnings", "-l"])
                .arg(page)
                .env("MANWIDTH", "80")
                .env("MAN_KEEP_FORMATTING", "")
                .env("LC_ALL", "C.UTF-8"));
            assert!(ok && err.is_empty(), "man -l {name}: {err}");
            // Header: name(1), the manual's name; footer: the version.
            let first = text.lines().next().unwrap_or_default();
            let last = text.lines().last().unwrap_or_default();
            assert!(
                first.contains(&format!("{name}(1)")) && first.contains("tcpdoctor manual"),
                "{first}"
            );
            let version = format!("tcpdoctor {}", env!("CARGO_PKG_VERSION"));
            assert!(last.starts_with(&version), "{last}");
            for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"] {
                assert!(
                    text.contains(&format!("\n{section}\n")),
                    "{name}: {section}\n{text}"
                );
            }
            // Hyphenation may split a flag at the end of a line: join them first.
            let joined = text.replace("‐\n", "").replace("-\n", "");
            let plain: String = joined.split_whitespace().collect::<Vec<_>>().join(" ");
            for flag in flags {
                assert!(
                    plain.contains(flag.as_str()),
                    "{name} documents {flag}:\n{text}"
                );
            }
        }
        if let Some(lexgrog) = lexgrog {
            // What mandb puts in the whatis index: the name and the one-line summary.
            let (ok, text, err) = run(Command::new(lexgrog).arg(page));
            assert!(ok, "lexgrog {name}: {text}{err}");
            assert!(text.contains(&format!("\"{name} - ")), "{text}");
        }
    }
}

#[test]
fn an_unknown_page_is_one_line_naming_it_and_the_commands() {
    let out = run_tcpdoctor(&["man", "frobnicate"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("'frobnicate'") && err.contains("lint nginx"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // --out-dir writes every page; with a command it would be ambiguous.
    let out = run_tcpdoctor(&["man", "serve", "--out-dir", "/tmp"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn completions_offer_every_command_and_flag_in_each_shell() {
    let cmds = commands();
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        for (words, flags) in &cmds {
            for w in words {
                assert!(script.contains(w.as_str()), "{shell}: command {w}");
            }
            for f in flags {
                // fish spells `--listen` as `-l listen`.
                let bare = f.trim_start_matches('-');
                let found = if shell == "fish" {
                    script.contains(&format!("-l {bare}"))
                } else {
                    script.contains(f.as_str())
                };
                assert!(found, "{shell}: {words:?} {f}");
            }
        }
    }
    let out = run_tcpdoctor(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "an unsupported shell is refused"
    );
}

/// What bash offers after `line` (the last word is the one being completed), with the
/// script sourced as bash-completion would.
fn bash_offers(bash: &str, script: &Path, lines: &[&str]) -> Vec<BTreeSet<String>> {
    let mut program = format!("source {}\n", script.display());
    program.push_str(
        r#"offer() {
  read -r -a COMP_WORDS <<< "$1"
  if [[ "$1" == *" " ]]; then COMP_WORDS+=(""); fi
  COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
  COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
  _tcpdoctor tcpdoctor "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" 2>/dev/null
  printf '%s\n' "${COMPREPLY[@]}"; echo '--end--'
}
"#,
    );
    for l in lines {
        program.push_str(&format!("offer '{l}'\n"));
    }
    let (ok, out, err) = run(Command::new(bash).args(["--norc", "--noprofile", "-c", &program]));
    assert!(ok, "bash: {err}");
    let mut sets = vec![BTreeSet::new()];
    for l in out.lines() {
        if l == "--end--" {
            sets.push(BTreeSet::new());
        } else if let Some(last) = sets.last_mut() {
            last.insert(l.to_string());
        }
    }
    sets.pop();
    assert_eq!(sets.len(), lines.len(), "{out}");
    sets
}

#[test]
fn bash_completes_commands_subcommands_and_values() {
    let Some(bash) = tool("bash", "--version", "Debian bash", "bash completion") else {
        return;
    };
    let tmp = TempDir::new("bashcomp");
    let script = tmp.path().join("tcpdoctor.bash");
    std::fs::write(&script, stdout_of(&["completions", "bash"])).expect("write");
    let offers = bash_offers(
        bash,
        &script,
        &[
            "tcpdoctor ",
            "tcpdoctor lint ",
            "tcpdoctor completions ",
            "tcpdoctor states --by ",
            "tcpdoctor serve --li",
            "tcpdoctor --col",
        ],
    );
    let top: BTreeSet<String> = commands()
        .into_iter()
        .filter(|(w, _)| w.len() == 1)
        .map(|(w, _)| w[0].clone())
        .collect();
    assert!(
        offers[0].is_superset(&top),
        "{:?} lacks some of {top:?}",
        offers[0]
    );
    assert!(offers[1].contains("nginx"), "{:?}", offers[1]);
    let shells: BTreeSet<String> = ["bash", "zsh", "fish"].map(String::from).into();
    assert!(offers[2].is_superset(&shells), "{:?}", offers[2]);
    let keys: BTreeSet<String> = ["process", "peer", "local-port", "remote-port", "netns"]
        .map(String::from)
        .into();
    assert_eq!(offers[3], keys);
    assert_eq!(offers[4], ["--listen".to_string()].into());
    assert_eq!(offers[5], ["--color".to_string()].into());
}

#[test]
fn fish_completes_commands_and_values() {
    let Some(fish) = tool("fish", "--version", "Debian fish", "fish completion") else {
        return;
    };
    let tmp = TempDir::new("fishcomp");
    let script = tmp.path().join("tcpdoctor.fish");
    std::fs::write(&script, stdout_of(&["completions", "fish"])).expect("write");
    let offered = |line: &str| -> BTreeSet<String> {
        let program = format!("source {}; complete -C '{line}'", script.display());
        let (ok, out, err) = run(Command::new(fish).args(["--no-config", "-c", &program]));
        assert!(ok && err.is_empty(), "fish: {err}");
        // Each candidate is `word<TAB>description`.
        out.lines()
            .map(|l| l.split('\t').next().unwrap_or(l).to_string())
            .collect()
    };
    let top = offered("tcpdoctor ");
    for (words, _) in commands().iter().filter(|(w, _)| w.len() == 1) {
        assert!(top.contains(&words[0]), "{} in {top:?}", words[0]);
    }
    assert!(offered("tcpdoctor lint ").contains("nginx"));
    let shells = offered("tcpdoctor completions ");
    for s in ["bash", "zsh", "fish"] {
        assert!(shells.contains(s), "{shells:?}");
    }
    assert!(offered("tcpdoctor states --by ").contains("local-port"));
}

#[test]
fn zsh_loads_the_completion_function() {
    let Some(zsh) = tool("zsh", "--version", "Debian zsh", "zsh completion") else {
        return;
    };
    let tmp = TempDir::new("zshcomp");
    let script = tmp.path().join("_tcpdoctor");
    let text = stdout_of(&["completions", "zsh"]);
    assert!(
        text.starts_with("#compdef tcpdoctor\n"),
        "{}",
        &text[..40.min(text.len())]
    );
    std::fs::write(&script, &text).expect("write");
    let (ok, _, err) = run(Command::new(zsh).arg("-n").arg(&script));
    assert!(ok && err.is_empty(), "zsh -n: {err}");
    // As installed: a file `_tcpdoctor` in $fpath, found by compinit and bound to the
    // command.
    let program = format!(
        "fpath=({} $fpath); autoload -U compinit; compinit -u -D; print -r -- ${{_comps[tcpdoctor]}}",
        tmp.path().display()
    );
    let (ok, out, err) = run(Command::new(zsh).args(["-f", "-c", &program]));
    assert!(ok, "zsh: {err}");
    assert_eq!(out.trim(), "_tcpdoctor", "{err}");
}
