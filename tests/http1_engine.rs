//! The HTTP/1.1 engine (src/h1.rs) through the real `baton` binary: response framing (Content-Length, chunked
//! passed through verbatim, close-delimited, bodiless responses), informational responses, pipelining, the raw
//! upstream pool (stale connections, retries), bad upstream framing, request bodies (read whole up to 64 KiB,
//! streamed beyond, and chunked ones streamed with their framing checked), request rewriting and metrics.
//!
//! Raw TCP clients parse what baton sends themselves, and a scripted raw upstream answers every request with bytes
//! the test chooses (in as many writes as it likes) and records every request it framed, with the upstream
//! connection it came on.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest wait for anything baton should send.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------------------------
// a scripted raw upstream
// ---------------------------------------------------------------------------------------------------------------

/// One request as the upstream framed it.
#[derive(Debug, Clone)]
struct Rec {
    /// Upstream connection it came on (0 for the first accepted).
    conn: usize,
    /// Its place on that connection (0 for the first).
    seq: usize,
    /// Request line and header lines, as received (without the final empty line).
    head: String,
    /// The body, de-chunked if it was chunked.
    body: Vec<u8>,
    /// The upstream closed the connection instead of answering it.
    dropped: bool,
}

impl Rec {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    fn method(&self) -> &str {
        self.request_line().split(' ').next().unwrap_or("")
    }

    fn path(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or("")
    }

    /// Values of the header `name` (case-insensitive), in order.
    fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }
}

/// What the upstream does with a request.
enum Action {
    /// Writes `parts` one after the other, `gap` apart, then does `then`.
    Reply {
        parts: Vec<Vec<u8>>,
        gap: Duration,
        then: Then,
    },
    /// Closes the connection without answering.
    Drop,
}

#[derive(Clone)]
enum Then {
    /// Waits for the next request on the connection.
    KeepAlive,
    /// Closes the connection (the end of a close-delimited body).
    Close,
    /// Closes the connection after it has been idle this long (an upstream keep-alive timeout).
    CloseIdleAfter(Duration),
    /// Sends these bytes nobody asked for after this long, and waits for the next request.
    SendIdleAfter(Duration, &'static [u8]),
}

impl Action {
    fn bytes(raw: impl AsRef<[u8]>) -> Action {
        Action::Reply {
            parts: vec![raw.as_ref().to_vec()],
            gap: Duration::ZERO,
            then: Then::KeepAlive,
        }
    }

    fn parts(parts: &[&[u8]], gap: Duration) -> Action {
        Action::Reply {
            parts: parts.iter().map(|p| p.to_vec()).collect(),
            gap,
            then: Then::KeepAlive,
        }
    }

    fn then(self, next: Then) -> Action {
        match self {
            Action::Reply { parts, gap, .. } => Action::Reply { parts, gap, then: next },
            Action::Drop => Action::Drop,
        }
    }
}

/// `200` with a Content-Length body (reason phrase `X`: hyper would not write it so, the engine passes it on).
fn ok(body: impl AsRef<[u8]>) -> Action {
    Action::bytes(response_with(200, body.as_ref()))
}

fn response_with(status: u16, body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

type Handler = Arc<dyn Fn(&Rec) -> Action + Send + Sync>;

/// An HTTP/1.1 upstream on 127.0.0.1:0 that frames requests itself and answers each as the handler says.
struct Upstream {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Rec>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(handler: impl Fn(&Rec) -> Action + Send + Sync + 'static) -> Upstream {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let task = tokio::spawn(async move {
            let conns = AtomicUsize::new(0);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = conns.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_conn(stream, conn, handler.clone(), l.clone()));
            }
        });
        Upstream { addr, log, task }
    }

    fn log(&self) -> Vec<Rec> {
        self.log.lock().expect("lock").clone()
    }

    /// The requests of `path`, in the order they arrived.
    fn of(&self, path: &str) -> Vec<Rec> {
        self.log().into_iter().filter(|r| r.path() == path).collect()
    }

    /// The one request of `path`, served (not dropped).
    fn one(&self, path: &str) -> Rec {
        let recs = self.of(path);
        assert_eq!(recs.len(), 1, "requests of {path} at the upstream: {recs:#?}");
        assert!(!recs[0].dropped, "{recs:#?}");
        recs[0].clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn(mut stream: TcpStream, conn: usize, handler: Handler, log: Arc<Mutex<Vec<Rec>>>) {
    let mut buf = Vec::new();
    let mut seq = 0;
    loop {
        let (head, body, used) = loop {
            if let Some(framed) = frame_request(&buf) {
                break framed;
            }
            let mut chunk = [0u8; 64 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..used);
        let mut rec = Rec {
            conn,
            seq,
            head,
            body,
            dropped: false,
        };
        seq += 1;
        let action = handler(&rec);
        match action {
            Action::Drop => {
                rec.dropped = true;
                log.lock().expect("lock").push(rec);
                return;
            }
            Action::Reply { parts, gap, then } => {
                log.lock().expect("lock").push(rec);
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 && !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                    if stream.write_all(part).await.is_err() {
                        return;
                    }
                }
                match then {
                    Then::KeepAlive => {}
                    Then::Close => {
                        let _ = stream.shutdown().await;
                        return;
                    }
                    Then::CloseIdleAfter(idle) => {
                        tokio::time::sleep(idle).await;
                        return;
                    }
                    Then::SendIdleAfter(idle, junk) => {
                        tokio::time::sleep(idle).await;
                        if stream.write_all(junk).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// One complete request from the front of `buf`: its head, its body and the bytes it used.
fn frame_request(buf: &[u8]) -> Option<(String, Vec<u8>, usize)> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let chunked = header_values(&head, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let (body, used) = dechunk(&buf[end..])?;
        return Some((head, body, end + used));
    }
    let len = match header_values(&head, "content-length").first() {
        Some(v) => v.parse::<usize>().expect("upstream: a Content-Length it can read"),
        None => 0,
    };
    if buf.len() < end + len {
        return None;
    }
    Some((head, buf[end..end + len].to_vec(), end + len))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete chunked body at the start of `b` (trailers included): its data and its length on the wire; `None`
/// while incomplete. Panics on bad framing: nothing here should send any.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let line_end = find(&b[at..], b"\r\n")? + at;
        let line = String::from_utf8_lossy(&b[at..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        at = line_end + 2;
        if size == 0 {
            loop {
                let line_end = find(&b[at..], b"\r\n")? + at;
                let empty = line_end == at;
                at = line_end + 2;
                if empty {
                    return Some((data, at));
                }
            }
        }
        if b.len() < at + size + 2 {
            return None;
        }
        data.extend_from_slice(&b[at..at + size]);
        assert_eq!(&b[at + size..at + size + 2], b"\r\n", "chunk data not followed by CRLF");
        at += size + 2;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// baton in front of it, and a raw client
// ---------------------------------------------------------------------------------------------------------------

struct Rig {
    up: Upstream,
    http: SocketAddr,
    admin: SocketAddr,
    _baton: Baton,
    // Dropped last: the process's log files live there.
    _dir: TestDir,
}

impl Rig {
    /// A `baton run` whose `ingress` HTTP listener proxies to a scripted upstream.
    async fn start(handler: impl Fn(&Rec) -> Action + Send + Sync + 'static) -> Rig {
        Rig::start_with("5s", handler).await
    }

    /// [`Rig::start`] with the cluster's `request_timeout`.
    async fn start_with(request_timeout: &str, handler: impl Fn(&Rec) -> Action + Send + Sync + 'static) -> Rig {
        let dir = TestDir::new();
        let up = Upstream::start(handler).await;
        // A port found free can be taken by another test before baton binds it: then try again with new ones.
        for attempt in 1.. {
            let (http, admin) = two_free_addrs();
            let mut cfg = Config::default()
                .listener("ingress", http, "http", "app")
                .cluster("app", &[up.addr])
                .admin(admin)
                .uds_dir(&dir.subdir("uds"));
            cfg.clusters[0].request_timeout = Some(request_timeout.into());
            let path = cfg.write_yaml(&dir, "baton.yaml").display().to_string();
            let name = format!("baton-{attempt}");
            let mut baton = Baton::spawn(&dir, &name, &["run", "--config", &path], &Env::fresh());
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                if !baton.is_running() {
                    let stderr = baton.stderr();
                    assert!(
                        attempt < 5 && stderr.contains("Address already in use"),
                        "{name} exited; stderr:\n{stderr}"
                    );
                    break;
                }
                // Ready, and it is this process that answers (not another test's on a reused port).
                if ready_code(admin).await.ok() == Some(200) && status_pid(admin).await == Some(u64::from(baton.pid()))
                {
                    return Rig {
                        up,
                        http,
                        admin,
                        _baton: baton,
                        _dir: dir,
                    };
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name} not ready within {WAIT:?}; stderr:\n{}",
                    baton.stderr()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        unreachable!()
    }

    async fn client(&self) -> Client {
        Client::connect(self.http).await
    }
}

/// Two different free loopback addresses (both sockets are held while the second is picked).
fn two_free_addrs() -> (SocketAddr, SocketAddr) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (a.local_addr().expect("addr"), b.local_addr().expect("addr"))
}

/// A response as a client reads it.
struct Resp {
    status: u16,
    /// Status line and header lines (without the final empty line).
    head: String,
    /// The body as it was on the wire (chunked framing included).
    body: Vec<u8>,
    /// Head and body, every byte.
    raw: Vec<u8>,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resp({:?})", String::from_utf8_lossy(&self.raw))
    }
}

impl Resp {
    fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }

    fn says_close(&self) -> bool {
        self.header("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Client {
    s: TcpStream,
    /// Read and not yet taken as a response.
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect to baton");
        let _ = s.set_nodelay(true);
        Client { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write to baton");
    }

    /// Reads more into `buf`; false at EOF (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await {
            Err(_) => panic!(
                "baton sent nothing more within {WAIT:?}; unread so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, framed as a client would (`head_request`: it answers a HEAD).
    async fn response(&mut self, head_request: bool) -> Resp {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill().await,
                "EOF before a complete response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        assert!(
            self.buf.starts_with(b"HTTP/1.1 "),
            "not a response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let head = String::from_utf8_lossy(&self.buf[..end - 4]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let chunked = header_values(&head, "transfer-encoding")
            .last()
            .is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked"));
        let length = header_values(&head, "content-length").first().map(|v| {
            v.parse::<usize>()
                .unwrap_or_else(|_| panic!("bad content-length in {head:?}"))
        });
        let total = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            end
        } else if chunked {
            loop {
                if let Some((_, used)) = dechunk(&self.buf[end..]) {
                    break end + used;
                }
                assert!(self.fill().await, "EOF inside a chunked body");
            }
        } else if let Some(n) = length {
            while self.buf.len() < end + n {
                assert!(
                    self.fill().await,
                    "EOF after {} of {n} body bytes",
                    self.buf.len() - end
                );
            }
            end + n
        } else {
            while self.fill().await {}
            self.buf.len()
        };
        let raw: Vec<u8> = self.buf.drain(..total).collect();
        Resp {
            status,
            head,
            body: raw[end..].to_vec(),
            raw,
        }
    }

    /// Sends `request` and reads its response.
    async fn roundtrip(&mut self, request: &[u8]) -> Resp {
        self.send(request).await;
        self.response(request.starts_with(b"HEAD ")).await
    }

    /// Everything baton sends until it closes the connection.
    async fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Baton closes the connection with nothing more to say.
    async fn expect_eof(&mut self) {
        let more = self.fill().await;
        assert!(
            !more && self.buf.is_empty(),
            "expected EOF, got more bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// `n` bytes of a pattern that does not repeat at short periods.
fn pattern(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect()
}

/// Asserts two large byte strings are equal, naming the first difference instead of printing them.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes, expected {}; first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// response framing
// ---------------------------------------------------------------------------------------------------------------

const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: chunks\r\n\r\n";
const CHUNKED_BODY: &[u8] = b"5;name=value\r\nhello\r\n1a; a=b ;c=\"q;x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n\
0;last=1\r\nX-Trailer: t1\r\nX-Other: two\r\n\r\n";

/// A chunked response with chunk extensions and trailers, written by the upstream in small pieces (cut inside the
/// status line, a size line, an extension, chunk data, a CRLF and the trailers): the client gets the same chunked
/// bytes, and the connection (both sides) carries the next exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_with_extensions_and_trailers_passes_through_verbatim() {
    let rig = Rig::start(|r| match r.path() {
        "/chunked" => {
            let b = CHUNKED_BODY;
            let cuts = [3, 9, 17, 22, 30, 40, 50, 54, 60, 72, b.len() - 1];
            let mut parts: Vec<&[u8]> = vec![&CHUNKED_HEAD[..11], &CHUNKED_HEAD[11..]];
            let mut from = 0;
            for c in cuts {
                parts.push(&b[from..c]);
                from = c;
            }
            parts.push(&b[from..]);
            Action::parts(&parts, Duration::from_millis(15))
        }
        _ => ok("second"),
    })
    .await;
    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/chunked")).await;
    let mut want = CHUNKED_HEAD.to_vec();
    want.extend_from_slice(CHUNKED_BODY);
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        String::from_utf8_lossy(&want),
        "the chunked response as the client got it"
    );
    assert_eq!(r.header("transfer-encoding"), ["chunked"]);
    assert!(r.header("content-length").is_empty() && !r.says_close(), "{}", r.head);

    let r = c.roundtrip(&get("/second")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "second"));
    // The end of the chunked body was found exactly: the upstream connection was reused for the second request.
    let (first, second) = (rig.up.one("/chunked"), rig.up.one("/second"));
    assert_eq!((first.conn, second.conn, second.seq), (0, 0, 1), "{:#?}", rig.up.log());
}

/// No Content-Length, no Transfer-Encoding: the body ends when the upstream closes. The client gets all of it,
/// `connection: close`, and then EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_response_reaches_the_client_whole_then_eof() {
    let body = pattern(300 * 1024, 7);
    let b = body.clone();
    let rig = Rig::start(move |_| {
        let mut parts: Vec<&[u8]> = vec![b"HTTP/1.1 200 OK\r\nX-App: c\r\n\r\n", &b[..10]];
        parts.extend(b[10..].chunks(100 * 1024));
        Action::parts(&parts, Duration::from_millis(20)).then(Then::Close)
    })
    .await;
    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/eof")).await;
    assert_eq!(r.head, "HTTP/1.1 200 OK\r\nX-App: c\r\nconnection: close");
    assert_same_bytes(&r.body, &body, "close-delimited body");
    c.expect_eof().await;
    rig.up.one("/eof");
}

/// A 1 MiB Content-Length body arrives byte-exact, and the connection carries the next request; the same with the
/// body chunked in chunks larger than any read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_content_length_body_then_keep_alive() {
    let big = pattern(1024 * 1024, 42);
    let chunked = chunked_wire(&big, 300_001);
    let (b, ch) = (big.clone(), chunked.clone());
    let rig = Rig::start(move |r| match r.path() {
        "/big" => ok(&b),
        "/big-chunked" => Action::bytes([&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..], &ch].concat()),
        p => ok(p),
    })
    .await;
    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/big")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), [big.len().to_string()]);
    assert_same_bytes(&r.body, &big, "1 MiB body");
    let r = c.roundtrip(&get("/next")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/next"));
    assert_eq!(
        rig.up.one("/next").conn,
        rig.up.one("/big").conn,
        "upstream connection reused"
    );

    // The same body chunked, in chunks larger than any read: passed through as it is.
    let r = c.roundtrip(&get("/big-chunked")).await;
    assert_eq!(r.header("transfer-encoding"), ["chunked"]);
    assert_same_bytes(&r.body, &chunked, "1 MiB chunked body");
    let r = c.roundtrip(&get("/next2")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/next2"));
    assert_eq!(rig.up.one("/next2").conn, rig.up.one("/big").conn);
}

/// `data` as a chunked body in chunks of `size` bytes (uppercase hex sizes), with a last chunk and no trailers.
fn chunked_wire(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(size) {
        out.extend_from_slice(format!("{:X}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The upstream closes in the middle of a Content-Length or chunked body: the client gets what came and then
/// EOF (nothing can tell it otherwise), not a hang; the proxy goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_upstream_closes_the_client_connection() {
    const CL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello";
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let rig = Rig::start(|r| match r.path() {
        "/cl" => Action::parts(&[CL], Duration::ZERO).then(Then::Close),
        "/chunked" => Action::parts(&[CHUNKED], Duration::ZERO).then(Then::Close),
        p => ok(p),
    })
    .await;
    for (path, want) in [("/cl", CL), ("/chunked", CHUNKED)] {
        let mut c = rig.client().await;
        c.send(&get(path)).await;
        let got = c.read_to_eof().await;
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want), "{path}");
    }
    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/after")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/after"));
}

/// A chunked body the decoder cannot follow (bare LF line ends), from an upstream that keeps the connection open.
/// If the bad line arrives after the head went out, the client gets what was passed through and the connection
/// closes (not left hanging); if it came with the head, the client gets a 502 instead and keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_closes_the_client_connection() {
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    const BODY: &[u8] = b"5\r\nhello\r\n5\nworld\n0\n\n";
    let rig = Rig::start(|r| match r.path() {
        "/apart" => Action::parts(&[HEAD, &BODY[..10], &BODY[10..]], Duration::from_millis(30)),
        "/together" => Action::bytes([HEAD, BODY].concat()),
        p => ok(p),
    })
    .await;
    // The bad line arrives after the head and the first chunk went out: those, then the connection closes.
    let mut c = rig.client().await;
    c.send(&get("/apart")).await;
    let got = c.read_to_eof().await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&[HEAD, &BODY[..10]].concat()),
        "/apart"
    );
    // The bad line came with the head: nothing was sent yet, so the client gets a 502 and keeps its connection.
    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/together")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (502, "baton: upstream request failed\n"),
        "/together"
    );
    let r = c.roundtrip(&get("/same-connection")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/same-connection"));
    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/after")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/after"));
}

/// Responses without a body whatever their fields say (HEAD with Content-Length: 1000, 204, 304 with a
/// Content-Length): the client gets the head alone, and the next exchange on the same connection is not desynced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_responses_do_not_desync_the_connection() {
    let rig = Rig::start(|r| match (r.method(), r.path()) {
        ("HEAD", _) => Action::bytes("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Head: 1\r\n\r\n"),
        (_, "/204") => Action::bytes("HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n"),
        (_, "/304") => Action::bytes("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 50\r\n\r\n"),
        (_, p) => ok(format!("after {p}")),
    })
    .await;
    let mut c = rig.client().await;
    let r = c.roundtrip(b"HEAD /h HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Head: 1\r\n\r\n"
    );
    let r = c.roundtrip(&get("/a")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "after /a"));

    let r = c.roundtrip(&get("/204")).await;
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n"
    );
    let r = c.roundtrip(&get("/b")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "after /b"));

    let r = c.roundtrip(&get("/304")).await;
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 50\r\n\r\n"
    );
    let r = c.roundtrip(&get("/c")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "after /c"));

    // All on one upstream connection, in order: no body bytes were expected where there were none.
    let log = rig.up.log();
    let seen: Vec<(usize, &str)> = log.iter().map(|r| (r.conn, r.path())).collect();
    assert_eq!(
        seen,
        [(0, "/h"), (0, "/a"), (0, "/204"), (0, "/b"), (0, "/304"), (0, "/c")]
    );
}

/// Three requests in one write: three responses, in order, each answering its own request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let rig = Rig::start(|r| {
        let path = r.path().to_string();
        // The first is the slowest, the last answered in two writes.
        match path.as_str() {
            "/p1" => Action::parts(
                &[b"HTTP/1.1 200 OK\r\n", b"content-length: 3\r\n\r\n/p1"],
                Duration::from_millis(100),
            ),
            "/p3" => Action::parts(
                &[b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n/", b"p3"],
                Duration::from_millis(20),
            ),
            _ => ok(path),
        }
    })
    .await;
    let mut c = rig.client().await;
    let mut all = get("/p1");
    all.extend_from_slice(&get("/p2"));
    all.extend_from_slice(b"GET /p3 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    c.send(&all).await;
    for p in ["/p1", "/p2", "/p3"] {
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, p), "{}", r.head);
        assert_eq!(r.says_close(), p == "/p3", "{}", r.head);
    }
    c.expect_eof().await;
    let seen: Vec<String> = rig.up.log().iter().map(|r| r.path().to_string()).collect();
    assert_eq!(seen, ["/p1", "/p2", "/p3"]);
}

/// Pipelined requests where the second is not the engine's (an absolute-form target, with a chunked body): the
/// first is answered by the engine, and hyper takes the connection from there with the bytes already read, the
/// third request included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_fall_back_to_hyper_midway() {
    let rig = Rig::start(|r| ok(format!("{} {}", r.path(), String::from_utf8_lossy(&r.body)))).await;
    let mut c = rig.client().await;
    let mut all = get("/e1");
    all.extend_from_slice(
        b"POST http://test/streamed HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    all.extend_from_slice(&get("/h3"));
    c.send(&all).await;
    let r = c.response(false).await;
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 200 X\r\ncontent-length: 4\r\n\r\n/e1 ",
        "answered by the engine"
    );
    let r = c.response(false).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "/streamed hello world"),
        "{}",
        r.head
    );
    let r = c.response(false).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/h3 "), "{}", r.head);
    let seen: Vec<String> = rig.up.log().iter().map(|r| r.path().to_string()).collect();
    assert_eq!(seen, ["/e1", "/streamed", "/h3"]);
}

/// `100 Continue` and `103 Early Hints` before the final response: the client sees only the 200, whether the
/// upstream sends them apart or in one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_are_not_forwarded() {
    const FINAL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    const C100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    const E103: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n";
    let rig = Rig::start(|r| match r.path() {
        "/apart" => Action::parts(&[C100, E103, FINAL], Duration::from_millis(30)),
        "/together" => Action::bytes([C100, E103, FINAL].concat()),
        p => ok(p),
    })
    .await;
    let mut c = rig.client().await;
    for path in ["/apart", "/together"] {
        let r = c.roundtrip(&get(path)).await;
        assert_eq!(
            String::from_utf8_lossy(&r.raw),
            String::from_utf8_lossy(FINAL),
            "{path}"
        );
    }
    let r = c.roundtrip(&get("/after")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/after"));
}

// ---------------------------------------------------------------------------------------------------------------
// the upstream connection pool
// ---------------------------------------------------------------------------------------------------------------

/// The upstream closes a pooled keep-alive connection while it is idle. The next GET (from a new client
/// connection) still gets 200, and reaches the upstream once, on a new connection. A POST in the same situation
/// gets 200 or 502, but never reaches the upstream twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_while_idle_is_not_used() {
    // Every response: keep-alive, then the upstream's idle timeout closes the connection.
    let rig = Rig::start(|r| ok(r.path()).then(Then::CloseIdleAfter(Duration::from_millis(50)))).await;
    for (first, second, is_post) in [("/a", "/b", false), ("/c", "/d", true)] {
        let mut c = rig.client().await;
        let r = c.roundtrip(&get(first)).await;
        assert_eq!((r.status, r.text().as_str()), (200, first));
        drop(c);
        // The upstream closed its end by now.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut c = rig.client().await;
        let req = if is_post { post(second, b"payload") } else { get(second) };
        let r = c.roundtrip(&req).await;
        eprintln!(
            "{} {second} after a stale pooled connection: {}",
            if is_post { "POST" } else { "GET" },
            r.status
        );
        let copies = rig.up.of(second);
        assert!(copies.len() <= 1, "{second} reached the upstream twice: {copies:#?}");
        if is_post {
            assert!(
                (r.status == 200 && r.text() == second && copies.len() == 1) || r.status == 502,
                "POST after a stale pooled connection: {r:?}, upstream {copies:#?}"
            );
            if r.status == 200 {
                assert_eq!(copies[0].body, b"payload");
            }
        } else {
            assert_eq!((r.status, r.text().as_str()), (200, second), "{r:?}");
            assert_eq!(copies.len(), 1);
        }
        if let [copy] = copies.as_slice() {
            assert_ne!(copy.conn, rig.up.one(first).conn, "sent on the closed connection");
            assert_eq!(copy.seq, 0);
        }
    }
}

/// An idle pooled connection on which the upstream sent bytes nobody asked for (a stray response) is not used:
/// the next request gets its own response, not the stray one, on a new upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_with_unsolicited_bytes_is_not_used() {
    const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray";
    let rig = Rig::start(|r| ok(r.path()).then(Then::SendIdleAfter(Duration::from_millis(50), STRAY))).await;
    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/first")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/first"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The same client connection, and a new one.
    let r = c.roundtrip(&get("/second")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/second"), "{r:?}");
    let mut c = rig.client().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c.roundtrip(&get("/third")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/third"), "{r:?}");
    let conns: Vec<usize> = ["/first", "/second", "/third"]
        .iter()
        .map(|p| rig.up.one(p).conn)
        .collect();
    assert_eq!(conns, [0, 1, 2], "{:#?}", rig.up.log());
}

/// A request whose head and body arrive a few bytes at a time is read whole, then forwarded as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_trickling_in_is_read_whole() {
    let rig = Rig::start(|r| ok(format!("{} {}", r.path(), String::from_utf8_lossy(&r.body)))).await;
    let mut c = rig.client().await;
    let req = b"POST /trickle?x=1 HTTP/1.1\r\nHost: test\r\nX-Slow: yes\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz";
    for piece in req.chunks(7) {
        c.send(piece).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = c.response(false).await;
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 200 X\r\ncontent-length: 39\r\n\r\n/trickle?x=1 abcdefghijklmnopqrstuvwxyz"
    );
    let up = rig.up.one("/trickle?x=1");
    assert_eq!(up.header("x-slow"), ["yes"]);
    assert_eq!(up.header("content-length"), ["26"]);
}

/// A pooled connection that looks alive but that the upstream closes on receiving the request, before a byte of
/// response: a GET is sent again, once, on a new connection, and the client gets 200; a POST is not (it may have
/// been processed): 502, and the upstream got it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_before_the_response_on_a_reused_connection_retries_only_idempotent_requests() {
    // The second request on every upstream connection is dropped.
    let rig = Rig::start(|r| if r.seq == 1 { Action::Drop } else { ok(r.path()) }).await;

    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/warm1")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/warm1"));
    let r = c.roundtrip(&get("/retried")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/retried"), "{r:?}");
    let copies = rig.up.of("/retried");
    assert_eq!(copies.len(), 2, "{copies:#?}");
    assert!(copies[0].dropped && copies[0].seq == 1, "{copies:#?}");
    assert!(!copies[1].dropped && copies[1].seq == 0, "{copies:#?}");
    assert_ne!(copies[0].conn, copies[1].conn);

    // The connection of /retried is pooled again (it answered one request): the POST gets it and is dropped.
    let r = c.roundtrip(&post("/once", b"do not repeat")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (502, "baton: upstream request failed\n"),
        "{r:?}"
    );
    let copies = rig.up.of("/once");
    assert_eq!(copies.len(), 1, "a POST was sent again: {copies:#?}");
    assert!(copies[0].dropped && copies[0].body == b"do not repeat");
    // The client connection goes on.
    let r = c.roundtrip(&get("/after")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/after"));
}

// ---------------------------------------------------------------------------------------------------------------
// bad upstream framing
// ---------------------------------------------------------------------------------------------------------------

/// Responses that cannot be framed or forwarded: conflicting or invalid Content-Length, 101 to a request that asked
/// for no upgrade, a head over 64 KiB. The client gets 502 each time, and its connection carries the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unframeable_upstream_responses_are_502() {
    let rig = Rig::start(|r| match r.path() {
        "/two-lengths" => Action::bytes("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        "/bad-length" => Action::bytes("HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello"),
        "/switching" => {
            Action::bytes("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        }
        "/huge-head" => Action::bytes(format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(70 * 1024)
        )),
        p => ok(p),
    })
    .await;
    let mut c = rig.client().await;
    for path in ["/two-lengths", "/bad-length", "/switching", "/huge-head"] {
        let r = c.roundtrip(&get(path)).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (502, "baton: upstream request failed\n"),
            "{path}: {r:?}"
        );
        let r = c.roundtrip(&get("/next")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/next"), "after {path}");
    }
}

/// No response head within the cluster's `request_timeout`: 504, and the client connection carries the next
/// request (on a new upstream connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_times_out_with_504() {
    let rig = Rig::start_with("1s", |r| match r.path() {
        "/silent" => Action::Reply {
            parts: vec![],
            gap: Duration::ZERO,
            then: Then::CloseIdleAfter(Duration::from_secs(5)),
        },
        p => ok(p),
    })
    .await;
    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/silent")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (504, "baton: upstream timed out\n"),
        "{r:?}"
    );
    let r = c.roundtrip(&get("/next")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/next"));
    assert_ne!(rig.up.one("/next").conn, rig.up.one("/silent").conn);
    let m = metrics(rig.admin).await;
    assert_eq!(sample(&m, "baton_upstream_timeouts_total{listener=\"ingress\"}"), 1.0);
}

// ---------------------------------------------------------------------------------------------------------------
// requests
// ---------------------------------------------------------------------------------------------------------------

/// A 10 KiB body (read whole by the engine, arriving in two writes), a 64 KiB one (the largest read whole) and a
/// 200 KiB one (streamed by the engine) reach the upstream byte-exact, and the client connection carries the next
/// request after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_arrive_byte_exact() {
    let rig = Rig::start(|r| ok(format!("{} {}", r.path(), r.body.len()))).await;
    let mut c = rig.client().await;

    let small = pattern(10 * 1024, 1);
    let req = post("/small", &small);
    let split = req.len() - small.len() + 3000;
    c.send(&req[..split]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(&req[split..]).await;
    let r = c.response(false).await;
    // The upstream's response exactly as it sent it (hyper would have added a `date` field): the engine's path.
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 200 X\r\ncontent-length: 12\r\n\r\n/small 10240"
    );
    let got = rig.up.one("/small");
    assert_same_bytes(&got.body, &small, "10 KiB request body");
    assert_eq!(got.header("content-length"), ["10240"]);

    // The largest body the engine reads whole.
    let limit = pattern(64 * 1024, 3);
    let r = c.roundtrip(&post("/limit", &limit)).await;
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 200 X\r\ncontent-length: 12\r\n\r\n/limit 65536"
    );
    assert_same_bytes(&rig.up.one("/limit").body, &limit, "64 KiB request body");

    let r = c.roundtrip(&get("/between")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/between 0"));

    let large = pattern(200 * 1024, 2);
    let r = c.roundtrip(&post("/large", &large)).await;
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 200 X\r\ncontent-length: 13\r\n\r\n/large 204800",
        "streamed by the engine"
    );
    assert_same_bytes(&rig.up.one("/large").body, &large, "200 KiB request body");

    let r = c.roundtrip(&get("/after")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/after 0"));
    rig.up.one("/after");
}

/// A chunked request body (with a chunk extension and a trailer, arriving in pieces) is streamed by the engine
/// with its framing as it is, the pipelined request after it included; a malformed one gets a 400 and the
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_are_streamed_with_their_framing() {
    let rig = Rig::start(|r| ok(format!("{} {}", r.path(), String::from_utf8_lossy(&r.body)))).await;
    let mut c = rig.client().await;
    c.send(b"POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhel")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rest = b"lo\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n".to_vec();
    rest.extend_from_slice(&get("/after"));
    c.send(&rest).await;
    let r = c.response(false).await;
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 200 X\r\ncontent-length: 20\r\n\r\n/chunked hello world",
        "answered through the engine"
    );
    let got = rig.up.one("/chunked");
    assert_eq!(got.header("transfer-encoding"), ["chunked"], "{}", got.head);
    assert_eq!(got.body, b"hello world");
    let r = c.response(false).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/after "), "{}", r.head);

    let mut c = rig.client().await;
    c.send(b"POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.says_close(), "{r:?}");
    c.expect_eof().await;
}

/// The upstream gets `X-Forwarded-For` extended with the client address and no hop-by-hop fields; the client gets
/// no hop-by-hop fields of the upstream's; a request with `Connection: close` gets `connection: close` and EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_responses_are_rewritten() {
    let rig = Rig::start(|r| {
        Action::bytes(format!(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-App: 1\r\nContent-Length: {}\r\n\r\n{}",
            r.path().len(),
            r.path()
        ))
    })
    .await;
    let mut c = rig.client().await;
    let r = c
        .roundtrip(
            b"GET /rw?q=1 HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 10.9.8.7\r\nKeep-Alive: 300\r\n\
              TE: trailers\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\nX-Custom: yes\r\n\r\n",
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&r.raw),
        "HTTP/1.1 200 OK\r\nX-App: 1\r\nContent-Length: 7\r\n\r\n/rw?q=1"
    );
    let up = rig.up.one("/rw?q=1");
    assert_eq!(up.request_line(), "GET /rw?q=1 HTTP/1.1");
    assert_eq!(up.header("host"), ["example.test"]);
    assert_eq!(up.header("x-custom"), ["yes"]);
    assert_eq!(up.header("x-forwarded-for"), ["10.9.8.7, 127.0.0.1"], "{}", up.head);
    for hop in ["keep-alive", "te", "proxy-connection", "connection"] {
        assert!(up.header(hop).is_empty(), "{hop} forwarded:\n{}", up.head);
    }

    // Without a prior X-Forwarded-For, the client address alone.
    let r = c.roundtrip(&get("/plain")).await;
    assert_eq!(r.status, 200);
    assert_eq!(rig.up.one("/plain").header("x-forwarded-for"), ["127.0.0.1"]);

    let r = c
        .roundtrip(b"GET /bye HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "/bye"));
    assert!(r.says_close(), "no connection: close in {:?}", r.head);
    c.expect_eof().await;
}

// ---------------------------------------------------------------------------------------------------------------
// metrics
// ---------------------------------------------------------------------------------------------------------------

/// `baton_requests_total` counts every exchange of the engine by status class: upstream 200s and 404s, and the
/// 502 of an unframeable response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_class() {
    let rig = Rig::start(|r| match r.path() {
        "/missing" => Action::bytes(response_with(404, b"nope")),
        "/broken" => Action::bytes("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"),
        p => ok(p),
    })
    .await;
    let series =
        |class: &str| format!("baton_requests_total{{listener=\"ingress\",protocol=\"http\",class=\"{class}\"}}");
    let counts = |text: &str| -> Vec<f64> {
        ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .map(|c| sample(text, &series(c)))
            .collect()
    };
    let before = counts(&metrics(rig.admin).await);
    const N: usize = 7;
    let mut c = rig.client().await;
    for i in 0..N {
        let path = format!("/ok{i}");
        let r = c.roundtrip(&get(&path)).await;
        assert_eq!((r.status, r.text()), (200, path));
    }
    // Pipelined too: each counted.
    let mut two = get("/ok-p1");
    two.extend_from_slice(&get("/ok-p2"));
    c.send(&two).await;
    for _ in 0..2 {
        assert_eq!(c.response(false).await.status, 200);
    }
    assert_eq!(c.roundtrip(&get("/missing")).await.status, 404);
    assert_eq!(c.roundtrip(&get("/broken")).await.status, 502);
    let after = counts(&metrics(rig.admin).await);
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        delta,
        [0.0, (N + 2) as f64, 0.0, 1.0, 1.0],
        "before {before:?}, after {after:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// edge cases of RFC 9110 / 9112, on both paths
// ---------------------------------------------------------------------------------------------------------------

/// `Content-Length: 5, 5` and two equal `Content-Length` fields from the upstream reach the client as one
/// `Content-Length: 5`, on the engine and on the hyper path (an absolute-form request); unequal ones are a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_content_lengths_become_one_and_unequal_ones_are_502() {
    let rig = Rig::start(|r| match r.path() {
        "/list" => Action::bytes(b"HTTP/1.1 200 X\r\nContent-Length: 5, 5\r\n\r\nhello"),
        "/twice" => Action::bytes(b"HTTP/1.1 200 X\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        "/unequal" => Action::bytes(b"HTTP/1.1 200 X\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        p => ok(p),
    })
    .await;
    for (how, prefix) in [("engine", ""), ("hyper path", "http://test")] {
        for path in ["/list", "/twice"] {
            let mut c = rig.client().await;
            let r = c
                .roundtrip(format!("GET {prefix}{path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
                .await;
            assert_eq!(r.status, 200, "{how} {path}: {r:?}");
            assert_eq!(r.header("content-length"), ["5"], "{how} {path}: {r:?}");
            assert_eq!(r.text(), "hello", "{how} {path}");
        }
        let mut c = rig.client().await;
        let r = c
            .roundtrip(format!("GET {prefix}/unequal HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await;
        assert_eq!(r.status, 502, "{how} /unequal: {r:?}");
    }
}

/// A chunk size with leading zeros (16 and more hex digits, valid) passes through the engine as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_sizes_with_leading_zeros_are_valid() {
    const BODY: &[u8] = b"00000000000000000000005\r\nhello\r\n0000000000000000000\r\n\r\n";
    let rig = Rig::start(|r| match r.path() {
        "/padded" => Action::bytes([&b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n"[..], BODY].concat()),
        p => ok(p),
    })
    .await;
    let mut c = rig.client().await;
    let r = c.roundtrip(&get("/padded")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, BODY);
    let r = c.roundtrip(&get("/after")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/after"));
}

/// An absolute-form target's authority replaces the request's `Host` (RFC 9112 §3.2.2); `CONNECT` is answered
/// by baton (501) and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_sets_host_and_connect_is_not_forwarded() {
    let rig = Rig::start(|r| ok(r.path())).await;
    let mut c = rig.client().await;
    let r = c
        .roundtrip(b"GET http://a.example:8080/abs?q=1 HTTP/1.1\r\nHost: b.example\r\n\r\n")
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "/abs?q=1"), "{r:?}");
    let got = rig.up.one("/abs?q=1");
    assert_eq!(got.header("host"), ["a.example:8080"], "{}", got.head);

    let mut c = rig.client().await;
    c.send(b"CONNECT x.example:80 HTTP/1.1\r\nHost: x.example:80\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 501, "{r:?}");
    assert!(r.text().contains("CONNECT"), "{r:?}");
    let seen: Vec<String> = rig.up.log().iter().map(|r| r.request_line().to_string()).collect();
    assert_eq!(seen, ["GET /abs?q=1 HTTP/1.1"], "what reached the upstream");
}
