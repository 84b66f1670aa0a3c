//! Hot upgrades as Kruise drives them: the first instance ([`start_first`], from a config the test writes itself),
//! then takeovers ([`take_over`] with [`takeover_env`]), the old instance's exit ([`expect_old_exits`]) and who
//! serves afterwards ([`assert_serving`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

/// How long an old instance may take to exit after `baton migrate` returned, when everything it holds can be handed
/// over or has finished. Tests give the old instance a drain timeout well beyond this, so one that only exits at its
/// drain deadline fails them.
pub const OLD_EXIT: Duration = Duration::from_secs(10);

/// The env of the instance of generation `g` ≥ 2: VERSION > ALT, the takeover role (as Kruise starts the new slot).
pub fn takeover_env(g: u64) -> Env {
    Env::versions(&(7_340_000 + g).to_string(), &(7_340_000 + g - 1).to_string())
}

/// Spawns `baton run` (named `name`) with `config` in the takeover role `env` and runs its postStart hook (`baton
/// migrate` with the same config and env), which must report the handoff complete (exit 0). Returns the new
/// instance, serving.
pub async fn take_over(dir: &TestDir, config: &Path, uds: &Path, name: &str, env: &Env) -> Baton {
    let (c, u) = (config.display().to_string(), uds.display().to_string());
    let mut new = Baton::spawn(dir, name, &["run", "--config", &c, "--uds-dir", &u], env);
    let out = run_baton_async(
        dir,
        &format!("{name}-migrate"),
        &["migrate", "--config", &c, "--uds-dir", &u, "--timeout", "10s"],
        env,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        out.code,
        Some(0),
        "baton migrate for {name} should exit 0 (handoff complete); stderr:\n{}",
        out.stderr
    );
    new.assert_running();
    new
}

/// Waits up to `within` for the old instance to be done draining (it exits, or under the Kruise env idles as
/// superseded and exits at SIGTERM), and asserts it exited 0. `why` says why it should have been done by then.
pub async fn expect_old_exits(old: &mut Baton, within: Duration, why: &str) {
    eprintln!("{}: expecting it done within {within:?}: {why}", old.name);
    let (code, _) = old.expect_handed_over(within).await;
    assert_eq!(
        code,
        Some(0),
        "{} (pid {}) exited with {code:?}; stderr:\n{}",
        old.name,
        old.pid(),
        old.stderr()
    );
}

/// Asserts that `/status` on `admin` is answered by `pid`, at `generation`.
pub async fn assert_serving(admin: SocketAddr, pid: u32, generation: u64) {
    let st = status(admin).await.expect("GET /status");
    assert_eq!(st["pid"].as_u64(), Some(pid as u64), "/status pid: {st}");
    assert_eq!(st["generation"].as_u64(), Some(generation), "/status generation: {st}");
}

/// Generation 1 of a test's baton, serving: its config file, uds dir, proxy listener addresses and admin address.
pub struct First {
    pub baton: Baton,
    pub config: PathBuf,
    pub uds: PathBuf,
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
}

/// Writes `baton.yaml` from `yaml(listeners, admin, uds_dir)` with `n` fresh listener addresses and starts
/// generation 1 (fresh role) on it, waiting until its admin port answers `/ready` for this very process. A port found
/// free ([`free_addr`]) can be taken by another test's connection before baton binds it: then it starts over with
/// new ports (five attempts).
pub async fn start_first(dir: &TestDir, n: usize, yaml: impl Fn(&[SocketAddr], SocketAddr, &Path) -> String) -> First {
    let uds = dir.subdir("uds");
    for attempt in 1..=5 {
        let listeners: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let admin = free_addr();
        let config = dir.write("baton.yaml", &yaml(&listeners, admin, &uds));
        let (c, u) = (config.display().to_string(), uds.display().to_string());
        let name = format!("gen-1-try-{attempt}");
        let mut baton = Baton::spawn(dir, &name, &["run", "--config", &c, "--uds-dir", &u], &Env::fresh());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = baton.try_status() {
                let stderr = baton.stderr();
                assert!(
                    stderr.contains("Address already in use"),
                    "{name} exited with {st} before serving; stderr:\n{stderr}"
                );
                eprintln!("{name} lost a port race, starting over with other ports");
                break;
            }
            if ready_code(admin).await.ok() == Some(200) && status_pid(admin).await == Some(u64::from(baton.pid())) {
                return First {
                    baton,
                    config,
                    uds,
                    listeners,
                    admin,
                };
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready on {admin} within 10 s; stderr:\n{}",
                baton.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("generation 1 could not bind its ports in 5 attempts");
}

/// Counts the lines of `log` that are at `WARN` and contain `what`.
pub fn warn_lines(log: &str, what: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains(what))
        .map(str::to_string)
        .collect()
}

/// A `baton run` taking over (generation 2) from a predecessor the test plays itself with the baton-migrate API:
/// it holds `serving.lock` and the listener `ingress` (http, to `upstream`), hands it over with `state` as its
/// application state, and commits. Returns the new instance, serving, and the session to send it connections.
pub struct PlayedHandover {
    pub new: Baton,
    pub sender: baton_migrate::ConnSender,
    /// The `ingress` listener's address.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

pub async fn played_handover(dir: &TestDir, upstream: SocketAddr, state: serde_json::Value) -> PlayedHandover {
    use baton_migrate::{hand_over_live, Identity, ListenerTag, Offer, Offered, SuccessorWatch, UdsDir};
    use std::os::fd::AsFd;

    let uds = dir.subdir("uds");
    let admin = free_addr();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = Config::default()
        .listener("ingress", addr, "http", "up")
        .cluster("up", &[upstream])
        .admin(admin)
        .uds_dir(&uds)
        .handoff("5s", "5s")
        .write_yaml(dir, "baton.yaml");
    let uds_dir = UdsDir::new(&uds);
    uds_dir.ensure().expect("uds dir");
    let serving = uds_dir.hold_serving().expect("serving lock");
    let mut watch = SuccessorWatch::new(&uds_dir);
    let c = config.to_str().expect("utf-8 path");
    let new = Baton::spawn(dir, "new", &["run", "--config", c], &Env::versions(R2, "1"));
    let stream = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the new instance publishes reconfig.sock");
    let offered = [Offered {
        tag: ListenerTag {
            name: "ingress".into(),
            address: addr.to_string(),
            kind: "http".into(),
        },
        fd: listener.as_fd(),
    }];
    let me = Identity {
        generation: 1,
        version: "played".into(),
    };
    let offer = Offer {
        listeners: &offered,
        state,
        timeout: Duration::from_secs(5),
        crash_at: None,
    };
    let (_, sender) = hand_over_live(stream, &me, offer).await.expect("commit");
    drop(serving);
    drop(listener);
    PlayedHandover {
        new,
        sender: sender.expect("baton speaks protocol 2"),
        addr,
        admin,
    }
}
