//! What the gRPC bench tools (`grpcserver`, `grpcload`) share: HTTP/2 framing and a non-blocking socket
//! ([`h2`]), HPACK ([`hpack`]), and the one call they make ([`grpc`]). Written for the bench on std alone: no
//! dependency, so the workspace still builds offline in seconds.
pub mod grpc;
pub mod h2;
pub mod hpack;
