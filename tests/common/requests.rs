//! Single requests and round trips from the test to an address (baton's listeners, its admin port): one HTTP/1.1
//! GET on a new connection ([`http_get`], [`proxy_ok`]), one TCP echo round trip ([`tcp_echo_once`]), and
//! reading fields out of a raw HTTP/1 message head ([`header_values`]).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response fully read.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

pub(super) async fn http1_connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub(super) fn get_request(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(HOST, addr.to_string())
        .body(Empty::new())
        .expect("build request")
}

/// One GET over a new HTTP/1.1 connection, 3s timeout.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<Got> {
    let fut = async {
        let mut sender = http1_connect(addr).await?;
        let resp = sender
            .send_request(get_request(addr, path))
            .await
            .context("send request")?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.context("read body")?.to_bytes();
        Ok(Got { status, headers, body })
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path}: timed out"))?
}

/// One GET through the proxy: Ok if 200 `ok`.
pub async fn proxy_ok(addr: SocketAddr) -> anyhow::Result<()> {
    proxy_ok_path(addr, "/").await
}

/// One GET of `path` through the proxy: Ok if 200 `ok`.
pub async fn proxy_ok_path(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let got = http_get(addr, path).await?;
    if got.status != StatusCode::OK || &got.body[..] != b"ok" {
        bail!("proxy answered {} {:?}", got.status, got.body);
    }
    Ok(())
}

/// One TCP echo round trip through the proxy.
pub async fn tcp_echo_once(addr: SocketAddr, payload: &[u8]) -> anyhow::Result<()> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        s.write_all(payload).await.context("write")?;
        let mut buf = vec![0u8; payload.len()];
        s.read_exact(&mut buf).await.context("read echo")?;
        if buf != payload {
            bail!("echo mismatch");
        }
        s.shutdown().await.context("shutdown")?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.context("read to eof")?;
        if !rest.is_empty() {
            bail!("{} unexpected bytes after echo", rest.len());
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow!("tcp echo via {addr}: timed out"))?
}

/// Whether a TCP connect to `addr` is refused (nothing listening).
pub async fn connect_refused(addr: SocketAddr) -> bool {
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

/// Values of the field `name` (any case), in order, in an HTTP/1 message head (start line, then field lines).
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}
