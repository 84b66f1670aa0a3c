//! gRPC on tonic's generic API with messages of raw bytes (no protoc, no protobuf): the codec, a service routed
//! by method name as tonic's generated code would route it, and the test for the calls tonic refuses unsent at a
//! GOAWAY. Framing, status codes, trailers and HTTP/2 are tonic's and hyper's own.
//!
//! Shared by `examples/upstream.rs`, `examples/loadgen.rs` and `tests/grpc.rs` (each includes it with `#[path]`
//! and uses only some of it).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::{InvalidUri, PathAndQuery};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// The futures of the handlers.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Messages are bytes, as they are: the codec tonic's generated code would take from prost, minus protobuf.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A gRPC service written by hand: its name and how it answers a call to one of its methods (typically with
/// `tonic::server::Grpc::new(RawCodec)` and one of the `*Service` traits).
pub trait Methods: Clone + Send + 'static {
    /// The service's name, as a `.proto` file would give it (`package.Service`).
    const NAME: &'static str;

    /// Answers one call. `method` is the last segment of the path `/NAME/method`, empty for a path outside the
    /// service.
    fn call(&mut self, method: &str, req: http::Request<Body>) -> BoxFuture<http::Response<Body>>;
}

/// A [`Methods`] as the tower service tonic's server takes, routed by path.
#[derive(Clone)]
pub struct Routed<M>(pub M);

impl<M: Methods> tonic::server::NamedService for Routed<M> {
    const NAME: &'static str = M::NAME;
}

impl<M: Methods> tower_service::Service<http::Request<Body>> for Routed<M> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(M::NAME))
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or("")
            .to_owned();
        let answer = self.0.call(&method, req);
        Box::pin(async move { Ok(answer.await) })
    }
}

/// The path of a call to `method` of `service`: `/service/method`.
pub fn method_path(service: &str, method: &str) -> Result<PathAndQuery, InvalidUri> {
    PathAndQuery::try_from(format!("/{service}/{method}"))
}

/// Whether a failed call is hyper's refusal of a call it had not sent, on a connection that got GOAWAY: the
/// dispatch queue dropped (`Cancelled`, source `Canceled` "connection closed") or the stream refused locally by h2
/// (`Internal`, source `GoAway` NO_ERROR from the remote). Such a call never left the client (hyperium/hyper#2500):
/// sending it again is not a retry of anything the server saw.
pub fn refused_unsent(status: &Status) -> bool {
    let source = format!("{:?}", std::error::Error::source(status));
    (status.code() == Code::Cancelled && source.contains("Canceled") && source.contains("connection closed"))
        || (status.code() == Code::Internal && source.contains("GoAway") && source.contains("NO_ERROR"))
}
