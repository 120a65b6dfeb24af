//! The HTTP/1.1 fast path. Most traffic is plain HTTP/1.1 request/response with a
//! `Content-Length` or chunked body; for it, this module parses heads with `httparse`
//! straight from the connection's buffer, rewrites them once into the bytes that go out,
//! and relays bodies between the client and a pooled upstream connection inside the
//! connection's own task: no per-request header map, no channel or task hop to a pooled
//! connection. That is what brings the proxy to nginx's cost per request (see the README).
//! Everything else — HTTP/2 (prior knowledge or ALPN), upgrades, `Expect`, HTTP/1.0,
//! absolute-form targets — is handed, with the bytes already read, to hyper's server for
//! the rest of the connection (see [`crate::dataplane`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use tower::retry::budget::Budget;

use crate::dataplane::{self, Admitted, Conn, Inflight, Outcome, BUFFER_LIMIT};
use crate::runtime::{ms_at, EndpointRt, VersionRt};

/// The largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a head.
const MAX_HEADERS: usize = 100;
/// How long a client may take to send a complete request head (also the keep-alive idle
/// limit).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle keep-alive connection stays open after shutdown begins (see `serve`).
const KEEPALIVE_GRACE: Duration = Duration::from_secs(2);

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes (responses only).
    Close,
}

/// Why a chunked body could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct ChunkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Follows a chunked body as it passes through, to find where it ends. The bytes are
/// relayed unchanged; only the framing is checked (strictly: CRLF line ends, hex sizes
/// without overflow), so the proxy and the upstream cannot disagree on where a message
/// ends.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
        }
    }
}

impl Chunked {
    /// Consumes the body's bytes from `data`: returns how many belong to it (all of `data`,
    /// or fewer when the body ends inside it).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data => {
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size => {
                    if let Some(d) = (b as char).to_digit(16) {
                        if self.digits >= 15 {
                            return Err(ChunkError);
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    } else if self.digits == 0 {
                        return Err(ChunkError);
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.state = ChunkState::Ext;
                    } else {
                        return Err(ChunkError);
                    }
                }
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' | 0 => return Err(ChunkError),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::Size;
                    self.digits = 0;
                }
                ChunkState::TrailerStart => {
                    self.state = match b {
                        b'\r' => ChunkState::EndLf,
                        b'\n' => return Err(ChunkError),
                        _ => ChunkState::TrailerLine,
                    };
                }
                ChunkState::TrailerLine => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' => return Err(ChunkError),
                    _ => {}
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::Done;
                }
            }
            i += 1;
        }
        Ok(i)
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// The fields the proxy cares about, told apart by name (length first: one comparison for
/// most names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Connection,
    /// Hop-by-hop (RFC 9110 §7.6.1): never forwarded, whatever `Connection` says.
    HopByHop,
    Upgrade,
    TransferEncoding,
    ContentLength,
    Host,
    Expect,
    Cookie,
    ForwardedFor,
    /// `X-Forwarded-Proto` and `-Host`: replaced by the proxy's own.
    ForwardedOther,
    Other,
}

fn field(name: &str) -> Field {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is("te") => Field::HopByHop,
        4 if is("host") => Field::Host,
        6 if is("cookie") => Field::Cookie,
        6 if is("expect") => Field::Expect,
        7 if is("upgrade") => Field::Upgrade,
        7 if is("trailer") => Field::HopByHop,
        10 if is("connection") => Field::Connection,
        10 if is("keep-alive") => Field::HopByHop,
        14 if is("content-length") => Field::ContentLength,
        15 if is("x-forwarded-for") => Field::ForwardedFor,
        16 if is("proxy-connection") => Field::HopByHop,
        16 if is("x-forwarded-host") => Field::ForwardedOther,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        17 if is("x-forwarded-proto") => Field::ForwardedOther,
        _ => Field::Other,
    }
}

/// The comma-separated tokens of a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(value)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// What a head's fields say, from one pass over them.
struct Scan<'b> {
    kinds: [Field; MAX_HEADERS],
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    /// Other field names `Connection` lists: hop-by-hop for this message.
    listed: Vec<&'b str>,
    upgrade: bool,
    expect: bool,
    /// `Transfer-Encoding` is exactly `chunked` (`Err`: some other coding).
    chunked: Result<bool, ()>,
    /// `Content-Length` (`Err`: malformed, or values that disagree).
    length: Result<Option<u64>, ()>,
    hosts: usize,
    host: Option<&'b [u8]>,
    forwarded_for: usize,
}

fn scan<'b>(headers: &[httparse::Header<'b>]) -> Scan<'b> {
    let mut s = Scan {
        kinds: [Field::Other; MAX_HEADERS],
        close: false,
        keep_alive: false,
        upgrade_token: false,
        listed: Vec::new(),
        upgrade: false,
        expect: false,
        chunked: Ok(false),
        length: Ok(None),
        hosts: 0,
        host: None,
        forwarded_for: 0,
    };
    for (h, kind) in headers.iter().zip(s.kinds.iter_mut()) {
        *kind = field(h.name);
        match *kind {
            Field::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case("close") {
                        s.close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") {
                        s.keep_alive = true;
                    } else if t.eq_ignore_ascii_case("upgrade") {
                        s.upgrade_token = true;
                    } else {
                        s.listed.push(t);
                    }
                }
            }
            Field::Upgrade => s.upgrade = true,
            Field::Expect => s.expect = true,
            Field::TransferEncoding => {
                let mut any = false;
                for t in tokens(h.value) {
                    any = true;
                    // Only `chunked`, once: any other coding is not relayed.
                    s.chunked = match s.chunked {
                        Ok(false) if t.eq_ignore_ascii_case("chunked") => Ok(true),
                        _ => Err(()),
                    };
                }
                if !any {
                    // Empty, or not text: nothing to frame by, and another reader might
                    // read it otherwise.
                    s.chunked = Err(());
                }
            }
            Field::ContentLength => {
                let v = h.value;
                s.length = match s.length {
                    Ok(prior)
                        if !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit) =>
                    {
                        let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                        match prior {
                            Some(m) if m != n => Err(()),
                            _ => Ok(Some(n)),
                        }
                    }
                    _ => Err(()),
                };
            }
            Field::Host => {
                s.hosts += 1;
                s.host = Some(h.value);
            }
            Field::ForwardedFor => s.forwarded_for += 1,
            _ => {}
        }
    }
    s
}

impl Scan<'_> {
    /// Whether a field is dropped on the way through.
    fn dropped(&self, i: usize, name: &str) -> bool {
        match self.kinds.get(i).copied().unwrap_or(Field::Other) {
            Field::Connection | Field::HopByHop | Field::Upgrade | Field::TransferEncoding => true,
            // `Connection` may name ordinary fields only: were it to take away the framing
            // (`Content-Length`) or `Host`, the upstream would read a different message than
            // the one the proxy framed — a request-smuggling hole.
            Field::Other => {
                !self.listed.is_empty() && self.listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            }
            _ => false,
        }
    }
}

/// A request the fast path serves, read from the head.
#[derive(Debug)]
pub struct RequestHead<A> {
    pub head_len: usize,
    pub method: Method,
    pub target: String,
    pub host: String,
    pub body: Framing,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// What the caller decided from the head (the admission).
    pub admitted: A,
}

/// What a client's bytes hold.
#[derive(Debug)]
pub enum ParsedRequest<A> {
    /// Not a whole head yet.
    Partial,
    /// Something the fast path leaves to hyper (from here to the end of the connection).
    Handoff,
    /// A head that cannot be served: answer this and close.
    Bad(StatusCode, &'static str),
    Request(RequestHead<A>),
}

/// Parses a request head at the start of `buf` and writes the head that goes upstream into
/// `out` (hop-by-hop fields removed, forwarding fields set). `admit` gets the routing host
/// (lower case, no port), the path, a header lookup and a cookie lookup.
pub fn parse_request<'b, A>(
    buf: &'b [u8],
    peer_ip: &str,
    tls: bool,
    out: &mut Vec<u8>,
    admit: impl FnOnce(
        &str,
        &str,
        &dyn Fn(&str) -> Option<&'b str>,
        &dyn Fn(&str) -> Option<&'b str>,
    ) -> A,
) -> ParsedRequest<A> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                ParsedRequest::Bad(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large\n",
                )
            } else {
                ParsedRequest::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return ParsedRequest::Bad(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields\n",
            )
        }
        Err(_) => return ParsedRequest::Bad(StatusCode::BAD_REQUEST, "malformed request\n"),
    };
    if head_len > MAX_HEAD {
        return ParsedRequest::Bad(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large\n",
        );
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return ParsedRequest::Bad(StatusCode::BAD_REQUEST, "malformed request\n");
    };
    let headers: &[httparse::Header<'b>] = req.headers;
    let fields = scan(headers);
    if version != 1 || !target.starts_with('/') || method == "CONNECT" || fields.expect {
        return ParsedRequest::Handoff;
    }
    if fields.upgrade && fields.upgrade_token {
        return ParsedRequest::Handoff;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return ParsedRequest::Bad(StatusCode::BAD_REQUEST, "malformed method\n");
    };
    if fields.hosts > 1 {
        return ParsedRequest::Bad(StatusCode::BAD_REQUEST, "more than one Host field\n");
    }
    let host_value = match fields.host.map(std::str::from_utf8) {
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => return ParsedRequest::Bad(StatusCode::BAD_REQUEST, "malformed Host\n"),
        None => None,
    };
    let Ok(chunked) = fields.chunked else {
        return ParsedRequest::Bad(StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding\n");
    };
    let Ok(length) = fields.length else {
        return ParsedRequest::Bad(StatusCode::BAD_REQUEST, "malformed Content-Length\n");
    };
    let body = match (chunked, length) {
        // Both: the classic request-smuggling ambiguity; refused rather than guessed.
        (true, Some(_)) => {
            return ParsedRequest::Bad(
                StatusCode::BAD_REQUEST,
                "both Transfer-Encoding and Content-Length\n",
            )
        }
        (true, None) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    let close = fields.close;
    let host = dataplane::host_name(None, host_value);
    let path = target.split_once('?').map_or(target, |(p, _)| p);

    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (i, h) in headers.iter().enumerate() {
        if fields.dropped(i, h.name)
            || matches!(fields.kinds[i], Field::ForwardedFor | Field::ForwardedOther)
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    // The client's address joins the chain the request came with (all of its fields).
    out.extend_from_slice(b"x-forwarded-for: ");
    if fields.forwarded_for > 0 {
        for (h, _) in headers
            .iter()
            .zip(fields.kinds)
            .filter(|(_, k)| *k == Field::ForwardedFor)
        {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(peer_ip.as_bytes());
    out.extend_from_slice(if tls {
        b"\r\nx-forwarded-proto: https\r\nx-forwarded-host: " as &[u8]
    } else {
        b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: "
    });
    out.extend_from_slice(host_value.unwrap_or(&host).as_bytes());
    out.extend_from_slice(b"\r\n");
    if body == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");

    let header = |name: &str| -> Option<&'b str> {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let kinds = fields.kinds;
    let cookie = |name: &str| -> Option<&'b str> {
        dataplane::cookie_in(
            headers
                .iter()
                .zip(kinds)
                .filter(|(_, k)| *k == Field::Cookie)
                .filter_map(|(h, _)| std::str::from_utf8(h.value).ok()),
            name,
        )
    };
    let admitted = admit(&host, path, &header, &cookie);
    ParsedRequest::Request(RequestHead {
        head_len,
        method,
        target: target.to_owned(),
        host,
        body,
        close,
        admitted,
    })
}

/// What the proxy adds to a response head.
#[derive(Debug, Default)]
pub struct ResponseExtras<'a> {
    pub version: Option<&'a [u8]>,
    pub set_cookie: Option<&'a [u8]>,
    pub close: bool,
}

/// What an upstream's bytes hold.
#[derive(Debug, PartialEq, Eq)]
pub enum ParsedResponse {
    Partial,
    Bad(&'static str),
    /// A 1xx answer (not 101): relay `out` and read on.
    Interim {
        head_len: usize,
    },
    Final {
        head_len: usize,
        status: u16,
        body: Framing,
        /// The upstream connection can carry another request afterwards.
        reusable: bool,
    },
}

/// Parses a response head at the start of `buf` and writes the head that goes to the client
/// into `out`. A body delimited by the upstream closing goes to the client chunked.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    extras: &ResponseExtras<'_>,
    out: &mut Vec<u8>,
) -> ParsedResponse {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return ParsedResponse::Partial,
        Ok(_) => return ParsedResponse::Bad("response head too large"),
        Err(_) => return ParsedResponse::Bad("malformed response head"),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return ParsedResponse::Bad("malformed response head");
    };
    let headers: &[httparse::Header<'_>] = resp.headers;
    let fields = scan(headers);
    let interim = (100..200).contains(&status);
    if status == 101 {
        return ParsedResponse::Bad("switching protocols without an upgrade request");
    }
    let Ok(chunked) = fields.chunked else {
        return ParsedResponse::Bad("unsupported transfer coding");
    };
    let Ok(length) = fields.length else {
        return ParsedResponse::Bad("malformed Content-Length");
    };
    let mut reusable = if version == 1 {
        !fields.close
    } else {
        fields.keep_alive
    };
    let body = if interim || head_request || status == 204 || status == 304 {
        // A chunked body announced where none may follow: whatever the upstream sends after
        // it must not be read as the next answer.
        reusable &= !chunked;
        Framing::Empty
    } else if chunked {
        // With a Content-Length as well, the upstream's framing is suspect: the length is
        // dropped and the connection not reused.
        reusable &= length.is_none();
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => {
                reusable = false;
                Framing::Close
            }
        }
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&status_digits(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (i, h) in headers.iter().enumerate() {
        if fields.dropped(i, h.name) || (chunked && fields.kinds[i] == Field::ContentLength) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if interim {
        out.extend_from_slice(b"\r\n");
        return ParsedResponse::Interim { head_len };
    }
    if matches!(body, Framing::Chunked | Framing::Close) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(v) = extras.version {
        out.extend_from_slice(b"x-hemiron-version: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(c) = extras.set_cookie {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    if extras.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ParsedResponse::Final {
        head_len,
        status,
        body,
        reusable,
    }
}

/// A status code's three ASCII digits (httparse only yields codes 100..=999).
fn status_digits(n: u16) -> [u8; 3] {
    let n = n.min(999);
    let digit = |d: u16| b'0' + u8::try_from(d % 10).unwrap_or(0);
    [digit(n / 100), digit(n / 10), digit(n)]
}

/// How long a body may make no progress either way before the exchange is given up.
const BODY_IDLE: Duration = Duration::from_secs(60);

/// How relaying a body failed.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("no progress for {BODY_IDLE:?}")]
    Idle,
    #[error("reading: {0}")]
    Read(io::Error),
    #[error("writing: {0}")]
    Write(io::Error),
    #[error("the body ended early")]
    Truncated,
    #[error(transparent)]
    Framing(#[from] ChunkError),
}

/// Relays a body from `src` to `dst`: first what `buf` already holds, then reads. `out`
/// holds bytes to send before it (a head), so that a small message goes out in one write.
/// Bytes after the body's end stay in `buf`.
async fn relay<R, W>(
    framing: Framing,
    src: &mut R,
    buf: &mut BytesMut,
    dst: &mut W,
    out: &mut Vec<u8>,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut chunked = Chunked::default();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        let take = match framing {
            Framing::Empty => 0,
            Framing::Length(_) => usize::try_from(left).unwrap_or(usize::MAX).min(buf.len()),
            Framing::Chunked => chunked.feed(buf)?,
            Framing::Close => buf.len(),
        };
        if take > 0 {
            if framing == Framing::Close {
                out.extend_from_slice(format!("{take:x}\r\n").as_bytes());
                out.extend_from_slice(&buf[..take]);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&buf[..take]);
            }
            buf.advance(take);
            if let Framing::Length(_) = framing {
                left -= take as u64;
            }
        }
        let finished = match framing {
            Framing::Empty => true,
            Framing::Length(_) => left == 0,
            Framing::Chunked => chunked.done(),
            Framing::Close => false,
        };
        if finished || out.len() >= 16 * 1024 {
            write_idle(dst, out).await?;
        }
        if finished {
            return Ok(());
        }
        buf.reserve(16 * 1024);
        let n = tokio::time::timeout(BODY_IDLE, src.read_buf(buf))
            .await
            .map_err(|_| RelayError::Idle)?
            .map_err(RelayError::Read)?;
        if n == 0 {
            if framing == Framing::Close {
                out.extend_from_slice(b"0\r\n\r\n");
                write_idle(dst, out).await?;
                return Ok(());
            }
            return Err(RelayError::Truncated);
        }
        if !out.is_empty() {
            write_idle(dst, out).await?;
        }
    }
}

/// Writes and empties `out`, within the idle limit.
async fn write_idle<W: AsyncWrite + Unpin>(
    dst: &mut W,
    out: &mut Vec<u8>,
) -> Result<(), RelayError> {
    let mut write = std::pin::pin!(dst.write_all(out));
    // Most writes complete at once: the timer is only made for one that has to wait.
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    let written = match first {
        Poll::Ready(r) => r,
        Poll::Pending => tokio::time::timeout(BODY_IDLE, write)
            .await
            .map_err(|_| RelayError::Idle)?,
    };
    written.map_err(RelayError::Write)?;
    out.clear();
    Ok(())
}

/// An I/O stream with bytes already read put back in front, for hyper to take over.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A timer for a deadline that moves with every request and rarely fires: the timer is
/// re-armed only when it goes off before the current deadline, not each time the deadline
/// moves (arming a timer per request costs more than the rest of the request's bookkeeping).
struct LazyDeadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    deadline: tokio::time::Instant,
}

impl LazyDeadline {
    fn new() -> LazyDeadline {
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
        LazyDeadline {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            deadline: far,
        }
    }

    fn set(&mut self, deadline: tokio::time::Instant) {
        self.deadline = deadline;
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Resolves once the current deadline has passed.
    async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if tokio::time::Instant::now() >= self.deadline {
                return;
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// Waits for the drain of the version a request runs on. The registration with the
/// version's token is kept from one request to the next while they go to the same version.
#[derive(Default)]
struct DrainWait {
    token: Option<Arc<CancellationToken>>,
    wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl DrainWait {
    fn track(&mut self, token: &Arc<CancellationToken>) {
        if self.token.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) {
            return;
        }
        self.token = Some(token.clone());
        self.wait = Some(Box::pin(CancellationToken::clone(token).cancelled_owned()));
    }

    async fn cancelled(&mut self) {
        match self.wait.as_mut() {
            Some(w) => w.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

/// What a connection needs besides its stream.
pub struct Accepted {
    pub conn: Conn,
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub stop: watch::Receiver<bool>,
    pub watcher: Watcher,
}

/// Serves a client connection: HTTP/1.1 here, anything else through hyper.
pub async fn serve<S>(mut io: S, cx: Accepted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    let mut ubuf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(4 * 1024);
    let mut uhead = Vec::with_capacity(4 * 1024);
    let peer_ip = cx.conn.peer.ip().to_string();
    let mut first = true;
    let mut head_timer = LazyDeadline::new();
    let mut response_timer = LazyDeadline::new();
    let mut drain = DrainWait::default();
    let mut stop = cx.stop.clone();
    // At shutdown an idle keep-alive connection is not closed at once: a client may be
    // sending its next request on it right then, and would see the connection reset. For a
    // grace period it stays open, and a request that comes is answered with
    // `Connection: close`; a connection still idle after that is closed.
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(KEEPALIVE_GRACE).await;
    };
    tokio::pin!(stopping);
    let mut started = Instant::now();
    loop {
        head_timer.set(tokio::time::Instant::now() + HEAD_TIMEOUT);
        // How far the buffer is known not to hold the end of a head: a head that arrives in
        // many small pieces is searched once, not parsed again from the start each time.
        let mut searched = 0;
        // The first bytes are parsed at once (a head nearly always arrives whole); only a
        // head that did not is searched for its end before being parsed again.
        let mut direct = true;
        // A whole request head, or the end of the connection.
        let parsed = loop {
            if first && rbuf.starts_with(b"PRI ") {
                break ParsedRequest::Handoff;
            }
            let complete = if rbuf.is_empty() {
                false
            } else {
                direct || head_end(&rbuf, &mut searched)
            };
            if !complete && rbuf.len() > MAX_HEAD {
                break ParsedRequest::Bad(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large\n",
                );
            }
            if complete {
                let shared = &cx.conn.shared;
                let tls = cx.conn.tls;
                started = Instant::now();
                let unix = shared.unix_secs(started);
                match parse_request(
                    &rbuf,
                    &peer_ip,
                    tls,
                    &mut uhead,
                    |host, path, header, cookie| {
                        dataplane::admit(
                            shared,
                            host,
                            path,
                            header,
                            cookie,
                            tls,
                            unix,
                            dataplane::Path::Fast,
                        )
                    },
                ) {
                    ParsedRequest::Partial => {
                        direct = false;
                        head_end(&rbuf, &mut searched);
                    }
                    other => break other,
                }
            }
            rbuf.reserve(4 * 1024);
            let idle = rbuf.is_empty();
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut rbuf) => r,
                () = head_timer.expired() => return,
                () = &mut stopping, if idle => return,
            };
            match read {
                Ok(n) if n > 0 => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "client read failed");
                    return;
                }
            }
        };
        first = false;
        let req = match parsed {
            ParsedRequest::Partial => return,
            ParsedRequest::Handoff => return hand_over(rbuf.freeze(), io, cx).await,
            ParsedRequest::Bad(status, message) => {
                dataplane::record_local(&cx.conn, started, "", "", None, status, message);
                local_response(&mut out, status, message, true);
                let _ = io.write_all(&out).await;
                return;
            }
            ParsedRequest::Request(RequestHead {
                admitted: Err(dataplane::Refused::Handoff),
                ..
            }) => {
                // An app with an HTTP/2 version: hyper serves the connection from this
                // request on (its bytes are still in the buffer).
                return hand_over(rbuf.freeze(), io, cx).await;
            }
            ParsedRequest::Request(req) => req,
        };
        rbuf.advance(req.head_len);
        let RequestHead {
            method,
            target,
            host,
            body,
            close,
            admitted,
            ..
        } = req;
        let admitted = match admitted {
            Ok(a) => a,
            Err(refused) => {
                dataplane::record_local(
                    &cx.conn,
                    started,
                    method.as_str(),
                    &host,
                    Some(&target),
                    refused.status(),
                    refused.message(),
                );
                // The body is not read: the connection closes after the answer if it had one.
                let close = close || body != Framing::Empty || *cx.stop.borrow();
                local_response(&mut out, refused.status(), refused.message(), close);
                if io.write_all(&out).await.is_err() || close {
                    return;
                }
                continue;
            }
        };
        let exchange = Exchange {
            conn: &cx.conn,
            admitted: &admitted,
            method: &method,
            host: &host,
            target: &target,
            body,
            started,
            now: ms_at(cx.conn.shared.epoch, started),
        };
        let close_wanted = close || *cx.stop.borrow();
        let end = exchange
            .run(
                &mut io,
                Buffers {
                    rbuf: &mut rbuf,
                    ubuf: &mut ubuf,
                    uhead: &mut uhead,
                    out: &mut out,
                },
                Waits {
                    response: &mut response_timer,
                    drain: &mut drain,
                },
                close_wanted,
            )
            .await;
        match end {
            // A response that did not say `Connection: close` (the stop came during it) keeps
            // the connection for the grace period: closing it now could cut the client's
            // next request.
            Ended::KeepAlive if !close_wanted => {}
            _ => {
                let _ = io.shutdown().await;
                return;
            }
        }
    }
}

/// Hands a connection to hyper with what was read of it (`prefix`: the next request, or an
/// HTTP/2 preface).
async fn hand_over<S>(prefix: Bytes, io: S, cx: Accepted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if *cx.stop.borrow() && !prefix.starts_with(b"PRI ") {
        // Stopping: a graceful shutdown of the connection now would close it while hyper is
        // still telling its protocol, before it reads the request already here (one a client
        // sent on a keep-alive connection in the grace period). That request is answered,
        // with keep-alive off; `cx`'s watcher, held until then, keeps the stop waiting.
        let mut once = (*cx.builder).clone();
        once.http1().keep_alive(false);
        let conn = cx.conn.clone();
        let service = hyper::service::service_fn(move |req| dataplane::handle(req, conn.clone()));
        let io = TokioIo::new(Prefixed { prefix, inner: io });
        if let Err(e) = once.serve_connection_with_upgrades(io, service).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        drop(cx);
        return;
    }
    serve_hyper(Prefixed { prefix, inner: io }, cx).await
}

/// Serves the rest of a connection with hyper (HTTP/2, upgrades, and what else the fast
/// path leaves to it), tracked for graceful shutdown.
pub async fn serve_hyper<S>(io: S, cx: Accepted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = cx.conn;
    let service = hyper::service::service_fn(move |req| dataplane::handle(req, conn.clone()));
    let served = cx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = cx.watcher.watch(served).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Whether `buf` holds the end of a head (an empty line, CRLF or bare LF as httparse
/// accepts), searching on from `searched` and leaving it where the search can resume.
fn head_end(buf: &[u8], searched: &mut usize) -> bool {
    let mut i = *searched;
    while let Some(off) = buf
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let lf = i + off;
        match buf.get(lf + 1) {
            Some(b'\n') => return true,
            Some(b'\r') => match buf.get(lf + 2) {
                Some(b'\n') => return true,
                Some(_) => i = lf + 1,
                None => {
                    *searched = lf;
                    return false;
                }
            },
            Some(_) => i = lf + 1,
            None => {
                *searched = lf;
                return false;
            }
        }
    }
    *searched = buf.len();
    false
}

/// A short answer made by the proxy.
fn local_response(out: &mut Vec<u8>, status: StatusCode, message: &str, close: bool) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(message.len().to_string().as_bytes());
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(message.as_bytes());
}

/// How an exchange left the client connection.
enum Ended {
    KeepAlive,
    Close,
}

/// A connection's buffers: what the client sent, what the upstream sent, the head going
/// upstream (and a small body after it), the bytes going to the client.
struct Buffers<'a> {
    rbuf: &'a mut BytesMut,
    ubuf: &'a mut BytesMut,
    uhead: &'a mut Vec<u8>,
    out: &'a mut Vec<u8>,
}

/// What an exchange waits on besides its sockets.
struct Waits<'a> {
    response: &'a mut LazyDeadline,
    drain: &'a mut DrainWait,
}

/// One request forwarded upstream.
struct Exchange<'a> {
    conn: &'a Conn,
    admitted: &'a Admitted,
    method: &'a Method,
    host: &'a str,
    target: &'a str,
    body: Framing,
    started: Instant,
    /// `started` on the proxy's millisecond clock.
    now: u64,
}

/// A response head from an upstream, with its connection.
struct Answer {
    upstream: TcpStream,
    status: u16,
    body: Framing,
    /// The connection can carry another request once the body is read.
    reusable: bool,
    /// The whole request went upstream (else the client's body was not all read, and its
    /// connection cannot go on).
    request_complete: bool,
}

/// How an attempt to get a response head failed.
enum AttemptError {
    /// Nothing reached the upstream: any request may go elsewhere.
    Connect(String),
    /// A pooled connection the upstream had already closed: nothing came back. `sent`: the
    /// request may have reached it (the write succeeded).
    Stale {
        error: String,
        sent: bool,
    },
    /// The upstream got the request and failed to answer.
    Upstream(String),
    Timeout(String),
    /// The client failed while sending its body.
    Client(String),
    Cancelled,
}

impl Exchange<'_> {
    async fn run<S>(&self, io: &mut S, bufs: Buffers<'_>, waits: Waits<'_>, close: bool) -> Ended
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Buffers {
            rbuf,
            ubuf,
            uhead,
            out,
        } = bufs;
        let rt = &self.admitted.rt;
        let settings = &self.admitted.settings;
        let shared = &self.conn.shared;
        let mut guard = Inflight::new(rt.clone());
        // A small body is read whole first, so that the request can be sent again.
        let buffered = match self.body {
            Framing::Empty => true,
            Framing::Length(n) if n <= BUFFER_LIMIT => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                while rbuf.len() < n {
                    rbuf.reserve(n - rbuf.len());
                    match tokio::time::timeout(BODY_IDLE, io.read_buf(rbuf)).await {
                        Ok(Ok(k)) if k > 0 => {}
                        _ => return Ended::Close,
                    }
                }
                uhead.extend_from_slice(&rbuf[..n]);
                rbuf.advance(n);
                true
            }
            _ => false,
        };
        let upstream_head: &[u8] = uhead;
        let Waits { response, drain } = waits;
        drain.track(&rt.drain.load_full());
        let now = self.now;
        let mut tried: Vec<usize> = Vec::new();
        let attempts_max = rt.endpoints.len().max(1);
        let mut stale_retry = true;
        let mut last_error: Option<String> = None;
        let mut timed_out = false;
        let head_request = *self.method == Method::HEAD;
        let version = settings.expose_version.then_some(rt.id.as_bytes());
        let set_cookie = self.admitted.set_cookie.as_ref().map(|c| c.as_bytes());
        let extras = ResponseExtras {
            version,
            set_cookie,
            close,
        };
        let mut attempts = 0u32;
        let mut body_sent = false;
        let result = loop {
            let ei = match rt.pick(now, &tried) {
                Some(ei) => ei,
                None => break None,
            };
            attempts += 1;
            let ep = &rt.endpoints[ei];
            let attempt = tokio::select! {
                biased;
                r = self.attempt(ep, rt, io, rbuf, ubuf, out, upstream_head, buffered, head_request, &extras, &mut body_sent, response) => r,
                () = drain.cancelled() => Err(AttemptError::Cancelled),
            };
            let is_timeout = matches!(attempt, Err(AttemptError::Timeout(_)));
            // Another endpoint is left, and the body can still be sent to it.
            let more_left =
                |tried: &Vec<usize>| tried.len() < attempts_max && (buffered || !body_sent);
            match attempt {
                Ok(got) => {
                    ep.consecutive_connect
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                    break Some((ei, got));
                }
                Err(AttemptError::Stale { error, sent })
                    if stale_retry
                        && (buffered || !body_sent)
                        && (!sent || dataplane::idempotent(self.method)) =>
                {
                    // Once, on a fresh connection: an idle connection the upstream closed
                    // says nothing about the endpoint. A request whose write failed never
                    // reached it, so even a POST may go again; one that was written might
                    // have been executed, so only an idempotent one does.
                    stale_retry = false;
                    last_error = Some(error);
                    continue;
                }
                Err(AttemptError::Connect(e)) => {
                    rt.metrics.connect_failure(&ep.address);
                    dataplane::passive_connect_failure(shared, rt, ep, now);
                    last_error = Some(e);
                    tried.push(ei);
                    if more_left(&tried) {
                        rt.metrics.retries.inc();
                        continue;
                    }
                    break None;
                }
                Err(
                    AttemptError::Upstream(e)
                    | AttemptError::Stale { error: e, .. }
                    | AttemptError::Timeout(e),
                ) => {
                    timed_out |= is_timeout;
                    last_error = Some(e);
                    tried.push(ei);
                    // The upstream may have acted on it: again only if it is idempotent, and
                    // within the retry budget.
                    if more_left(&tried)
                        && buffered
                        && dataplane::idempotent(self.method)
                        && shared.retry_budget.withdraw()
                    {
                        rt.metrics.retries.inc();
                        continue;
                    }
                    break None;
                }
                Err(AttemptError::Client(e)) => {
                    dataplane::record(
                        self.conn,
                        self.admitted,
                        self.started,
                        &self.outcome(400, None, attempts, Some(&e)),
                    );
                    return Ended::Close;
                }
                Err(AttemptError::Cancelled) => {
                    guard.cancelled();
                    last_error = Some("cancelled: the version's drain timed out".into());
                    break None;
                }
            }
        };
        let Some((
            ei,
            Answer {
                mut upstream,
                status,
                body: framing,
                reusable,
                request_complete,
            },
        )) = result
        else {
            let e = last_error.unwrap_or_else(|| "no endpoint".into());
            tracing::warn!(app = %rt.app, version = %rt.id, error = %e, "upstream request failed");
            dataplane::record(
                self.conn,
                self.admitted,
                self.started,
                &self.outcome(0, None, attempts, Some(&e)),
            );
            drop(guard);
            let (status, message) = if timed_out {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream did not answer in time\n",
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    "the upstream could not be reached\n",
                )
            };
            // A body left half read makes the connection unusable.
            // A body not held in full was left (partly) unread: the connection cannot go on.
            let close = close || !buffered;
            local_response(out, status, message, close);
            if io.write_all(out).await.is_err() || close {
                return Ended::Close;
            }
            return Ended::KeepAlive;
        };
        let ep = &rt.endpoints[ei];
        if let Ok(code) = StatusCode::from_u16(status) {
            dataplane::passive_5xx(shared, rt, ep, code, now);
        }
        dataplane::record(
            self.conn,
            self.admitted,
            self.started,
            &self.outcome(status, Some(&ep.address), attempts, None),
        );
        // `out` holds the client's response head; the body follows it.
        if !request_complete && !close && out.ends_with(b"\r\n\r\n") {
            // The rest of the client's body was never read: this connection ends here.
            out.truncate(out.len() - 2);
            out.extend_from_slice(b"connection: close\r\n\r\n");
        }
        let relayed = tokio::select! {
            biased;
            r = relay(framing, &mut upstream, ubuf, io, out) => r,
            () = drain.cancelled() => {
                guard.cancelled();
                return Ended::Close;
            }
        };
        out.clear();
        match relayed {
            Ok(()) => {
                if reusable && ubuf.is_empty() {
                    ep.checkin(
                        upstream,
                        now,
                        rt.pool_max_idle.load(std::sync::atomic::Ordering::Relaxed),
                    );
                }
                ubuf.clear();
                if request_complete {
                    Ended::KeepAlive
                } else {
                    Ended::Close
                }
            }
            Err(e) => {
                ubuf.clear();
                tracing::debug!(app = %rt.app, version = %rt.id, error = %e, "response body relay failed");
                Ended::Close
            }
        }
    }

    fn outcome<'b>(
        &'b self,
        status: u16,
        endpoint: Option<&'b str>,
        attempts: u32,
        error: Option<&'b str>,
    ) -> Outcome<'b> {
        Outcome {
            method: self.method.as_str(),
            host: self.host,
            path: Some(self.target),
            status,
            endpoint,
            attempts,
            error,
        }
    }

    /// Sends the request to one endpoint and reads the response head; on success `out`
    /// holds the head for the client and `ubuf` the body bytes read with it.
    #[allow(clippy::too_many_arguments)]
    async fn attempt<S>(
        &self,
        ep: &EndpointRt,
        rt: &VersionRt,
        io: &mut S,
        rbuf: &mut BytesMut,
        ubuf: &mut BytesMut,
        out: &mut Vec<u8>,
        upstream_head: &[u8],
        buffered: bool,
        head_request: bool,
        extras: &ResponseExtras<'_>,
        body_sent: &mut bool,
        timer: &mut LazyDeadline,
    ) -> Result<Answer, AttemptError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let settings = &self.admitted.settings;
        let (mut up, reused) = match ep.checkout(
            self.now,
            rt.pool_idle_ms.load(std::sync::atomic::Ordering::Relaxed),
        ) {
            Some(s) => (s, true),
            None => (connect(&ep.address, settings.connect_timeout).await?, false),
        };
        let stale_or = |error: String, sent: bool| {
            if reused {
                AttemptError::Stale { error, sent }
            } else {
                AttemptError::Upstream(error)
            }
        };
        // Set when the upstream stopped taking the body: it may have answered early (a 413,
        // say) and closed, and that answer is still to be read.
        let mut cut_short: Option<String> = None;
        ubuf.clear();
        if buffered {
            // Counted, so that a failure after part of the request went out is not taken
            // for one that sent nothing (which may be retried whatever the method).
            let mut written = 0;
            while written < upstream_head.len() {
                match up.write(&upstream_head[written..]).await {
                    Ok(n) if n > 0 => written += n,
                    Ok(_) => {
                        return Err(stale_or(
                            format!("{}: closed while the request was sent", ep.address),
                            written > 0,
                        ))
                    }
                    Err(e) => {
                        return Err(stale_or(
                            format!("{}: sending the request: {e}", ep.address),
                            written > 0,
                        ))
                    }
                }
            }
        } else {
            *body_sent = true;
            let mut head = upstream_head.to_vec();
            // The upstream is watched while the body goes to it: one that answers early (a
            // 413, say) gets its answer relayed at once instead of after a body it refused.
            let (mut from_up, mut to_up) = up.split();
            tokio::select! {
                biased;
                sent = relay(self.body, io, rbuf, &mut to_up, &mut head) => match sent {
                    Ok(()) => {}
                    Err(RelayError::Write(e)) => {
                        cut_short = Some(format!("{}: sending the request: {e}", ep.address));
                    }
                    Err(e) => return Err(AttemptError::Client(format!("request body: {e}"))),
                },
                early = from_up.read_buf(ubuf) => match early {
                    Ok(n) if n > 0 => {
                        cut_short = Some(format!(
                            "{}: answered before the request body was sent",
                            ep.address
                        ));
                    }
                    Ok(_) => {
                        return Err(AttemptError::Upstream(format!(
                            "{}: closed the connection while the request was sent",
                            ep.address
                        )))
                    }
                    Err(e) => return Err(AttemptError::Upstream(format!("{}: {e}", ep.address))),
                },
            }
        }
        // From the request's sending (an upload's own time does not count); without a body,
        // that is the admission, already on the clock.
        let sent_at = if self.body == Framing::Empty {
            tokio::time::Instant::from_std(self.started)
        } else {
            tokio::time::Instant::now()
        };
        timer.set(sent_at + settings.response_timeout);
        loop {
            if !ubuf.is_empty() {
                match parse_response(ubuf, head_request, extras, out) {
                    ParsedResponse::Partial => {}
                    ParsedResponse::Bad(why) => {
                        return Err(AttemptError::Upstream(format!("{}: {why}", ep.address)))
                    }
                    ParsedResponse::Interim { head_len } => {
                        ubuf.advance(head_len);
                        io.write_all(out).await.map_err(|e| {
                            AttemptError::Client(format!("writing to the client: {e}"))
                        })?;
                        continue;
                    }
                    ParsedResponse::Final {
                        head_len,
                        status,
                        body,
                        reusable,
                    } => {
                        ubuf.advance(head_len);
                        return Ok(Answer {
                            upstream: up,
                            status,
                            body,
                            reusable: reusable && cut_short.is_none(),
                            request_complete: cut_short.is_none(),
                        });
                    }
                }
            }
            ubuf.reserve(16 * 1024);
            let was_empty = ubuf.is_empty();
            let read = tokio::select! {
                biased;
                r = up.read_buf(ubuf) => Ok(r),
                () = timer.expired() => Err(()),
            };
            if let Some(e) = &cut_short {
                // No early answer after all: the send's failure is the error.
                if !matches!(read, Ok(Ok(n)) if n > 0) {
                    return Err(AttemptError::Upstream(e.clone()));
                }
                continue;
            }
            match read {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) if was_empty => {
                    return Err(stale_or(
                        format!("{}: closed the connection without answering", ep.address),
                        true,
                    ))
                }
                Ok(Ok(_)) => {
                    return Err(AttemptError::Upstream(format!(
                        "{}: closed the connection in the response head",
                        ep.address
                    )))
                }
                Ok(Err(e)) if was_empty => {
                    return Err(stale_or(format!("{}: {e}", ep.address), true))
                }
                Ok(Err(e)) => return Err(AttemptError::Upstream(format!("{}: {e}", ep.address))),
                Err(_) => {
                    return Err(AttemptError::Timeout(format!(
                        "{}: no response within {:?}",
                        ep.address, settings.response_timeout
                    )))
                }
            }
        }
    }
}

async fn connect(address: &str, timeout: Duration) -> Result<TcpStream, AttemptError> {
    let connecting = async {
        match address.parse::<SocketAddr>() {
            Ok(a) => TcpStream::connect(a).await,
            Err(_) => TcpStream::connect(address).await,
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(AttemptError::Connect(format!("connect to {address}: {e}"))),
        Err(_) => Err(AttemptError::Connect(format!(
            "connect to {address}: timed out after {timeout:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the test admission sees: host, path, override header, session cookie.
    type Seen = (String, String, Option<String>, Option<String>);

    fn request(raw: &str) -> (ParsedRequest<Seen>, String) {
        let mut out = Vec::new();
        let parsed = parse_request(
            raw.as_bytes(),
            "10.0.0.9",
            false,
            &mut out,
            |host, path, header, cookie| {
                (
                    host.to_owned(),
                    path.to_owned(),
                    header("x-hemiron-version").map(str::to_owned),
                    cookie("hemiron_session").map(str::to_owned),
                )
            },
        );
        (parsed, String::from_utf8(out).unwrap())
    }

    fn chunked_encode(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            v.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
            v.extend_from_slice(c);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
        v
    }

    #[test]
    fn a_plain_request_is_rewritten_for_the_upstream() {
        let (parsed, out) = request(
            "GET /a/b?q=1 HTTP/1.1\r\nHost: Shop.Test:8080\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nCookie: a=b; hemiron_session=\"abc\"\r\nx-hemiron-version: v2\r\nAccept: */*\r\n\r\nNEXT",
        );
        let ParsedRequest::Request(head) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.target, "/a/b?q=1");
        assert_eq!(head.host, "shop.test");
        assert_eq!(head.body, Framing::Empty);
        assert!(!head.close);
        let (host, path, version, session) = head.admitted;
        assert_eq!((host.as_str(), path.as_str()), ("shop.test", "/a/b"));
        assert_eq!(version.as_deref(), Some("v2"));
        assert_eq!(session.as_deref(), Some("abc"));
        assert_eq!(
            out,
            "GET /a/b?q=1 HTTP/1.1\r\nHost: Shop.Test:8080\r\nCookie: a=b; hemiron_session=\"abc\"\r\nx-hemiron-version: v2\r\nAccept: */*\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: Shop.Test:8080\r\n\r\n"
        );
        assert_eq!(&"GET /a/b?q=1 HTTP/1.1\r\nHost: Shop.Test:8080\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nCookie: a=b; hemiron_session=\"abc\"\r\nx-hemiron-version: v2\r\nAccept: */*\r\n\r\nNEXT"[head.head_len..], "NEXT");
    }

    #[test]
    fn connection_cannot_take_away_framing_or_host() {
        let (p, out) = request(
            "POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host, x-drop\r\nX-Drop: 1\r\nContent-Length: 44\r\n\r\n",
        );
        assert!(matches!(
            p,
            ParsedRequest::Request(RequestHead {
                body: Framing::Length(44),
                ..
            })
        ));
        assert!(
            out.contains("Host: a\r\n") && out.contains("Content-Length: 44\r\n"),
            "{out}"
        );
        assert!(!out.contains("X-Drop"), "{out}");
        let (p, out) = response(
            "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok",
            false,
        );
        assert!(matches!(
            p,
            ParsedResponse::Final {
                body: Framing::Length(2),
                ..
            }
        ));
        assert!(out.contains("Content-Length: 2\r\n"), "{out}");
        // Transfer codings that cannot be read are refused, not ignored.
        for te in ["", "\u{ff}chunked", ", ,"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\nContent-Length: 3\r\n\r\n");
            assert!(
                matches!(request(&raw).0, ParsedRequest::Bad(s, _) if s.as_u16() == 501),
                "{te:?}"
            );
        }
    }

    #[test]
    fn bodies_closes_and_what_goes_to_hyper() {
        let (p, out) = request(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        let ParsedRequest::Request(head) = p else {
            panic!()
        };
        assert_eq!(head.body, Framing::Chunked);
        assert!(head.close);
        assert!(out.contains("transfer-encoding: chunked\r\n"));
        let (p, _) = request(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n",
        );
        assert!(matches!(
            p,
            ParsedRequest::Request(RequestHead {
                body: Framing::Length(12),
                ..
            })
        ));
        for raw in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(matches!(request(raw).0, ParsedRequest::Handoff), "{raw}");
        }
        for (raw, status) in [
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
        ] {
            match request(raw).0 {
                ParsedRequest::Bad(s, _) => assert_eq!(s.as_u16(), status, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
        assert!(matches!(
            request("GET / HTTP/1.1\r\nHost: a\r\n").0,
            ParsedRequest::Partial
        ));
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(70_000));
        assert!(matches!(request(&huge).0, ParsedRequest::Bad(s, _) if s.as_u16() == 431));
    }

    fn response(raw: &str, head_request: bool) -> (ParsedResponse, String) {
        let mut out = Vec::new();
        let extras = ResponseExtras {
            version: Some(b"v2"),
            set_cookie: Some(b"s=1"),
            close: false,
        };
        let p = parse_response(raw.as_bytes(), head_request, &extras, &mut out);
        (p, String::from_utf8(out).unwrap())
    }

    #[test]
    fn responses_are_framed_and_rewritten() {
        let (p, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello", false);
        assert_eq!(
            p,
            ParsedResponse::Final {
                head_len: 85,
                status: 200,
                body: Framing::Length(5),
                reusable: true
            }
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-hemiron-version: v2\r\nset-cookie: s=1\r\n\r\n");
        let (p, out) = response("HTTP/1.1 200 OK\r\n\r\n", false);
        assert!(matches!(
            p,
            ParsedResponse::Final {
                body: Framing::Close,
                reusable: false,
                ..
            }
        ));
        assert!(out.contains("transfer-encoding: chunked\r\n"));
        let (p, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert!(matches!(
            p,
            ParsedResponse::Final {
                body: Framing::Chunked,
                reusable: false,
                ..
            }
        ));
        assert!(!out.contains("Content-Length"));
        let (p, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert!(matches!(
            p,
            ParsedResponse::Final {
                body: Framing::Empty,
                reusable: true,
                ..
            }
        ));
        let (p, _) = response(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert!(matches!(
            p,
            ParsedResponse::Final {
                body: Framing::Empty,
                ..
            }
        ));
        let (p, _) = response("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(matches!(
            p,
            ParsedResponse::Final {
                reusable: false,
                ..
            }
        ));
        let (p, _) = response(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(matches!(
            p,
            ParsedResponse::Final {
                reusable: false,
                ..
            }
        ));
        let (p, out) = response("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false);
        assert!(matches!(p, ParsedResponse::Interim { .. }));
        assert_eq!(out, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        assert!(matches!(
            response("HTTP/1.1 101 Switching\r\n\r\n", false).0,
            ParsedResponse::Bad(_)
        ));
        assert!(matches!(
            response("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).0,
            ParsedResponse::Bad(_)
        ));
        assert!(matches!(
            response("HTTP/1.1 200 OK\r\n", false).0,
            ParsedResponse::Partial
        ));
    }

    #[test]
    fn the_end_of_a_head_is_found_across_pieces() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        for cut in 0..head.len() {
            let mut searched = 0;
            let early = head_end(&head[..cut], &mut searched);
            assert!(searched <= cut);
            let end = head.len() - 4;
            assert_eq!(early, cut >= end, "cut {cut}");
            assert!(head_end(head, &mut searched), "resumed from {searched}");
        }
        let mut searched = 0;
        assert!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", &mut searched));
        let mut searched = 0;
        assert!(!head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut searched));
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = chunked_encode(&[b"hello".to_vec(), vec![b'x'; 300]]);
        let mut c = Chunked::default();
        let mut all = body.clone();
        all.extend_from_slice(b"GET /next");
        assert_eq!(c.feed(&all), Ok(body.len()));
        assert!(c.done());
        for bad in [
            "zz\r\n",
            "5\nhello\r\n",
            "5\r\nhelloXX",
            "\r\n",
            "10000000000000000\r\n",
            "0\r\n\n",
        ] {
            let mut c = Chunked::default();
            assert_eq!(c.feed(bad.as_bytes()), Err(ChunkError), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn relaying_converts_close_delimited_bodies_to_chunks() {
        let mut src: &[u8] = b"world";
        let mut buf = BytesMut::from(&b"hello "[..]);
        let mut dst = Vec::new();
        let mut out = b"HEAD\r\n".to_vec();
        relay(Framing::Close, &mut src, &mut buf, &mut dst, &mut out)
            .await
            .unwrap();
        assert_eq!(dst, b"HEAD\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n");
        let mut src: &[u8] = b"lo!EXTRA";
        let mut buf = BytesMut::from(&b"hel"[..]);
        let mut dst = Vec::new();
        relay(
            Framing::Length(6),
            &mut src,
            &mut buf,
            &mut dst,
            &mut Vec::new(),
        )
        .await
        .unwrap();
        assert_eq!(dst, b"hello!");
        assert_eq!(&buf[..], b"EXTRA");
        let mut src: &[u8] = b"";
        let mut buf = BytesMut::from(&b"hel"[..]);
        let r = relay(
            Framing::Length(6),
            &mut src,
            &mut buf,
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .await;
        assert!(matches!(r, Err(RelayError::Truncated)));
    }

    proptest! {
        #[test]
        fn chunked_framing_survives_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let body = chunked_encode(&chunks);
            let mut stream = body.clone();
            stream.extend_from_slice(&tail);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut c = Chunked::default();
            let mut consumed = 0;
            for w in points.windows(2) {
                if c.done() { break; }
                consumed += c.feed(&stream[w[0]..w[1]]).unwrap();
            }
            prop_assert!(c.done());
            prop_assert_eq!(consumed, body.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_parsers(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut c = Chunked::default();
            let _ = c.feed(&raw);
            let mut out = Vec::new();
            let _ = parse_request(&raw, "127.0.0.1", true, &mut out, |_, _, h, c| (h("a").is_some(), c("b").is_some()));
            let _ = parse_response(&raw, false, &ResponseExtras::default(), &mut out);
        }

        #[test]
        fn arbitrary_heads_never_inject_lines(
            target in "/[!-~]{0,40}",
            names in proptest::collection::vec("[A-Za-z-]{1,12}", 0..6),
            values in proptest::collection::vec("[ -~]{0,30}", 6),
        ) {
            let mut raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n");
            for (n, v) in names.iter().zip(&values) {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
            raw.push_str("\r\n");
            let mut out = Vec::new();
            if let ParsedRequest::Request(_) = parse_request(raw.as_bytes(), "127.0.0.1", false, &mut out, |_, _, _, _| ()) {
                // Every line the upstream gets is a request line or a `name: value` field.
                let text = String::from_utf8_lossy(&out).into_owned();
                let mut lines = text.split("\r\n");
                prop_assert!(lines.next().unwrap().ends_with(" HTTP/1.1"));
                for line in lines.filter(|l| !l.is_empty()) {
                    prop_assert!(line.contains(": "), "{}", line);
                }
                prop_assert!(text.ends_with("\r\n\r\n"));
            }
        }
    }
}
