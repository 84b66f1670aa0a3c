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
    let (endpoint, mut sender) = connect(cluster, endpoint).await?;
    match sender.send_request(req).await {
        Ok(resp) => Ok(wrap(resp, sender, &endpoint.idle)),
        Err(e) => Err(PoolError::Exchange(e)),
    }
}

async fn connect<'a>(
    cluster: &'a Cluster,
    first: &'a Endpoint,
) -> Result<(&'a Endpoint, SendRequest<RequestBody>), PoolError> {
    let (endpoint, stream) = cluster.connect_from(first).await.map_err(PoolError::Connect)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(PoolError::Exchange)?;
    let addr = endpoint.addr;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok((endpoint, sender))
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
