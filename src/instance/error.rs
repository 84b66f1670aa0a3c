//! Why an instance could not start serving.

use baton_migrate::{HandoffError, StepError};

use crate::server::listeners::ListenerError;

/// Why an instance could not start serving: it exits 1 with this message (on stderr and in the log), and a
/// takeover reports it to the postStart hook.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound, or a received one could not be adopted.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The listeners were ready but the accept loops could not start.
    #[error("cannot start accepting: {0}")]
    Accept(#[source] std::io::Error),
    /// The uds dir could not be used to wait for the predecessor.
    #[error("cannot take over: {0}")]
    Takeover(#[source] HandoffError),
    /// The received listeners do not fit this configuration: the handoff was refused.
    #[error("takeover refused: {0}")]
    Refused(#[source] ListenerError),
    /// The predecessor refused the commit: it serves on, or it is stopping (the reason says which).
    #[error("handoff failed at {0}; this instance steps back")]
    PredecessorServes(#[source] StepError),
    /// The handoff failed with the predecessor still alive.
    #[error("handoff failed at {0}")]
    Handoff(#[source] StepError),
}
