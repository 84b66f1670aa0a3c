//! Errors of a handoff session. Each says, in one line, what went wrong and at which step.

use std::io;

use crate::wire::WireError;

/// Why a handoff session ended without completing.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// An I/O error while doing the named thing.
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    /// The named thing did not finish before its deadline.
    #[error("timed out {0}")]
    Timeout(String),
    /// The peer closed the connection.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer runs as another uid (SO_PEERCRED).
    #[error("peer runs as uid {uid}, this process as uid {ours}: refused")]
    ForeignPeer {
        /// The peer's uid.
        uid: u32,
        /// Ours.
        ours: u32,
    },
    /// Undecodable bytes.
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// A well-formed message at the wrong time, or wrong fds.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// No protocol version in common.
    #[error("no common protocol version: ours {ours_min}..={ours_max}, peer's {peer_min}..={peer_max}")]
    Version {
        /// Our oldest.
        ours_min: u16,
        /// Our newest.
        ours_max: u16,
        /// Peer's oldest.
        peer_min: u16,
        /// Peer's newest.
        peer_max: u16,
    },
    /// The peer refused, with its reason.
    #[error("peer refused: {0}")]
    Refused(String),
    /// The uds dir or its files cannot be used.
    #[error("{0}")]
    Dir(String),
    /// A test failpoint fired (see `TakeoverOptions::crash_at`).
    #[error("failpoint {0} reached")]
    Failpoint(&'static str),
}

impl HandoffError {
    /// Prefixes the error with the protocol step it happened in.
    pub fn at(self, step: &'static str) -> StepError {
        StepError { step, error: self }
    }
}

/// A [`HandoffError`] with the protocol step it happened in.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {error}")]
pub struct StepError {
    /// Protocol step, e.g. `hello`, `listeners`, `ready`, `commit`.
    pub step: &'static str,
    /// What went wrong.
    #[source]
    pub error: HandoffError,
}
