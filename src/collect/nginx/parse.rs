//! The nginx configuration tokenizer and tree builder: text in, a tree of directives out,
//! each with its line. No I/O: `include` is left as a directive for [`super::load`] to
//! expand.
//!
//! Our own small tokenizer rather than a crate. The crates looked at (nginx-config:
//! a fixed grammar of known directives that rejects third-party ones, no longer
//! released; nginx-lint-parser: young, its API changes every release, and it counts
//! braces inside `*_by_lua_block` with nginx's own lexer, so a `}` in a Lua string or a
//! `'` in a Lua comment breaks it; misc-conf: no line numbers in its tree) do not parse
//! every real configuration the way nginx does. nginx's own lexer (`ngx_conf_read_token()`
//! in src/core/ngx_conf_file.c) is a page of C; this follows it rule for rule, so that
//! what nginx accepts parses here and what it rejects fails here with the same
//! file:line (one deliberate difference: an unterminated quoted string is reported on
//! the line where it opens, not at the end of the file), and `*_by_lua_block` bodies are skipped the way lua-nginx-module reads
//! them (its own Lua-aware lexer: strings, long brackets and comments).

use std::fmt;

/// Index of a file in the loader's file list.
pub type FileId = u32;

/// Blocks may nest this deep; nginx has no limit, but a config nested deeper is not
/// real and a bound keeps a hostile file from exhausting the stack of any consumer.
pub const MAX_BLOCK_DEPTH: usize = 64;

/// One directive: its name, its arguments (unescaped, quotes removed), where it is, and
/// its block when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub file: FileId,
    /// 1-based line of the directive's name.
    pub line: u32,
    /// `{ ... }` contents; `None` for a directive ended by `;` and for raw blocks.
    pub block: Option<Vec<Directive>>,
    /// A `*_by_lua_block { ... }`: the body is Lua, skipped unparsed.
    pub raw_block: bool,
}

impl Directive {
    /// The first argument, or "".
    pub fn arg(&self, i: usize) -> &str {
        self.args.get(i).map_or("", String::as_str)
    }

    /// The block's directives (empty when there is none).
    pub fn children(&self) -> &[Directive] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// Malformed input: where, and what nginx would say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub file: FileId,
    pub line: u32,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// How a statement ended (the cases of `ngx_conf_read_token()`'s return).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `;`
    Semicolon,
    /// `{`
    Open,
    /// `}`
    Close,
    /// end of the text
    Eof,
}

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
    line: u32,
    file: FileId,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Longest parse error message, in characters.
const ERROR_MAX: usize = 300;

impl<'a> Lexer<'a> {
    fn error(&self, line: u32, message: impl Into<String>) -> ParseError {
        // Messages quote the offending token, which can be any length and any bytes
        // (found by tests/parser_props.rs: a 28 KB error): printable, and short.
        ParseError {
            file: self.file,
            line,
            message: crate::model::text::clean(&message.into(), ERROR_MAX),
        }
    }

    /// Reads the words of one statement and what ended it. Mirrors
    /// `ngx_conf_read_token()`: `#` starts a comment only between words; a quoted word
    /// must be followed by a space, `;`, `{` or `)`; `${` does not open a block; a
    /// backslash takes the next byte literally.
    fn statement(&mut self, words: &mut Vec<(String, u32)>) -> Result<End, ParseError> {
        words.clear();
        let mut last_space = true;
        let mut need_space = false;
        let mut s_quoted = false;
        let mut d_quoted = false;
        let mut quoted = false;
        let mut comment = false;
        let mut variable = false;
        let mut start = self.pos;
        let mut start_line = self.line;
        loop {
            let Some(&ch) = self.s.get(self.pos) else {
                if !words.is_empty() || !last_space {
                    let what = if d_quoted || s_quoted {
                        "unexpected end of file in a quoted string, expecting the closing quote"
                    } else {
                        "unexpected end of file, expecting \";\" or \"}\""
                    };
                    return Err(self.error(
                        if d_quoted || s_quoted {
                            start_line
                        } else {
                            self.line
                        },
                        what,
                    ));
                }
                return Ok(End::Eof);
            };
            self.pos += 1;
            if ch == b'\n' {
                self.line += 1;
                if comment {
                    comment = false;
                    continue;
                }
            }
            if comment {
                continue;
            }
            if quoted {
                quoted = false;
                continue;
            }
            if need_space {
                if is_space(ch) {
                    last_space = true;
                    need_space = false;
                    continue;
                }
                match ch {
                    b';' => return Ok(End::Semicolon),
                    b'{' => return Ok(End::Open),
                    // `if ($a = "b")`: the parenthesis starts a word of its own.
                    b')' => {
                        last_space = true;
                        need_space = false;
                    }
                    _ => {
                        return Err(self.error(
                            self.line,
                            format!("unexpected \"{}\" after a quoted string", char::from(ch)),
                        ))
                    }
                }
            }
            if last_space {
                start = self.pos - 1;
                start_line = self.line;
                if is_space(ch) {
                    continue;
                }
                match ch {
                    b';' | b'{' => {
                        if words.is_empty() {
                            return Err(
                                self.error(self.line, format!("unexpected \"{}\"", char::from(ch)))
                            );
                        }
                        return Ok(if ch == b'{' {
                            End::Open
                        } else {
                            End::Semicolon
                        });
                    }
                    b'}' => {
                        if !words.is_empty() {
                            return Err(self.error(
                                self.line,
                                "unexpected \"}\": the directive before it is not ended by \";\"",
                            ));
                        }
                        return Ok(End::Close);
                    }
                    b'#' => {
                        comment = true;
                        continue;
                    }
                    b'\\' => {
                        quoted = true;
                        last_space = false;
                        continue;
                    }
                    b'"' => {
                        start += 1;
                        d_quoted = true;
                        last_space = false;
                        continue;
                    }
                    b'\'' => {
                        start += 1;
                        s_quoted = true;
                        last_space = false;
                        continue;
                    }
                    b'$' => {
                        variable = true;
                        last_space = false;
                        continue;
                    }
                    _ => {
                        last_space = false;
                        continue;
                    }
                }
            }
            // Inside a word.
            if ch == b'{' && variable {
                continue;
            }
            variable = false;
            if ch == b'\\' {
                quoted = true;
                continue;
            }
            if ch == b'$' {
                variable = true;
                continue;
            }
            let found = if d_quoted {
                let end = ch == b'"';
                if end {
                    d_quoted = false;
                    need_space = true;
                }
                end
            } else if s_quoted {
                let end = ch == b'\'';
                if end {
                    s_quoted = false;
                    need_space = true;
                }
                end
            } else if is_space(ch) || ch == b';' || ch == b'{' {
                last_space = true;
                true
            } else {
                false
            };
            if found {
                words.push((unescape(&self.s[start..self.pos - 1]), start_line));
                match ch {
                    b';' => return Ok(End::Semicolon),
                    b'{' => return Ok(End::Open),
                    _ => {}
                }
            }
        }
    }

    /// Skips a Lua body after its `{` up to the matching `}`, the way lua-nginx-module's
    /// block reader does: braces inside Lua strings ('..', "..", [[..]], [==[..]==]) and
    /// comments (`--` to the end of the line, `--[[ .. ]]`) do not count.
    fn skip_lua(&mut self, opened_line: u32) -> Result<(), ParseError> {
        let mut depth = 1usize;
        let unterminated = |l: &Lexer<'_>, what: &str| {
            l.error(
                opened_line,
                format!("unexpected end of file in the Lua block opened here ({what}), expecting \"}}\""),
            )
        };
        while let Some(&ch) = self.s.get(self.pos) {
            match ch {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b'{' => {
                    depth += 1;
                    self.pos += 1;
                }
                b'}' => {
                    depth -= 1;
                    self.pos += 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                b'"' | b'\'' => {
                    self.pos += 1;
                    loop {
                        let Some(&c) = self.s.get(self.pos) else {
                            return Err(unterminated(self, "in a string"));
                        };
                        self.pos += 1;
                        match c {
                            b'\\' => {
                                if self.s.get(self.pos) == Some(&b'\n') {
                                    self.line += 1;
                                }
                                self.pos += 1;
                            }
                            b'\n' => self.line += 1,
                            _ if c == ch => break,
                            _ => {}
                        }
                    }
                }
                b'-' if self.s.get(self.pos + 1) == Some(&b'-') => {
                    self.pos += 2;
                    if let Some(level) = self.long_bracket_at(self.pos) {
                        self.pos += level + 2;
                        if !self.skip_long_bracket(level) {
                            return Err(unterminated(self, "in a --[[ comment"));
                        }
                    } else {
                        while let Some(&c) = self.s.get(self.pos) {
                            if c == b'\n' {
                                break;
                            }
                            self.pos += 1;
                        }
                    }
                }
                b'[' => {
                    if let Some(level) = self.long_bracket_at(self.pos) {
                        self.pos += level + 2;
                        if !self.skip_long_bracket(level) {
                            return Err(unterminated(self, "in a [[ string"));
                        }
                    } else {
                        self.pos += 1;
                    }
                }
                _ => self.pos += 1,
            }
        }
        Err(unterminated(self, "never closed"))
    }

    /// `[[` or `[=..=[` at `at`: the number of `=`.
    fn long_bracket_at(&self, at: usize) -> Option<usize> {
        if self.s.get(at) != Some(&b'[') {
            return None;
        }
        let level = self.s[at + 1..].iter().take_while(|c| **c == b'=').count();
        (self.s.get(at + 1 + level) == Some(&b'[')).then_some(level)
    }

    /// Skips to the `]=..=]` of `level`; false at the end of the text.
    fn skip_long_bracket(&mut self, level: usize) -> bool {
        while let Some(&c) = self.s.get(self.pos) {
            self.pos += 1;
            if c == b'\n' {
                self.line += 1;
            } else if c == b']' {
                let eq = self.s[self.pos..]
                    .iter()
                    .take_while(|c| **c == b'=')
                    .count();
                if eq == level && self.s.get(self.pos + eq) == Some(&b']') {
                    self.pos += eq + 1;
                    return true;
                }
            }
        }
        false
    }
}

/// nginx unescapes every word: `\"`, `\'` and `\\` lose the backslash, `\t`, `\r`, `\n`
/// become the control characters, any other backslash stays.
fn unescape(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' {
            match raw.get(i + 1) {
                Some(b'"' | b'\'' | b'\\') => {
                    out.push(raw[i + 1]);
                    i += 2;
                    continue;
                }
                Some(b't') => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                Some(b'r') => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                Some(b'n') => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether nginx hands the block of `name` to a Lua reader instead of its own lexer.
pub fn is_lua_block(name: &str) -> bool {
    name.ends_with("_by_lua_block")
}

/// Parses one file's text into its top-level directives. A `}` with no open block, a
/// block never closed, a directive not ended by `;` at the end of the file, a stray
/// `;` or `{`, text glued to a closing quote, and blocks nested deeper than
/// [`MAX_BLOCK_DEPTH`] are errors with the line. Never panics.
pub fn parse(text: &[u8], file: FileId) -> Result<Vec<Directive>, ParseError> {
    let mut lx = Lexer {
        s: text,
        pos: 0,
        line: 1,
        file,
    };
    // Open blocks: (the directive that opened it, its children so far).
    let mut stack: Vec<(Directive, Vec<Directive>)> = Vec::new();
    let mut top: Vec<Directive> = Vec::new();
    let mut words = Vec::new();
    loop {
        let end = lx.statement(&mut words)?;
        match end {
            End::Semicolon | End::Open => {
                let mut it = words.drain(..);
                let Some((name, line)) = it.next() else {
                    // statement() reports a bare `;`/`{` itself; never reached.
                    return Err(lx.error(lx.line, "empty directive"));
                };
                let args: Vec<String> = it.map(|(w, _)| w).collect();
                let mut d = Directive {
                    name,
                    args,
                    file,
                    line,
                    block: None,
                    raw_block: false,
                };
                if end == End::Semicolon {
                    match stack.last_mut() {
                        Some((_, children)) => children.push(d),
                        None => top.push(d),
                    }
                } else if is_lua_block(&d.name) {
                    lx.skip_lua(line)?;
                    d.raw_block = true;
                    match stack.last_mut() {
                        Some((_, children)) => children.push(d),
                        None => top.push(d),
                    }
                } else {
                    if stack.len() >= MAX_BLOCK_DEPTH {
                        return Err(
                            lx.error(line, format!("blocks nested deeper than {MAX_BLOCK_DEPTH}"))
                        );
                    }
                    stack.push((d, Vec::new()));
                }
            }
            End::Close => {
                let Some((mut d, children)) = stack.pop() else {
                    return Err(lx.error(lx.line, "unexpected \"}\": no block is open here"));
                };
                d.block = Some(children);
                match stack.last_mut() {
                    Some((_, parent)) => parent.push(d),
                    None => top.push(d),
                }
            }
            End::Eof => {
                if let Some((d, _)) = stack.last() {
                    return Err(lx.error(
                        lx.line,
                        format!(
                            "unexpected end of file, expecting \"}}\" (the \"{}\" block opened on line {} is not closed)",
                            d.name, d.line
                        ),
                    ));
                }
                return Ok(top);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<Directive> {
        parse(text.as_bytes(), 0).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn err(text: &str) -> ParseError {
        match parse(text.as_bytes(), 0) {
            Ok(d) => panic!("parsed: {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn directives_blocks_and_lines() {
        let d = p("user www;\n\nhttp {\n  server {\n    listen 80;\n  }\n}\n");
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].name.as_str(), d[0].arg(0), d[0].line),
            ("user", "www", 1)
        );
        let http = &d[1];
        assert_eq!(http.line, 3);
        let server = &http.children()[0];
        assert_eq!((server.name.as_str(), server.line), ("server", 4));
        assert_eq!(server.children()[0].args, vec!["80"]);
        assert_eq!(server.children()[0].line, 5);
    }

    #[test]
    fn quotes_escapes_and_comments() {
        let d = p("a \"x y\" 'it\\'s';");
        assert_eq!(d[0].args, vec!["x y", "it's"]);
        let d = p("log_format main '$remote_addr \"$request\"' # trailing\n  escape=json; # c\nb \\; c\\\"d;");
        assert_eq!(
            d[0].args,
            vec!["main", "$remote_addr \"$request\"", "escape=json"]
        );
        // Only \" \' \\ \t \r \n are unescaped; `\;` keeps its backslash, as in nginx.
        assert_eq!(d[1].args, vec!["\\;", "c\"d"]);
        // `#` inside a word is not a comment.
        let d = p("location ~ /a#b { return 200; }");
        assert_eq!(d[0].args, vec!["~", "/a#b"]);
        // Escaped control characters.
        let d = p("add_header X \"a\\tb\\nc\";");
        assert_eq!(d[0].args[1], "a\tb\nc");
        // A word may span lines when quoted; its line is where it starts.
        let d = p("\n\nreturn 200 \"one\ntwo\";\nnext;");
        assert_eq!(d[0].line, 3);
        assert_eq!(d[1].line, 5);
    }

    #[test]
    fn variables_with_braces_do_not_open_blocks() {
        let d = p("set $x ${host}_${uri}; proxy_pass http://$up;");
        assert_eq!(d[0].args, vec!["$x", "${host}_${uri}"]);
        assert_eq!(d[1].args, vec!["http://$up"]);
        // A regex with a brace quantifier must be quoted in nginx; unquoted, `{` opens a
        // block there too.
        let d = p("location ~ \"^/a{2}\" { }");
        assert_eq!(d[0].args, vec!["~", "^/a{2}"]);
    }

    #[test]
    fn if_conditions_split_like_nginx() {
        let d = p("if ($http_x = \"a b\") { return 403; }\nif (-f $request_filename) { break; }");
        assert_eq!(d[0].args, vec!["($http_x", "=", "a b", ")"]);
        assert_eq!(d[0].children()[0].name, "return");
        assert_eq!(d[1].args, vec!["(-f", "$request_filename)"]);
    }

    #[test]
    fn map_and_unknown_directives_parse_generically() {
        let d = p("map $http_upgrade $connection_upgrade {\n  default upgrade;\n  '' close;\n}\nmore_set_headers 'Server: x';\n");
        let m = &d[0];
        assert_eq!(m.args, vec!["$http_upgrade", "$connection_upgrade"]);
        assert_eq!(m.children()[1].name, "");
        assert_eq!(m.children()[1].args, vec!["close"]);
        assert_eq!(d[1].name, "more_set_headers");
    }

    #[test]
    fn lua_blocks_are_skipped_with_their_strings_and_comments() {
        let text = r#"http {
    init_by_lua_block {
        local t = { a = "}", b = '{' }  -- a } in a comment, and it's fine
        --[==[ long comment with } and ]] inside ]==]
        local s = [[ multi
line } string ]]
        if #t > 0 then ngx.log(ngx.ERR, "x") end
        local u = t[1]
    }
    server {
        location / { content_by_lua_block { ngx.say("hi}") } }
        set_by_lua_block $v { return "}" }
    }
}
"#;
        let d = p(text);
        let http = &d[0];
        assert_eq!(http.children()[0].name, "init_by_lua_block");
        assert!(http.children()[0].raw_block);
        let server = &http.children()[1];
        assert_eq!(server.line, 10);
        let loc = &server.children()[0];
        assert_eq!(loc.line, 11);
        assert!(loc.children()[0].raw_block);
        assert_eq!(server.children()[1].args, vec!["$v"]);
        assert_eq!(server.children()[1].line, 12);
    }

    #[test]
    fn malformed_input_is_an_error_with_its_line() {
        let e = err("http {\n  server {\n    listen 80;\n  }\n");
        assert_eq!(e.line, 5);
        assert!(e.message.contains("expecting \"}\""), "{}", e.message);
        assert!(e.message.contains("opened on line 1"), "{}", e.message);

        let e = err("events {}\n}\n");
        assert_eq!((e.line, e.message.contains("unexpected \"}\"")), (2, true));

        let e = err("worker_processes 2\n");
        assert!(e.message.contains("expecting \";\""), "{}", e.message);

        let e = err("a;\n;\n");
        assert_eq!(e.line, 2);

        let e = err("listen \"80\"x;");
        assert!(e.message.contains("unexpected \"x\""), "{}", e.message);

        let e = err("a {\n b c\n}\n");
        assert_eq!(e.line, 3);

        let e = err("\n\nreturn 200 \"never closed;\n}\n");
        assert_eq!(e.line, 3, "{}", e.message);

        let e = err("http {\n content_by_lua_block {\n  ngx.say(\"x\")\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("Lua block"), "{}", e.message);

        let e = err("x { content_by_lua_block { local s = \"}\n");
        assert_eq!(e.line, 1);

        let deep = "a {".repeat(MAX_BLOCK_DEPTH + 1);
        let e = err(&deep);
        assert!(e.message.contains("nested deeper"), "{}", e.message);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // Every prefix of a tricky text, and some binary noise: errors or trees, no panic.
        let text = "a \"b\\\" { c '${d}' } # e\n content_by_lua_block { f[==[ } ]==] } ; \\";
        for i in 0..=text.len() {
            let _ = parse(&text.as_bytes()[..i], 0);
        }
        let mut x: u32 = 7;
        let noise: Vec<u8> = (0..20_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b"{};\"'\\#$ \nab[=]-"[(x >> 16) as usize % 16]
            })
            .collect();
        for chunk in noise.chunks(997) {
            let _ = parse(chunk, 0);
        }
        assert!(parse(b"", 0).expect("empty").is_empty());
        assert!(parse(b"# only a comment", 0).expect("comment").is_empty());
        assert!(
            parse(&[0xff, 0xfe, b';'], 0).is_ok(),
            "non-UTF-8 words are kept lossily"
        );
    }
}
