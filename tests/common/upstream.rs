//! In-process upstreams on 127.0.0.1:0 for baton to proxy to: [`HttpUpstream`] (HTTP/1.1 and h2c, 200 `ok`),
//! [`CountingUpstream`] (the same with a small accept queue, counting its connections) and [`EchoUpstream`] (TCP
//! echo). Each runs as a tokio task of the test and stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An in-process upstream HTTP server on 127.0.0.1:0 (HTTP/1.1 and h2c): every request gets 200 `ok`.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl HttpUpstream {
    pub async fn start() -> HttpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_counting(stream, counter.clone()));
            }
        });
        HttpUpstream { addr, requests, task }
    }
}

/// Serves one connection (HTTP/1.1 or h2c) with 200 `ok` to every request, counting them in `requests`.
async fn serve_counting(stream: tokio::net::TcpStream, requests: Arc<AtomicU64>) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        requests.fetch_add(1, Ordering::Relaxed);
        upstream_reply(req)
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// [`HttpUpstream`] on a listening socket with a small accept queue (`listen(backlog)`), that counts the
/// connections it accepted: an upstream that drops SYNs when many connect at once. It accepts on a thread of its
/// own, as a real upstream would, so that the test's load clients do not slow its accepts down.
pub struct CountingUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    pub accepted: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    listener: socket2::Socket,
}

impl CountingUpstream {
    pub async fn start(backlog: i32) -> CountingUpstream {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind upstream");
        socket.listen(backlog).expect("listen");
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let (requests, accepted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (counter, accepts, stopped) = (requests.clone(), accepted.clone(), stop.clone());
        let runtime = tokio::runtime::Handle::current();
        let blocking = socket.try_clone().expect("listener clone");
        std::thread::spawn(move || loop {
            let accepted = blocking.accept();
            if stopped.load(Ordering::Relaxed) {
                return;
            }
            let Ok((stream, _)) = accepted else {
                continue;
            };
            accepts.fetch_add(1, Ordering::Relaxed);
            let counter = counter.clone();
            let stream: std::net::TcpStream = stream.into();
            runtime.spawn(async move {
                let _ = stream.set_nonblocking(true);
                let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                    return;
                };
                serve_counting(stream, counter).await;
            });
        });
        CountingUpstream {
            addr,
            requests,
            accepted,
            stop,
            listener: socket,
        }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        // Wakes the accepting thread (accept fails on a listener shut down), which then sees `stop`.
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.listener.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// 200 `ok`, after `sleep_ms` milliseconds if the query says `sleep_ms=N` (for in-flight requests).
async fn upstream_reply(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let sleep_ms = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("sleep_ms="))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = sleep_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// An in-process TCP echo server on 127.0.0.1:0: writes back whatever it reads; half-closes on EOF.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoUpstream {
    pub async fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        EchoUpstream { addr, task }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
