//! How an instance's connections end: one [`Drain`], shared by the server and every connection task, holds the
//! whole shutdown state.
//!
//! In the order they can happen:
//! 1. **accepting stops** ([`Drain::stop_accepting`]): the accept loops return; connections already accepted go on.
//! 2. then one of
//!    - **graceful** ([`Drain::begin_graceful`]): a plain drain (a stop signal, or a successor that takes no live
//!      connections). HTTP/1 answers its next response with `Connection: close`, HTTP/2 sends GOAWAY, TCP
//!      streams run to their end.
//!    - **migration** ([`Drain::begin_migration`]): a committed handoff to a successor that takes live
//!      connections. Each connection task heads for a quiescent point and [`Drain::depart`]s as a [`Detached`]
//!      connection; the one consumer of the [`Departures`] (the migration hub, in the instance layer) offers it to
//!      the successor, and what the successor refuses comes back to its task, which serves it on gracefully.
//! 3. **deadline** ([`Drain::pass_deadline`]): the drain timeout passed; every connection task drops what it holds.
//!
//! Connection tasks are spawned through [`Drain::spawn`], so that [`Drain::idle`] can tell when all have ended.

pub mod detached;
pub mod latch;

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

pub use detached::{ConnKind, Detached};
pub use latch::{Latch, Wait};

/// The shutdown state of one instance (see the module doc).
#[derive(Debug)]
pub struct Drain {
    accepting_stopped: Latch,
    graceful: Latch,
    migration: Latch,
    deadline: Latch,
    departures: mpsc::UnboundedSender<Departure>,
    /// Taken by [`Drain::begin_migration`]: there is one migration at most.
    queue: Mutex<Option<mpsc::UnboundedReceiver<Departure>>>,
    tasks: TaskTracker,
}

impl Default for Drain {
    fn default() -> Self {
        let (departures, queue) = mpsc::unbounded_channel();
        Drain {
            accepting_stopped: Latch::default(),
            graceful: Latch::default(),
            migration: Latch::default(),
            deadline: Latch::default(),
            departures,
            queue: Mutex::new(Some(queue)),
            tasks: TaskTracker::new(),
        }
    }
}

impl Drain {
    /// Tells the accept loops to return.
    pub fn stop_accepting(&self) {
        self.accepting_stopped.fire();
    }

    /// Resolves once accepting stopped.
    pub fn accepting_stopped(&self) -> Wait<'_> {
        self.accepting_stopped.wait()
    }

    /// Starts a plain drain: connections close at their next graceful point.
    pub fn begin_graceful(&self) {
        self.graceful.fire();
    }

    /// Whether a plain drain started (read on every HTTP/1 response: an atomic load).
    pub fn is_graceful(&self) -> bool {
        self.graceful.fired()
    }

    /// Resolves once a plain drain started.
    pub fn graceful(&self) -> Wait<'_> {
        self.graceful.wait()
    }

    /// Starts the migration of live connections: every connection task heads for its quiescent point and
    /// [`Drain::depart`]s. Returns the departures to offer to the successor; `None` if a migration already began.
    ///
    /// The connection tasks waiting for the migration are woken in waves (a quarter of [`MIGRATION_WAVE`] now, so
    /// that the first batch leaves soon, then [`MIGRATION_WAVE`] at a time as the [`Departures`] are taken: see
    /// there), so that the first ones reach the successor while the others are still leaving, rather than all of
    /// them leaving before the first is sent. A task that
    /// wakes for another reason (a request) sees the migration begun and departs after its exchange.
    pub fn begin_migration(self: &Arc<Self>) -> Option<Departures> {
        let queue = self.queue.lock().ok()?.take()?;
        self.migration.fire_held(MIGRATION_WAVE / 4);
        Some(Departures {
            queue,
            drain: self.clone(),
        })
    }

    /// Whether a migration started.
    pub fn is_migrating(&self) -> bool {
        self.migration.fired()
    }

    /// Resolves once a migration started.
    pub fn migration(&self) -> Wait<'_> {
        self.migration.wait()
    }

    /// The migration latch itself, for code that waits on "a migration started" or on a latch of its own.
    pub fn migration_latch(&self) -> &Latch {
        &self.migration
    }

    /// The drain deadline passed: every connection task drops what it holds.
    pub fn pass_deadline(&self) {
        self.deadline.fire();
    }

    /// Resolves once the drain deadline passed.
    pub fn deadline(&self) -> Wait<'_> {
        self.deadline.wait()
    }

    /// Offers a quiescent connection to the successor. `None`: it is the successor's now (our copies are
    /// closed). `Some`: it came back; serve it on (and offer it again later if [`Returned::offer_again`]).
    pub async fn depart(&self, conn: Detached) -> Option<Returned> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(d)) = self.departures.send(Departure { conn, reply }) {
            return Some(Returned {
                conn: d.conn,
                offer_again: false,
            });
        }
        // The hub answers every departure it received; a dropped answer means the process is going down.
        answer.await.unwrap_or(None)
    }

    /// Runs a connection task, counted until it ends.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Resolves once no connection task is left and no new one can start (call after [`Drain::stop_accepting`]).
    pub async fn idle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A connection the successor did not take, back with its task.
#[derive(Debug)]
pub struct Returned {
    /// The connection, to serve on.
    pub conn: Detached,
    /// It could not be sent as it was (it held more than one frame carries): offer it again once it holds less.
    /// False when the successor refused it or is gone: serve it on to its end.
    pub offer_again: bool,
}

/// A connection offered to the successor, waiting for its verdict.
#[derive(Debug)]
pub struct Departure {
    conn: Detached,
    reply: oneshot::Sender<Option<Returned>>,
}

impl Departure {
    /// The connection.
    pub fn conn(&self) -> &Detached {
        &self.conn
    }

    /// The successor took it: our copies of its sockets close here.
    pub fn taken(self) {
        let _ = self.reply.send(None);
    }

    /// The successor did not take it: its task serves it on, and offers it again later if `offer_again`.
    pub fn returned(self, offer_again: bool) {
        let _ = self.reply.send(Some(Returned {
            conn: self.conn,
            offer_again,
        }));
    }
}

/// Connection tasks a migration wakes at a time (see [`Drain::begin_migration`]).
pub const MIGRATION_WAVE: usize = 1024;

/// The connections leaving, in the order they reached their quiescent point (see [`Drain::begin_migration`]).
///
/// The connection tasks are woken in waves: [`Departures::recv`] wakes the next one when no departure is waiting,
/// [`Departures::next_wave`] earlier; dropping it wakes every task still held.
#[derive(Debug)]
pub struct Departures {
    queue: mpsc::UnboundedReceiver<Departure>,
    drain: Arc<Drain>,
}

impl Departures {
    /// The next departure; `None` once no connection task can send one.
    pub async fn recv(&mut self) -> Option<Departure> {
        if let Ok(d) = self.queue.try_recv() {
            return Some(d);
        }
        // Nothing waiting: the next wave, if tasks are still held.
        self.next_wave();
        self.queue.recv().await
    }

    /// A departure already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Departure> {
        self.queue.try_recv().ok()
    }

    /// Wakes the next wave of connection tasks now: they head for their quiescent point while the caller sends
    /// what it has.
    pub fn next_wave(&self) {
        self.drain.migration.wake_held(MIGRATION_WAVE);
    }
}

impl Drop for Departures {
    fn drop(&mut self) {
        // Nobody takes departures any more: no task may stay held.
        self.drain.migration.wake_held(usize::MAX);
    }
}
