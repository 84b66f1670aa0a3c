//! [`Setup`]: the standard scene of most tests: both upstreams, fresh ports, a uds dir and a config with an http
//! listener, a tcp listener and an admin port; and [`assert_listeners`] to check `/status` against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::config::Config;
use super::dir::TestDir;
use super::ports::free_addr;
use super::process::{Baton, Env, Outcome};
use super::upstream::{EchoUpstream, HttpUpstream};

pub struct Setup {
    pub dir: TestDir,
    pub http_upstream: HttpUpstream,
    pub echo_upstream: EchoUpstream,
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub admin: SocketAddr,
    pub uds_dir: PathBuf,
    pub config: PathBuf,
    pub cfg: Config,
}

impl Setup {
    /// Upstreams, fresh ports, uds dir `<tmp>/uds` (empty), and `<tmp>/baton.yaml` with the given handoff timeout
    /// and drain timeout.
    pub async fn new(handoff_timeout: &str, drain_timeout: &str) -> Setup {
        let dir = TestDir::new();
        let http_upstream = HttpUpstream::start().await;
        let echo_upstream = EchoUpstream::start().await;
        let (http, tcp, admin) = (free_addr(), free_addr(), free_addr());
        let uds_dir = dir.subdir("uds");
        let cfg = Config::default()
            .listener("ingress", http, "http", "app")
            .listener("raw", tcp, "tcp", "echo")
            .cluster("app", &[http_upstream.addr])
            .cluster("echo", &[echo_upstream.addr])
            .admin(admin)
            .uds_dir(&uds_dir)
            .handoff(handoff_timeout, drain_timeout);
        let config = cfg.write_yaml(&dir, "baton.yaml");
        Setup {
            dir,
            http_upstream,
            echo_upstream,
            http,
            tcp,
            admin,
            uds_dir,
            config,
            cfg,
        }
    }

    pub fn config_str(&self) -> String {
        self.config.display().to_string()
    }

    pub fn uds_str(&self) -> String {
        self.uds_dir.display().to_string()
    }

    /// Spawn `baton run --config <cfg> --uds-dir <uds>`.
    pub fn spawn_run(&self, name: &str, env: &Env) -> Baton {
        let (c, u) = (self.config_str(), self.uds_str());
        Baton::spawn(&self.dir, name, &["run", "--config", &c, "--uds-dir", &u], env)
    }

    /// Spawn `baton migrate --config <cfg> --uds-dir <uds> --timeout <timeout>`.
    pub fn spawn_migrate(&self, name: &str, env: &Env, timeout: &str) -> Baton {
        let (c, u) = (self.config_str(), self.uds_str());
        Baton::spawn(
            &self.dir,
            name,
            &["migrate", "--config", &c, "--uds-dir", &u, "--timeout", timeout],
            env,
        )
    }

    /// Run `baton migrate` to completion (async polling), panicking if it runs longer than `limit`.
    pub async fn migrate(&self, name: &str, env: &Env, timeout: &str, limit: Duration) -> Outcome {
        let mut m = self.spawn_migrate(name, env, timeout);
        let (code, elapsed) = m.expect_exit(limit).await;
        Outcome {
            code,
            stdout: m.stdout(),
            stderr: m.stderr(),
            elapsed,
        }
    }
}

/// Asserts that `/status` (`st`) lists the proxy listeners `ingress` (http, `s.http`) and `raw` (tcp, `s.tcp`),
/// and that every listener it lists (the admin listener too, if it is listed) has the given origin.
pub fn assert_listeners(st: &serde_json::Value, s: &Setup, origin: &str) {
    let listeners = st["listeners"]
        .as_array()
        .unwrap_or_else(|| panic!("/status has no listeners array: {st}"));
    for (name, addr, protocol) in [("ingress", s.http, "http"), ("raw", s.tcp, "tcp")] {
        let l = listeners
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("listener {name} missing in /status: {st}"));
        assert_eq!(
            l["address"].as_str(),
            Some(addr.to_string().as_str()),
            "listener {name} address: {st}"
        );
        assert_eq!(l["protocol"].as_str(), Some(protocol), "listener {name} protocol: {st}");
    }
    for l in listeners {
        assert_eq!(
            l["origin"].as_str(),
            Some(origin),
            "listener {} origin: {st}",
            l["name"]
        );
    }
}
