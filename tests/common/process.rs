//! The real `baton` binary as a separate process: [`Env`] (the Kruise env it sees, everything else scrubbed),
//! [`Baton`] (a running process, killed on drop, its stderr printed if the test panics) and [`run_baton`] for a
//! command run to completion ([`Outcome`]).

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::dir::TestDir;
use super::inspect::ready_code;

/// The environment a baton process sees. SIDECARSET_VERSION / SIDECARSET_VERSION_ALT are always set explicitly
/// (or explicitly absent); inherited ones, and inherited BATON_* variables, are removed.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub version: Option<String>,
    pub alt: Option<String>,
    pub extra: Vec<(String, String)>,
}

impl Env {
    /// VERSION / ALT both set.
    pub fn versions(version: &str, alt: &str) -> Env {
        Env {
            version: Some(version.into()),
            alt: Some(alt.into()),
            extra: vec![],
        }
    }

    /// Neither VERSION nor ALT set.
    pub fn unset() -> Env {
        Env::default()
    }

    /// Fresh slot at pod creation: (1, 0).
    pub fn fresh() -> Env {
        Env::versions("1", "0")
    }

    pub fn with(mut self, key: &str, value: &str) -> Env {
        self.extra.push((key.into(), value.into()));
        self
    }
}

/// A `std::process::Command` for the baton binary, with a scrubbed environment.
pub fn baton_command(args: &[&str], env: &Env) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.args(args);
    for k in [
        "SIDECARSET_VERSION",
        "SIDECARSET_VERSION_ALT",
        "BATON_CONFIG",
        "BATON_UDS_DIR",
        "BATON_FAILPOINT",
    ] {
        cmd.env_remove(k);
    }
    if let Some(v) = &env.version {
        cmd.env("SIDECARSET_VERSION", v);
    }
    if let Some(v) = &env.alt {
        cmd.env("SIDECARSET_VERSION_ALT", v);
    }
    for (k, v) in &env.extra {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// A running `baton` process. Killed (SIGKILL) on drop; its stdout/stderr go to files in the test dir, and its
/// stderr is printed if the test is panicking when the handle is dropped.
/// What a superseded instance logs once drained, before it idles until SIGTERM.
pub const SUPERSEDED_LOG: &str = "superseded: holding nothing";

pub struct Baton {
    pub name: String,
    child: std::process::Child,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
}

impl Baton {
    /// Spawn `baton <args>` with `env`; `name` labels the process and its log files (`<name>.stderr`).
    pub fn spawn(dir: &TestDir, name: &str, args: &[&str], env: &Env) -> Baton {
        Baton::spawn_cmd(dir, name, baton_command(args, env))
    }

    /// Like [`Baton::spawn`], with RLIMIT_NOFILE set to `nofile` (through util-linux `prlimit`, exec'ing baton).
    pub fn spawn_with_nofile(dir: &TestDir, name: &str, args: &[&str], env: &Env, nofile: u32) -> Baton {
        let inner = baton_command(args, env);
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}")).arg("--").arg(inner.get_program());
        cmd.args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(Stdio::null());
        Baton::spawn_cmd(dir, name, cmd)
    }

    fn spawn_cmd(dir: &TestDir, name: &str, mut cmd: Command) -> Baton {
        let stdout_path = dir.join(&format!("{name}.stdout"));
        let stderr_path = dir.join(&format!("{name}.stderr"));
        cmd.stdout(fs::File::create(&stdout_path).expect("create stdout file"));
        cmd.stderr(fs::File::create(&stderr_path).expect("create stderr file"));
        let child = cmd.spawn().expect("spawn baton");
        Baton {
            name: name.into(),
            child,
            status: None,
            stdout_path,
            stderr_path,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Exit status if the process has exited (reaps it), without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Send SIGTERM (no-op if the process was already reaped).
    pub fn sigterm(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run kill -TERM");
        // kill may fail only if the process exited in between.
        assert!(
            st.success() || self.try_status().is_some(),
            "kill -TERM {} failed",
            self.pid()
        );
    }

    /// SIGKILL the process (a crash, as kubelet's grace-period kill) and reap it.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("wait after kill"));
        }
    }

    /// Wait (async polling) up to `timeout` for the process to exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait (blocking polling) up to `timeout` for the process to exit.
    pub fn wait_timeout_blocking(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait up to `timeout` for the exit; panics (with stderr) if it does not exit in time. Returns the exit code
    /// (None if killed by a signal) and the time since spawn.
    pub async fn expect_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        match self.wait_timeout(timeout).await {
            Some(s) => (s.code(), self.started.elapsed()),
            None => panic!(
                "{} (pid {}) did not exit within {:?}; stderr:\n{}",
                self.name,
                self.pid(),
                timeout,
                self.stderr()
            ),
        }
    }

    /// Waits up to `timeout` for an instance that handed over to be done: under the Kruise env it drains, then
    /// idles as superseded until SIGTERM (sent here once its log says so, as the slot's reset would); without the
    /// env it exits by itself. Returns its exit code and the time from spawn to the end of its drain.
    pub async fn expect_handed_over(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return (s.code(), self.started.elapsed());
            }
            if self.stderr().contains(SUPERSEDED_LOG) {
                let done = self.started.elapsed();
                self.sigterm();
                let (code, _) = self.expect_exit(Duration::from_secs(5)).await;
                return (code, done);
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} (pid {}) neither exited nor idled as superseded within {:?}; stderr:\n{}",
                    self.name,
                    self.pid(),
                    timeout,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn expect_exit_blocking(&mut self, timeout: Duration) -> Option<i32> {
        match self.wait_timeout_blocking(timeout) {
            Some(s) => s.code(),
            None => panic!(
                "{} (pid {}) did not exit within {:?}; stderr:\n{}",
                self.name,
                self.pid(),
                timeout,
                self.stderr()
            ),
        }
    }

    /// Panics (with stderr) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.try_status() {
            panic!(
                "{} (pid {}) exited unexpectedly with {s}; stderr:\n{}",
                self.name,
                self.pid(),
                self.stderr()
            );
        }
    }

    /// Wait until `/ready` on `admin` answers 200; panics (with stderr) on timeout or if the process exits.
    pub async fn wait_ready(&mut self, admin: SocketAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if let Ok(200) = ready_code(admin).await {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} (pid {}) not ready on {admin} within {:?}; stderr:\n{}",
                    self.name,
                    self.pid(),
                    timeout,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} (pid {}) exit {:?} stderr -----\n{}\n----- end {} -----",
                self.name,
                self.child.id(),
                self.status,
                self.stderr(),
                self.name
            );
        }
    }
}

/// Result of running baton to completion.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run `baton <args>` to completion (blocking), killing it and panicking if it runs longer than `timeout`.
pub fn run_baton(dir: &TestDir, name: &str, args: &[&str], env: &Env, timeout: Duration) -> Outcome {
    let mut b = Baton::spawn(dir, name, args, env);
    let code = b.expect_exit_blocking(timeout);
    Outcome {
        code,
        stdout: b.stdout(),
        stderr: b.stderr(),
        elapsed: b.started.elapsed(),
    }
}

/// Async variant of [`run_baton`] (polls without blocking a runtime worker).
pub async fn run_baton_async(dir: &TestDir, name: &str, args: &[&str], env: &Env, timeout: Duration) -> Outcome {
    let mut b = Baton::spawn(dir, name, args, env);
    let (code, elapsed) = b.expect_exit(timeout).await;
    Outcome {
        code,
        stdout: b.stdout(),
        stderr: b.stderr(),
        elapsed,
    }
}
