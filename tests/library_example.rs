//! Runs `examples/minimal_server.rs` through a whole hot upgrade, as separate processes, the way Kruise would
//! drive two sidecar slots: the proof that `baton-migrate` alone is enough for a tokio server to hand its
//! listener to its successor without failing a connection.
//!
//! Integration tests get no `CARGO_BIN_EXE_*` for examples, and `cargo test --test library_example` does not
//! build them, so the binary is looked up next to this test's own executable (`target/<profile>/examples/`) after
//! one `cargo build --example minimal_server` per test process: that builds it if missing, rebuilds it if stale,
//! and is a no-op otherwise.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Kruise-shaped SidecarSet versions: slot 1 created at "1", slot 2 upgraded to "7340032".
const V1: (&str, &str) = ("1", "0");
const V2: (&str, &str) = ("7340032", "1");
/// Upper bound for anything the test waits for; the happy path takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(30);

/// Path of the example binary, brought up to date once per test process.
fn example_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // This test runs as target/<profile>/deps/library_example-<hash>.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile> above deps/");
        let bin = profile_dir.join("examples").join("minimal_server");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--example", "minimal_server"]);
        build.current_dir(env!("CARGO_MANIFEST_DIR"));
        // Build into the same target dir and profile as this test, so the binary lands where we look.
        if let Some(target_dir) = profile_dir.parent() {
            build.arg("--target-dir").arg(target_dir);
        }
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("release") => {
                build.arg("--release");
            }
            Some(other) if other != "debug" => {
                build.args(["--profile", other]);
            }
            _ => {}
        }
        match build.status() {
            Ok(status) => assert!(status.success(), "cargo build --example minimal_server: {status}"),
            // No cargo here (the test binary run by hand, say): use what was built before, if anything.
            Err(e) => eprintln!("cannot run cargo ({e}); using {} as it is", bin.display()),
        }
        assert!(bin.exists(), "{} is missing", bin.display());
        bin
    })
}

/// One run of the example, killed on drop. Its stderr goes to a file, printed if the test fails.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, logs: &Path, (version, alt): (&str, &str), args: &[&str]) -> Proc {
        let log = logs.join(format!("{name}.log"));
        let child = Command::new(example_binary())
            .args(args)
            .env("SIDECARSET_VERSION", version)
            .env("SIDECARSET_VERSION_ALT", alt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { name, child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let name = self.name;
        let child = &mut self.child;
        let mut status = None;
        wait_until(&format!("{name} to exit"), within, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.expect("exited")
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} (pid {}) stderr ---\n{}", self.name, self.pid(), self.log());
        }
    }
}

/// Polls `done` every 10 ms until it holds; panics after `within`.
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < give_up,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    conn.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    conn
}

/// Sends a request on `conn`, reads the whole response (the server closes), and returns the `(pid, generation)`
/// its body reports.
fn request(mut conn: TcpStream) -> (u32, u64) {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send request");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    assert!(response.contains("\r\nConnection: close\r\n"), "{response:?}");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let field = |key: &str| {
        body.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {body:?}"))
    };
    let pid = field("pid=").parse().expect("pid");
    let generation = field("generation=").parse().expect("generation");
    (pid, generation)
}

fn get(addr: SocketAddr) -> (u32, u64) {
    request(connect(addr))
}

#[test]
fn minimal_server_hands_its_listener_over() {
    let tmp = tempfile::Builder::new()
        .prefix("baton-ex-")
        .tempdir()
        .expect("temp dir");
    let (uds, logs) = (tmp.path().join("uds"), tmp.path().join("logs"));
    fs::create_dir_all(&logs).expect("logs dir");
    let uds = uds.to_str().expect("utf-8 path");
    let addr = free_addr();
    let listen = addr.to_string();
    let serve = ["--listen", listen.as_str(), "--uds-dir", uds];

    // Slot 1: a fresh start.
    let mut old = Proc::spawn("old", &logs, V1, &serve);
    wait_until("the old instance to serve", PATIENCE, || {
        old.log().contains("serving on")
    });
    assert_eq!(get(addr), (old.pid(), 1));

    // A client that connects before the handoff and sends its request only after it.
    let early = connect(addr);

    // Slot 2: the upgraded version, and its postStart hook.
    let mut new = Proc::spawn("new", &logs, V2, &serve);
    let mut hook = Proc::spawn("migrate", &logs, V2, &["migrate", "--uds-dir", uds]);
    let status = hook.wait_exit(PATIENCE);
    assert!(status.success(), "migrate: {status}\n{}", hook.log());

    // The early connection is answered in full, by whichever instance accepted it.
    let (pid, generation) = request(early);
    assert!(
        (pid, generation) == (old.pid(), 1) || (pid, generation) == (new.pid(), 2),
        "early connection answered by pid {pid}, generation {generation}"
    );

    // The old instance stops on its own once it has drained.
    let status = old.wait_exit(PATIENCE);
    assert!(status.success(), "old: {status}");
    assert!(old.log().contains("handed over to generation 2"), "{}", old.log());

    // Only the new instance answers now, on the same port.
    for _ in 0..3 {
        assert_eq!(get(addr), (new.pid(), 2));
    }

    new.sigterm();
    let status = new.wait_exit(PATIENCE);
    assert!(status.success(), "new after SIGTERM: {status}");
}
