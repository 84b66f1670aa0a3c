//! # baton-migrate
//!
//! Hand the listening sockets of a running tokio server to its successor, without losing a queued connection,
//! the way an OpenKruise SidecarSet `HotUpgrade` needs: two container slots in one pod, sharing only a volume
//! (the *uds dir*) and the network namespace.
//!
//! - [`Role`] reads `SIDECARSET_VERSION` / `SIDECARSET_VERSION_ALT` and says whether to bind fresh, take over, or
//!   idle.
//! - [`Takeover`] (new side) owns `reconfig.sock` in the uds dir, receives the predecessor's listeners
//!   ([`Inherited`], validated), and runs the two-phase commit, telling the caller when to start accepting.
//! - [`SuccessorWatch`] and [`hand_over`] (old side) notice the successor and send every listener with
//!   SCM_RIGHTS; only an acknowledged commit tells the caller to stop accepting.
//! - [`watch_takeover`] is the postStart hook's view: it blocks until the takeover ends, under a deadline.
//!
//! The crate knows nothing of what the listeners serve. The protocol, step by step, is in [`handoff`]; the
//! frames are in [`wire`]. Only the private `sys` module handles raw fds.
//!
//! The caller keeps three duties the crate cannot do for it: put adopted listeners in non-blocking mode before
//! giving them to tokio; after a committed [`hand_over`], stop accepting by closing its copies of the listeners
//! (never `shutdown()`: the socket is shared, and shutting it down stops it listening and resets its queue for the
//! successor too) and drop its [`ServingLock`];
//! and drain its in-flight connections before exiting. `migrate/README.md` is the guide, and
//! `examples/minimal_server.rs` in the repository is a complete minimal server built on it.
//!
//! Linux only (SCM_RIGHTS, SO_PEERCRED, inotify, flock). Everything async, and [`Takeover::start`] and
//! [`SuccessorWatch::new`], must run inside a tokio runtime with its I/O and time drivers enabled.
//!
//! ```no_run
//! use std::time::Duration;
//! use baton_migrate::{Identity, Inheritance, Role, Takeover, TakeoverOptions, UdsDir};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = UdsDir::new("/var/run/baton");
//! let me = Identity { generation: 1, version: "v2".into() };
//! if Role::from_env()? == Role::Takeover {
//!     let mut takeover = Takeover::start(&dir, me, TakeoverOptions::new(Duration::from_secs(30)))?;
//!     match takeover.receive().await? {
//!         Inheritance::NoPeer => { /* bind fresh, start accepting */ }
//!         Inheritance::Peer(session) => {
//!             // adopt session.listeners (check each `Inherited::check`), then commit: the predecessor
//!             // serves until COMMIT, when the closure starts this instance's accept loops.
//!             session.commit(Default::default(), || { /* start accepting */ }).await?;
//!         }
//!     }
//!     let serving = dir.hold_serving()?; // from now on a successor waits for us
//!     takeover.finish(true, "complete", "").await; // tells the postStart hook
//!     // ... serve, and watch for a successor with SuccessorWatch + hand_over
//! # drop(serving);
//! }
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod conn;
pub mod dir;
pub mod error;
pub mod handoff;
pub mod role;
mod sys;
pub mod watch;
pub mod wire;

pub use dir::{InstanceFile, ReconfigSocket, ServingLock, UdsDir};
pub use error::{HandoffError, StepError};
pub use handoff::{
    conn_fits, hand_over, hand_over_live, hand_over_live_until, hand_over_with, watch_takeover, Committed,
    ConnReceiver, ConnSender, ConnVerdict, Identity, Inheritance, Inherited, Offer, Offered, OutgoingConn, Received,
    ReceivedConn, SendError, Session, Takeover, TakeoverOptions,
};
pub use role::{Role, RoleError};
pub use watch::SuccessorWatch;
pub use wire::{ConnTag, ListenerTag, Progress, Ready};
