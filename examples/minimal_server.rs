//! `minimal_server`: the smallest tokio server that survives an OpenKruise SidecarSet hot upgrade, using only
//! `baton-migrate`. Documentation by example: see `migrate/README.md` for the why of each step.
//!
//! ```text
//! minimal_server --listen 127.0.0.1:8080 --uds-dir /var/run/minimal   # the container's command
//! minimal_server migrate --uds-dir /var/run/minimal                   # its postStart hook
//! ```
//!
//! Every connection gets `HTTP/1.1 200 OK`, `Connection: close`, and the body `pid=<pid> generation=<n>`. The
//! role comes from `SIDECARSET_VERSION` / `SIDECARSET_VERSION_ALT`. One line per step on stderr. Exits 0 after
//! handing over (once in-flight connections are done) or on SIGTERM/SIGINT; 1 on failure.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use baton_migrate::{
    hand_over, watch_takeover, HandoffError, Identity, Inheritance, ListenerTag, Offered, Ready, Role, SuccessorWatch,
    Takeover, TakeoverOptions, UdsDir,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The whole handoff, on either side. The postStart hook waits twice as long.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight connections get after we stop accepting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const NAME: &str = "http";

macro_rules! step {
    ($($arg:tt)*) => { eprintln!("minimal_server[{}]: {}", std::process::id(), format_args!($($arg)*)) };
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let Some(dir) = flag("--uds-dir").map(UdsDir::new) else {
        step!("usage: minimal_server [migrate] --uds-dir DIR [--listen ADDR]");
        return ExitCode::from(2);
    };
    let outcome = match (args[0] == "migrate", flag("--listen").map(|a| a.parse())) {
        (true, _) => migrate(&dir).await,
        (false, Some(Ok(listen))) => serve(listen, &dir).await,
        (false, _) => Err("--listen ADDR (ip:port) is required".into()),
    };
    if let Err(e) = outcome {
        step!("error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The postStart hook: returns once this slot's instance has taken over (or failed to).
async fn migrate(dir: &UdsDir) -> Result<()> {
    let role = Role::from_env()?;
    if role != Role::Takeover {
        step!("migrate: role {role}: nothing to migrate");
        return Ok(());
    }
    let report = watch_takeover(dir, 2 * HANDOFF_TIMEOUT).await?;
    step!("migrate: {}: {} (ok: {})", report.phase, report.detail, report.ok);
    match report.ok {
        true => Ok(()),
        false => Err(report.detail.into()),
    }
}

async fn serve(listen: SocketAddr, dir: &UdsDir) -> Result<()> {
    // Signal handlers first, so that a SIGTERM during the takeover is not lost.
    let mut signals = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let role = Role::from_env()?;
    step!("role: {role}");
    let (server, takeover) = match role {
        Role::Idle => {
            step!("idle slot: binding nothing, waiting for SIGTERM");
            step!("{}: exiting", stopped(&mut signals).await);
            return Ok(());
        }
        Role::Fresh => (Server::start(bind(listen).await?, 1), None),
        Role::Takeover => {
            let (server, takeover, detail) = take_over(listen, dir).await?;
            (server, Some((takeover, detail)))
        }
    };
    dir.ensure()?;
    let serving = dir.hold_serving()?; // from now on, a successor waits for us
    step!("serving on {listen} as generation {}", server.generation);
    // Tell the postStart hook, in the background: `finish` waits until the hook has read the report.
    let mut finishing: Option<JoinHandle<()>> =
        takeover.map(|(t, detail)| tokio::spawn(async move { t.finish(true, "complete", &detail).await }));

    // Watch for a successor, but only once our own takeover is finished: until then reconfig.sock is ours.
    let mut successors = finishing.is_none().then(|| SuccessorWatch::new(dir));
    let why = loop {
        tokio::select! {
            sig = stopped(&mut signals) => break sig,
            Some(_) = async { Some(finishing.as_mut()?.await) }, if finishing.is_some() => {
                finishing = None;
                successors = Some(SuccessorWatch::new(dir));
            }
            Some(stream) = async { Some(successors.as_mut()?.next().await) }, if successors.is_some() => {
                step!("successor found: handing over");
                let tag = ListenerTag { name: NAME.into(), address: listen.to_string(), kind: NAME.into() };
                let offered = [Offered { tag, fd: server.listener.as_fd() }];
                match hand_over(stream, &me(server.generation), &offered, HANDOFF_TIMEOUT).await {
                    Ok(c) => break format!("handed over to generation {} ({})", c.generation, c.version),
                    Err(e) => {
                        // Nothing changed: keep serving. The successor's socket lingers; do not redial at once.
                        step!("handoff failed at {e}; still serving");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    };
    step!("{why}: stopping");
    let conns = server.stop_accepting().await;
    drop(serving); // a later successor must not wait for us
    drain(conns).await;
    step!("exiting");
    Ok(())
}

/// New side: receive the predecessor's listener, commit, accept on it from COMMIT on. Binds fresh if there is no
/// predecessor.
async fn take_over(listen: SocketAddr, dir: &UdsDir) -> Result<(Server, Takeover, String)> {
    let mut takeover = Takeover::start(dir, me(1), TakeoverOptions::new(HANDOFF_TIMEOUT))?;
    step!("takeover: waiting on {}", dir.reconfig_path().display());
    let mut session = match takeover.receive().await {
        Ok(Inheritance::Peer(session)) => session,
        Ok(Inheritance::NoPeer) => {
            step!("takeover: no live predecessor");
            let server = Server::start(bind(listen).await?, 1);
            return Ok((server, takeover, "no live predecessor; bound fresh".into()));
        }
        Err(e) => {
            // A real server would check `dir.peer_serving()` and bind fresh if the predecessor died.
            takeover.finish(false, "failed", &e.to_string()).await;
            return Err(format!("takeover failed at {e}").into());
        }
    };
    let generation = session.peer.generation + 1;
    step!("takeover: received {} listener(s)", session.listeners.len());
    // Match on the socket's actual address, as the kernel reports it, not on the predecessor's tag.
    let Some(pos) = session.listeners.iter().position(|l| l.check == Ok(listen)) else {
        let reason = format!("no listener on {listen} was handed over");
        session.refuse(&reason).await; // the predecessor keeps serving
        takeover.finish(false, "failed", &reason).await;
        return Err(reason.into());
    };
    let inherited = session.listeners.swap_remove(pos);
    let unclaimed = session.listeners.iter().map(|l| l.tag.name.clone()).collect();
    let std_listener = std::net::TcpListener::from(inherited.fd);
    // It arrives in blocking mode; tokio needs it non-blocking.
    std_listener.set_nonblocking(true)?;
    // Ready to accept, but held: until COMMIT the predecessor serves, and a connection we took now would die
    // with us if the handoff failed.
    let server = Server::start_held(TcpListener::from_std(std_listener)?, generation);
    let ready = Ready {
        adopted: vec![NAME.into()],
        bound: vec![],
        unclaimed,
    };
    match session.commit(ready, || server.go.notify_one()).await {
        Ok(()) => step!("takeover: committed"),
        Err(e) if matches!(e.error, HandoffError::Refused(_)) => {
            let reason = format!("commit refused ({e}); the predecessor keeps serving");
            takeover.finish(false, "failed", &reason).await;
            drain(server.stop_accepting().await).await;
            return Err(reason.into());
        }
        // It crashed or hung after READY: we accept on the same socket, so serving on is safe.
        Err(e) => {
            step!("takeover: commit not confirmed ({e}); serving anyway");
            server.go.notify_one(); // one permit: harmless if COMMIT had come and started it
        }
    }
    Ok((server, takeover, format!("adopted {listen}; generation {generation}")))
}

fn me(generation: u64) -> Identity {
    Identity {
        generation,
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("bind {addr}: {e}"))?;
    step!("bound {addr}");
    Ok(listener)
}

/// An accept loop on one listener, and the connections it spawned.
struct Server {
    listener: Arc<TcpListener>,
    generation: u64,
    stop: watch::Sender<bool>,
    /// Lets the accept loop of a held server start.
    go: Arc<Notify>,
    task: JoinHandle<JoinSet<()>>,
}

impl Server {
    fn start(listener: TcpListener, generation: u64) -> Server {
        let server = Server::start_held(listener, generation);
        server.go.notify_one();
        server
    }

    /// An accept loop that waits for `go` before it accepts (or for `stop`, and never accepts).
    fn start_held(listener: TcpListener, generation: u64) -> Server {
        let listener = Arc::new(listener);
        let (stop, mut stopped) = watch::channel(false);
        let go = Arc::new(Notify::new());
        let accepting = listener.clone();
        let released = go.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            tokio::select! {
                _ = stopped.changed() => return conns,
                _ = released.notified() => {}
            }
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => return conns,
                    accepted = accepting.accept() => match accepted {
                        Ok((conn, _)) => {
                            conns.spawn(answer(conn, generation));
                        }
                        Err(e) => step!("accept: {e}"),
                    },
                }
                while conns.try_join_next().is_some() {}
            }
        });
        Server {
            listener,
            generation,
            stop,
            go,
            task,
        }
    }

    /// Stops accepting and closes our copy of the listener. Never `shutdown()`: after a handoff the successor
    /// accepts on this very socket, and what is queued in it is the successor's to accept.
    async fn stop_accepting(self) -> JoinSet<()> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Waits for in-flight connections, up to [`DRAIN_TIMEOUT`]; what is left is aborted.
async fn drain(mut conns: JoinSet<()>) {
    while conns.try_join_next().is_some() {}
    step!("draining {} connection(s)", conns.len());
    let all = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, all).await.is_err() {
        step!("drain timeout: closing {} connection(s)", conns.len());
    }
}

/// Reads the request head (ignored), answers with our pid and generation, closes.
async fn answer(mut conn: TcpStream, generation: u64) {
    let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("pid={} generation={generation}\n", std::process::id());
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await; // this connection's write side, not the listener
}

/// Resolves at the next SIGTERM or SIGINT, with its name.
async fn stopped((term, int): &mut (Signal, Signal)) -> String {
    tokio::select! { _ = term.recv() => "SIGTERM".into(), _ = int.recv() => "SIGINT".into() }
}
