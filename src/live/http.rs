//! The little HTTP/1.x that `serve` speaks, with every input bounded: a request head is
//! read into at most [`MAX_HEAD_BYTES`] with at most [`MAX_HEADER_LINES`] header lines,
//! and whatever does not fit, or is not HTTP/1.0 or 1.1, is refused with its status
//! (431, 414, 400, 505) instead of being buffered. Request bodies are never read: a
//! request that announces one is answered and its connection closed.
//!
//! Pure functions on bytes, so the rules are tested without sockets; the connection
//! handling (timeouts, the cap, writing) is in [`super::serve`].

/// The longest request head (request line, header lines, blank line) kept in memory.
/// Prometheus sends about 300 bytes; curl about 80.
pub const MAX_HEAD_BYTES: usize = 8192;
/// The most header lines a request may have.
pub const MAX_HEADER_LINES: usize = 100;

/// The methods `serve` answers; any other gets 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

/// A request head that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path of the target, without its query (`/metrics` of `/metrics?x=1` and of
    /// `http://host:9469/metrics`).
    pub path: String,
    /// Whether the connection must close after the answer: the client asked for it
    /// (HTTP/1.1 `Connection: close`, HTTP/1.0 without `keep-alive`), or the request
    /// has a body that will not be read.
    pub close: bool,
    /// HTTP/1.0 asking for keep-alive: the answer must say `Connection: keep-alive`.
    pub keep_alive_10: bool,
}

/// What a buffer holds so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Not a whole head yet, and nothing wrong so far: read more.
    Incomplete,
    /// A whole head: the request, and how many bytes of the buffer it took.
    Done(Request, usize),
    /// A head that will not be served; answer with this status and close.
    Refused(Refusal),
}

/// Why a request is refused: its status and a one-line reason for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Parse {
    Parse::Refused(Refusal { status, reason })
}

/// Looks for a whole request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parse {
    // A client may send empty lines before a request (RFC 9112, 2.2); skip a few.
    let mut start = 0;
    while start < buf.len().min(8) && (buf[start] == b'\r' || buf[start] == b'\n') {
        start += 1;
    }
    let Some((head_len, term_len)) = find_head_end(&buf[start..]) else {
        let seen = &buf[start..];
        if !seen.contains(&b'\n') && buf.len() > MAX_HEAD_BYTES {
            return refuse(414, "request line too long");
        }
        if buf.len() > MAX_HEAD_BYTES {
            return refuse(431, "request header too large");
        }
        // Refuse a flood of short header lines as soon as it passes the count, not
        // only when it reaches the byte bound.
        if line_count(seen) > MAX_HEADER_LINES + 1 {
            return refuse(431, "too many header lines");
        }
        return Parse::Incomplete;
    };
    let consumed = start + head_len + term_len;
    if consumed > MAX_HEAD_BYTES {
        return refuse(431, "request header too large");
    }
    let head = &buf[start..start + head_len];
    let mut lines = head.split(|&b| b == b'\n').map(strip_cr);
    let Some(request_line) = lines.next() else {
        return refuse(400, "empty request");
    };
    let (method, target, version) = match split_request_line(request_line) {
        Ok(parts) => parts,
        Err(r) => return Parse::Refused(r),
    };
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        v if is_http_version(v) => return refuse(505, "only HTTP/1.0 and HTTP/1.1 are served"),
        _ => return refuse(400, "malformed HTTP version"),
    };
    let Some(path) = path_of(target) else {
        return refuse(400, "malformed request target");
    };

    let mut header_lines = 0;
    let (mut close_asked, mut keep_alive_asked, mut has_body) = (false, false, false);
    let mut content_length: Option<&[u8]> = None;
    for line in lines {
        header_lines += 1;
        if header_lines > MAX_HEADER_LINES {
            return refuse(431, "too many header lines");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return refuse(400, "malformed header line");
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        // No empty names, no whitespace before the colon, no obsolete line folding.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return refuse(400, "malformed header line");
        }
        if value.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
            return refuse(400, "control character in a header value");
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                close_asked |= token.eq_ignore_ascii_case(b"close");
                keep_alive_asked |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return refuse(400, "malformed Content-Length");
            }
            if content_length.is_some_and(|v| v != value) {
                return refuse(400, "conflicting Content-Length");
            }
            content_length = Some(value);
            has_body |= value.iter().any(|&b| b != b'0');
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_body = true;
        }
    }
    let keep_alive_10 = http10 && keep_alive_asked && !close_asked && !has_body;
    let close = has_body || close_asked || (http10 && !keep_alive_asked);
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        _ => Method::Other,
    };
    Parse::Done(
        Request {
            method,
            path,
            close,
            keep_alive_10,
        },
        consumed,
    )
}

/// (length of the head before its blank line, length of the terminator).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let scan = &buf[..buf.len().min(MAX_HEAD_BYTES + 4)];
    let mut i = 0;
    while let Some(p) = scan[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        // The next line is empty: "\n\n" or "\n\r\n".
        match scan.get(nl + 1) {
            Some(b'\n') => return Some((strip_len(scan, nl), 2 + cr_before(scan, nl))),
            Some(b'\r') if scan.get(nl + 2) == Some(&b'\n') => {
                return Some((strip_len(scan, nl), 3 + cr_before(scan, nl)))
            }
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// 1 if the line feed at `nl` follows a carriage return.
fn cr_before(buf: &[u8], nl: usize) -> usize {
    usize::from(nl > 0 && buf[nl - 1] == b'\r')
}

/// The head's length without the line end at `nl`.
fn strip_len(buf: &[u8], nl: usize) -> usize {
    nl - cr_before(buf, nl)
}

fn line_count(buf: &[u8]) -> usize {
    buf.iter().filter(|&&b| b == b'\n').count()
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t');
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// A request line's method, target and version.
type RequestLine<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Method, target and version, separated by single spaces.
fn split_request_line(line: &[u8]) -> Result<RequestLine<'_>, Refusal> {
    let bad = Refusal {
        status: 400,
        reason: "malformed request line",
    };
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) || target.is_empty() {
        return Err(bad);
    }
    Ok((method, target, version))
}

/// `HTTP/` then a digit, a dot and a digit: a version, if not one we serve.
fn is_http_version(v: &[u8]) -> bool {
    matches!(v, [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit())
        || matches!(v, [b'H', b'T', b'T', b'P', b'/', a] if a.is_ascii_digit())
}

/// The path of an origin-form (`/metrics?x`) or absolute-form (`http://h/metrics`)
/// target, without the query; `*` stays `*`. `None`: not printable ASCII, or neither form.
fn path_of(target: &[u8]) -> Option<String> {
    if !target.iter().all(|&b| b.is_ascii_graphic()) {
        return None;
    }
    let text = std::str::from_utf8(target).ok()?;
    let path = if text.starts_with('/') || text == "*" {
        text
    } else {
        let rest = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))?;
        rest.find('/').map_or("/", |i| &rest[i..])
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    Some(path.to_string())
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The status line's reason phrase.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// How the connection goes on after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 default: nothing to say.
    KeepAlive11,
    /// HTTP/1.0 that asked for keep-alive: say `Connection: keep-alive`.
    KeepAlive10,
    /// Say `Connection: close` and close after the answer.
    Close,
}

/// The status line and header lines of an answer whose body is `body_len` bytes (sent
/// or not: a HEAD answer carries the length of the body it leaves out).
pub fn response_head(
    status: u16,
    content_type: &str,
    body_len: usize,
    persist: Persist,
    allow: Option<&str>,
) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {body_len}\r\n",
        reason(status)
    );
    if let Some(a) = allow {
        h.push_str("Allow: ");
        h.push_str(a);
        h.push_str("\r\n");
    }
    match persist {
        Persist::KeepAlive11 => {}
        Persist::KeepAlive10 => h.push_str("Connection: keep-alive\r\n"),
        Persist::Close => h.push_str("Connection: close\r\n"),
    }
    h.push_str("\r\n");
    h.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> (Request, usize) {
        match parse(buf) {
            Parse::Done(r, n) => (r, n),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn status(buf: &[u8]) -> u16 {
        match parse(buf) {
            Parse::Refused(r) => r.status,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_prometheus_scrape_parses_and_keeps_the_connection() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9469\r\nUser-Agent: Prometheus/2.42.0\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nAccept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n";
        let (r, n) = done(req);
        assert_eq!(n, req.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/metrics");
        assert!(!r.close && !r.keep_alive_10);
    }

    #[test]
    fn http10_closes_unless_it_asks_for_keep_alive() {
        let (r, _) = done(b"GET / HTTP/1.0\r\n\r\n");
        assert!(r.close);
        let (r, _) = done(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(!r.close && r.keep_alive_10);
        let (r, _) = done(b"HEAD / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n");
        assert!(r.close);
        assert_eq!(r.method, Method::Head);
    }

    #[test]
    fn bare_line_feeds_queries_and_absolute_targets() {
        let (r, n) = done(b"GET /metrics?name[]=x HTTP/1.1\nHost: a\n\nGET / HTTP/1.1\n\n");
        assert_eq!((r.path.as_str(), n), ("/metrics", 40));
        let (r, _) = done(b"GET http://h:9469/metrics HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/metrics");
        let (r, _) = done(b"\r\nGET http://h HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/");
    }

    #[test]
    fn pipelined_requests_are_taken_one_at_a_time() {
        let two = b"GET / HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n";
        let (a, n) = done(two);
        assert_eq!(a.path, "/");
        let (b, m) = done(&two[n..]);
        assert_eq!((b.path.as_str(), n + m), ("/metrics", two.len()));
    }

    #[test]
    fn a_partial_head_is_incomplete() {
        for cut in [
            &b"G"[..],
            b"GET /metrics HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r",
        ] {
            assert_eq!(parse(cut), Parse::Incomplete, "{cut:?}");
        }
    }

    #[test]
    fn other_methods_parse_as_other() {
        let (r, _) = done(b"POST /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(r.method, Method::Other);
        let (r, _) = done(b"get /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(r.method, Method::Other, "methods are case-sensitive");
    }

    #[test]
    fn a_body_closes_the_connection() {
        let (r, _) = done(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        assert!(r.close);
        let (r, _) = done(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(!r.close);
        let (r, _) = done(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(r.close);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
    }

    #[test]
    fn unsupported_versions_get_505_garbage_400() {
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTP/3\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTP/0.9\r\n\r\n"), 505);
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"GET / FTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET  / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1 x\r\n\r\n"), 400);
        assert_eq!(status(b"G(T / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /a\x01 HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET nowhere HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n"),
            400
        );
    }

    #[test]
    fn malformed_header_lines_get_400() {
        for bad in [
            &b"GET / HTTP/1.1\r\nno colon\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : space\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        ] {
            assert_eq!(status(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
        // Tabs and bytes above 0x7f are allowed in values.
        done(b"GET / HTTP/1.1\r\nX: a\tb \xc3\xa9\r\n\r\n");
    }

    #[test]
    fn oversized_heads_are_refused_without_waiting_for_their_end() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(status(&big), 431, "no end yet, already too big");
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&big), 431);
        let mut line = b"GET /".to_vec();
        line.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(status(&line), 414);
        // Exactly at the bound is fine.
        let mut fits = b"GET / HTTP/1.1\r\nX: ".to_vec();
        fits.resize(MAX_HEAD_BYTES - 4, b'a');
        fits.extend_from_slice(b"\r\n\r\n");
        assert_eq!(done(&fits).1, MAX_HEAD_BYTES);
    }

    #[test]
    fn too_many_header_lines_are_refused_as_they_come() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..MAX_HEADER_LINES {
            many.extend_from_slice(b"a:\r\n");
        }
        let mut complete = many.clone();
        complete.extend_from_slice(b"\r\n");
        done(&complete);
        many.extend_from_slice(b"a:\r\n");
        assert_eq!(status(&many), 431, "refused before the head ends");
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
    }

    #[test]
    fn answers_carry_length_connection_and_allow() {
        let h = response_head(405, "text/plain", 17, Persist::Close, Some("GET, HEAD"));
        assert_eq!(
            String::from_utf8(h).expect("ascii"),
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 17\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\n"
        );
        let h = response_head(200, "text/html", 3, Persist::KeepAlive10, None);
        assert!(String::from_utf8(h)
            .expect("ascii")
            .ends_with("Content-Length: 3\r\nConnection: keep-alive\r\n\r\n"));
    }
}
