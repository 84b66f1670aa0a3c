//! Errors of a handoff session. Each says, in one line, what went wrong and at which step.

use std::io;

use crate::wire::WireError;

/// Why a handoff session ended without completing.
///
/// Whatever the variant, the rule on both sides is the same: the old instance keeps serving (it changes nothing
/// before DONE), and the new one gives up. The variants exist for logs and metrics, and for the few decisions
/// that depend on them (a [`HandoffError::Failpoint`] in tests; [`HandoffError::Dir`] is a deployment problem,
/// not a failed upgrade).
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// An I/O error while doing the named thing (often: the peer process died mid-session).
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    /// The named thing did not finish before its deadline. Every step runs under the handoff timeout, so a hung
    /// peer costs one timeout, never a hung upgrade.
    #[error("timed out {0}")]
    Timeout(String),
    /// The peer closed the connection: it crashed, or gave up on its side.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer runs as another uid (SO_PEERCRED). Anyone who can write to the uds dir could otherwise collect
    /// the listening sockets.
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
    /// A well-formed message at the wrong time, or wrong fds. Also returned for an API misuse such as calling
    /// [`crate::Takeover::receive`] twice.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// No protocol version in common: an upgrade across too many releases. The old instance keeps serving.
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
    /// The peer refused, with its reason (e.g. the new instance could not use the listeners, or already has a
    /// session).
    #[error("peer refused: {0}")]
    Refused(String),
    /// This side gave up the handoff, with its reason (the old instance got a stop signal): the peer was told
    /// with a REFUSE.
    #[error("aborted: {0}")]
    Aborted(String),
    /// The uds dir or its files cannot be used: a deployment problem (volume missing, not writable, two new
    /// instances racing for it) rather than a failed handoff.
    #[error("{0}")]
    Dir(String),
    /// A test failpoint fired (see [`crate::TakeoverOptions::crash_at`]): the caller should exit abruptly, as if
    /// it had crashed at that step.
    #[error("failpoint {0} reached")]
    Failpoint(&'static str),
}

impl HandoffError {
    /// Prefixes the error with the protocol step it happened in: "timed out" alone does not tell an operator
    /// whether the successor never answered HELLO or never sent READY.
    pub fn at(self, step: &'static str) -> StepError {
        StepError { step, error: self }
    }
}

/// A [`HandoffError`] with the protocol step it happened in: what [`crate::hand_over`], [`crate::Takeover::receive`]
/// and [`crate::Session::commit`] return. Displays as `step: error`, one line, ready for a log.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {error}")]
pub struct StepError {
    /// Protocol step: `connect`, `discover`, `hello`, `listeners`, `ready`, `commit` (or a failpoint's name).
    pub step: &'static str,
    /// What went wrong.
    #[source]
    pub error: HandoffError,
}
