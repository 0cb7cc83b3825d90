//! HTTP/1.1 framing for the API: requests parsed with `httparse` (incrementally, so a request
//! may arrive one byte at a time), bodies framed by `Content-Length`, responses serialized.
//!
//! Limits: a request head (request line and headers) of at most [`MAX_HEAD`] bytes, a body of
//! at most [`MAX_BODY`] bytes. Beyond them, and for anything malformed, the request gets a 4xx
//! and the connection closes. Chunked bodies are refused (411): every client of this API sends
//! `Content-Length`.

/// Largest request head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, without a query string.
    pub path: String,
    /// The body (empty if none).
    pub body: Vec<u8>,
    /// Whether a `Content-Length` header was present (a body was sent, maybe empty).
    pub has_body: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// A parsed request head, waiting for its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    method: String,
    path: String,
    head_len: usize,
    content_length: Option<usize>,
    keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    NeedHead,
    /// The head is complete; the body is not.
    NeedBody(Head),
    /// A whole request, and how many bytes it took.
    Request(Request, usize),
    /// The request is unacceptable: answer this and close.
    Reject(Response),
}

/// Whether `buf`'s new bytes (from `from` on) may have completed the head, i.e. contain the
/// blank line (so a byte-at-a-time writer does not make every byte re-parse the head).
pub fn may_end_head(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(3);
    buf[start..].windows(2).any(|w| w == b"\n\n") || buf[start..].windows(3).any(|w| w == b"\n\r\n")
}

/// Parses the head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Parsed::Reject(too_large_head())
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Reject(too_large_head())
        }
        Ok(httparse::Status::Partial) => return Parsed::NeedHead,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Reject(Response::reject(
                431,
                &format!("more than {MAX_HEADERS} request headers"),
            ))
        }
        Err(e) => {
            return Parsed::Reject(Response::reject(
                400,
                &format!("malformed HTTP request: {e}"),
            ))
        }
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Reject(Response::reject(400, "malformed HTTP request line"));
    };
    let mut head = Head {
        method: method.to_string(),
        path: path_of(target),
        head_len,
        content_length: None,
        keep_alive: version == 1,
        expect_continue: false,
    };
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_ascii_lowercase();
        if h.name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if head.content_length.is_none_or(|m| m == n) => {
                    head.content_length = Some(n)
                }
                _ => return Parsed::Reject(Response::reject(400, "invalid Content-Length")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Reject(Response::reject(
                411,
                "Transfer-Encoding is not supported: send the body with a Content-Length",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value.split(',').any(|t| t.trim() == "close") {
                head.keep_alive = false;
            } else if value.split(',').any(|t| t.trim() == "keep-alive") {
                head.keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("expect") && value == "100-continue" {
            head.expect_continue = true;
        }
    }
    if head.content_length.is_some_and(|n| n > MAX_BODY) {
        return Parsed::Reject(Response::reject(
            413,
            &format!("the request body is larger than {MAX_BODY} bytes"),
        ));
    }
    body_of(head, buf)
}

/// With the head parsed: the whole request, if `buf` holds its body.
pub fn body_of(head: Head, buf: &[u8]) -> Parsed {
    let len = head.content_length.unwrap_or(0);
    let end = head.head_len + len;
    if buf.len() < end {
        return Parsed::NeedBody(head);
    }
    Parsed::Request(
        Request {
            method: head.method,
            path: head.path,
            body: buf[head.head_len..end].to_vec(),
            has_body: head.content_length.is_some(),
            keep_alive: head.keep_alive,
        },
        end,
    )
}

fn too_large_head() -> Response {
    Response::reject(
        431,
        &format!("the request head is larger than {MAX_HEAD} bytes"),
    )
}

/// The path of a request target: origin form (`/api/v1/vm.info?x`) or absolute form
/// (`http://localhost/api/v1/vm.info`), without the query.
fn path_of(target: &str) -> String {
    let rest = match target.split_once("://") {
        Some((_, after)) => after.find('/').map_or("/", |i| &after[i..]),
        None => target,
    };
    rest.split(['?', '#']).next().unwrap_or("/").to_string()
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type of the body.
    pub content_type: Option<&'static str>,
    /// The body.
    pub body: Vec<u8>,
    /// An `Allow` header (405).
    pub allow: Option<String>,
    /// Close the connection after it.
    pub close: bool,
}

/// The reason phrase of the statuses this API uses.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

impl Response {
    /// 204, no body.
    pub fn no_content() -> Response {
        Response {
            status: 204,
            content_type: None,
            body: Vec::new(),
            allow: None,
            close: false,
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: Vec<u8>) -> Response {
        Response {
            status: 200,
            content_type: Some("application/json"),
            body,
            allow: None,
            close: false,
        }
    }

    /// 200 with a text body of `content_type`.
    pub fn text(content_type: &'static str, body: String) -> Response {
        Response {
            status: 200,
            content_type: Some(content_type),
            body: body.into_bytes(),
            allow: None,
            close: false,
        }
    }

    /// An error: Cloud Hypervisor's body, a JSON array of messages, outermost first. Framing
    /// statuses (408, 411, 413, 431) and 5xx close the connection.
    pub fn errors(status: u16, messages: &[String]) -> Response {
        Response {
            status,
            content_type: Some("application/json"),
            body: serde_json::to_vec(messages).unwrap_or_default(),
            allow: None,
            close: matches!(status, 408 | 411 | 413 | 431) || status >= 500,
        }
    }

    /// A request that could not be framed or accepted: an error with one message, and the
    /// connection closes (the stream is unusable).
    pub fn reject(status: u16, message: &str) -> Response {
        let mut r = Response::errors(status, &[message.to_string()]);
        r.close = true;
        r
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: Strata API\r\n",
            self.status,
            reason(self.status)
        );
        if let Some(allow) = &self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        if self.status != 204 {
            if let Some(ct) = self.content_type {
                head.push_str(&format!("Content-Type: {ct}\r\n"));
            }
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if !keep_alive || self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if self.status != 204 {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &[u8]) -> (Request, usize) {
        match parse_head(raw) {
            Parsed::Request(r, n) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    fn rejected(raw: &[u8]) -> u16 {
        match parse_head(raw) {
            Parsed::Reject(r) => r.status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_parse_head_get_without_body() {
        let (r, n) = request(b"GET /api/v1/vm.info?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\nGET");

        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("GET", "/api/v1/vm.info")
        );
        assert!(r.keep_alive && !r.has_body && r.body.is_empty());
        assert_eq!(n, 53);
    }

    #[test]
    fn test_parse_head_put_with_body_waits_for_it() {
        let raw = b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 4\r\n\r\n{}";

        let Parsed::NeedBody(head) = parse_head(raw) else {
            panic!("expected NeedBody");
        };
        let mut whole = raw.to_vec();
        whole.extend_from_slice(b"  ");
        let Parsed::Request(r, _) = body_of(head, &whole) else {
            panic!("expected a request");
        };

        assert_eq!(r.body, b"{}  ");
        assert!(r.has_body);
    }

    #[test]
    fn test_parse_head_partial_then_limits() {
        assert_eq!(
            parse_head(b"GET /vm.info HTTP/1.1\r\nHost: x"),
            Parsed::NeedHead
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(rejected(&huge), 431);
        let big_body = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(rejected(big_body.as_bytes()), 413);
    }

    #[test]
    fn test_parse_head_rejects_malformed_chunked_and_bad_length() {
        assert_eq!(rejected(b"GET\x01 / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            rejected(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            rejected(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
    }

    #[test]
    fn test_parse_head_connection_close_and_http10() {
        let (r, _) = request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = request(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = request(
            b"GET http://localhost/api/v1/vmm.ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        );
        assert!(r.keep_alive);
        assert_eq!(r.path, "/api/v1/vmm.ping");
    }

    #[test]
    fn test_may_end_head_looks_at_new_bytes_only() {
        let buf = b"GET / HTTP/1.1\r\n\r\n";

        assert!(may_end_head(buf, buf.len() - 1));
        assert!(!may_end_head(&buf[..buf.len() - 2], buf.len() - 3));
        assert!(may_end_head(b"GET / HTTP/1.1\n\n", 15));
    }

    #[test]
    fn test_response_bytes_204_has_no_body_or_length() {
        let bytes = Response::no_content().to_bytes(true);

        assert_eq!(
            bytes,
            b"HTTP/1.1 204 No Content\r\nServer: Strata API\r\n\r\n"
        );
    }

    #[test]
    fn test_response_bytes_error_is_json_array_and_closes_on_framing_errors() {
        let r = Response::reject(413, "too big");
        let text = String::from_utf8(r.to_bytes(true)).expect("utf8");

        assert!(
            text.starts_with("HTTP/1.1 413 Content Too Large\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n[\"too big\"]"), "{text}");
    }
}
