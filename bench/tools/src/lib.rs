//! What the bench tools share: for the gRPC ones (`grpcserver`, `grpcload`) HTTP/2 framing and a non-blocking
//! socket ([`h2`], whose `poll` module `fixedrate` uses too), HPACK ([`hpack`]) and the one call they make
//! ([`grpc`]); for the HTTP/1 load clients (`fixedrate`, `holdconns`) where a response ends ([`http1`]).
//! The load tools' command lines ([`args`]).
//! Written for the bench on std alone: no dependency, so the workspace still builds offline in seconds.
pub mod args;
pub mod grpc;
pub mod h2;
pub mod hpack;
pub mod http1;
