//! A lean keep-alive pool of HTTP/1.1 upstream connections (hyper's client), one list of idle connections per
//! endpoint: for the requests the HTTP/1 engine leaves to hyper, and for h2c clients.
//!
//! A connection is checked out for one exchange and comes back to the pool when the response body has been read
//! to its end (HTTP/1 carries one exchange at a time). A request that a pooled connection could not even start
//! (the upstream had closed it while idle) is retried once on a new connection; nothing that reached the upstream
//! is ever sent twice. A connect that fails is tried once more ([`Cluster::connect_from`]).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::upstream::body::RequestBody;
use crate::upstream::idle::IdleList;
use crate::upstream::{Cluster, Endpoint, PoolError, Release, ResponseBody};

/// Idle connections of one endpoint. They stay in this process at a migration: hyper's connection owns its socket
/// and cannot give it back, so they close with the old instance (the HTTP/1 engine's pool, [`super::raw`], moves).
pub struct IdleClients {
    senders: IdleList<SendRequest<RequestBody>>,
}

impl IdleClients {
    /// An empty pool whose connections are kept at most `idle_timeout` (`0`: none is kept).
    pub fn new(idle_timeout: Duration) -> IdleClients {
        IdleClients {
            senders: IdleList::new(idle_timeout),
        }
    }

    fn take(&self) -> Option<SendRequest<RequestBody>> {
        while let Some(s) = self.senders.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended, unless it closed.
    pub(super) fn put(&self, sender: SendRequest<RequestBody>) {
        if !sender.is_closed() {
            self.senders.push(sender);
        }
    }
}

/// Sends `req` to `endpoint` of `cluster` on a pooled connection (or a new one: see [`Cluster::connect_from`]) and
/// returns the response, whose body hands the connection back to its endpoint's pool when it ends.
pub async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    mut req: Request<RequestBody>,
) -> Result<Response<ResponseBody>, PoolError> {
    if let Some(mut sender) = endpoint.idle.take() {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(wrap(resp, sender, &endpoint.idle)),
            Err(mut e) => match e.take_message() {
                // Never started: the connection had been closed while idle. Retry on a new one.
                Some(back) => req = back,
                None => return Err(PoolError::Exchange(e.into_error())),
            },
        }
    }
    let (endpoint, mut sender, ended) = connect(cluster, endpoint).await?;
    match sender.send_request(req).await {
        Ok(resp) => Ok(wrap(resp, sender, &endpoint.idle)),
        Err(e) => Err(first_exchange_failed(e, ended).await),
    }
}

/// A new connection, and the error its connection task ends with, if any.
async fn connect<'a>(
    cluster: &'a Cluster,
    first: &'a Endpoint,
) -> Result<(&'a Endpoint, SendRequest<RequestBody>, oneshot::Receiver<hyper::Error>), PoolError> {
    let (endpoint, stream) = cluster.connect_from(first).await.map_err(PoolError::Connect)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(PoolError::Exchange)?;
    let addr = endpoint.addr;
    let (failed, ended) = oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended with an error");
            let _ = failed.send(e);
        }
    });
    Ok((endpoint, sender, ended))
}

/// Why the first exchange on a new connection failed. hyper drops a request it never started ("canceled") when
/// the connection failed first, and the connection's error says why: most often an upstream that spoke before it
/// was asked (an HTTP/2-only server's SETTINGS frame), which hyper's client refuses on a connection with nothing
/// in flight; that case is [`PoolError::SpokeFirst`], for the 502's warning to name the cause. The connection's
/// error comes as the cause of the canceled one when the request was waiting to go out, or from the connection
/// task (`ended`) when the connection had failed before the request was sent.
async fn first_exchange_failed(e: hyper::Error, ended: oneshot::Receiver<hyper::Error>) -> PoolError {
    if !e.is_canceled() {
        return PoolError::Exchange(e);
    }
    if let Some(cause) = std::error::Error::source(&e).and_then(|c| c.downcast_ref::<hyper::Error>()) {
        return match unsolicited(cause) {
            true => PoolError::SpokeFirst,
            false => PoolError::Exchange(e),
        };
    }
    // The connection task has ended (or is ending) by now.
    match tokio::time::timeout(Duration::from_millis(100), ended).await {
        Ok(Ok(cause)) if unsolicited(&cause) => PoolError::SpokeFirst,
        Ok(Ok(cause)) => PoolError::Exchange(cause),
        _ => PoolError::Exchange(e),
    }
}

/// Whether hyper's client connection failed on bytes it received with no request in flight. hyper has no
/// predicate for that kind: its text is the one sign (pinned by a test against the hyper in use).
fn unsolicited(e: &hyper::Error) -> bool {
    e.to_string() == "received unexpected message from connection"
}

fn wrap(
    resp: http::Response<hyper::body::Incoming>,
    sender: SendRequest<RequestBody>,
    idle: &Arc<IdleClients>,
) -> Response<ResponseBody> {
    let (parts, body) = resp.into_parts();
    let back = Release::Http1 {
        sender,
        idle: idle.clone(),
    };
    Response::from_parts(parts, ResponseBody::new(body, back))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connection to an upstream that opens with an empty HTTP/2 SETTINGS frame, once it is in our receive
    /// queue; the upstream task keeps the connection open until aborted.
    async fn spoken_to() -> (TcpStream, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (written, sent) = oneshot::channel();
        let upstream = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
            let _ = written.send(());
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        sent.await.unwrap(); // on loopback, written means queued at our end
        (stream, upstream)
    }

    fn get() -> Request<RequestBody> {
        Request::get("/").body(RequestBody::empty()).unwrap()
    }

    /// The request waits to go out when the connection reads the frame: hyper cancels it with the connection's
    /// error as its cause, which says the upstream spoke first. (Pins the text [`unsolicited`] looks for to the
    /// hyper in use.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_request_canceled_because_the_upstream_spoke_first_says_so() {
        let (stream, upstream) = spoken_to().await;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        let (_failed, ended) = oneshot::channel();
        let exchange = sender.send_request(get());
        tokio::pin!(exchange);
        // Queue the request (the first poll does), then let the connection run: it reads before it writes.
        assert!(futures_util::poll!(&mut exchange).is_pending());
        tokio::spawn(conn);
        let err = exchange.await.expect_err("the connection failed on the frame");
        let e = first_exchange_failed(err, ended).await;
        assert!(matches!(e, PoolError::SpokeFirst), "{e:?}");
        upstream.abort();
    }

    /// The connection failed on the frame before the request was sent: hyper cancels it without a cause, and the
    /// connection task's error says the upstream spoke first.
    #[tokio::test]
    async fn a_request_after_the_upstream_spoke_first_says_so() {
        let (stream, upstream) = spoken_to().await;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        let (failed, ended) = oneshot::channel();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                let _ = failed.send(e);
            }
        });
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while !sender.is_closed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "hyper's client did not fail on the unsolicited frame");
        let err = sender.send_request(get()).await.expect_err("the connection has failed");
        let e = first_exchange_failed(err, ended).await;
        assert!(matches!(e, PoolError::SpokeFirst), "{e:?}");
        upstream.abort();
    }
}
