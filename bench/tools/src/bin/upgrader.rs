//! `upgrader`: drives baton hot upgrades exactly as the demo (and OpenKruise) does, and times each one.
//!
//! ```text
//! upgrader --baton PATH --config FILE --uds-dir DIR --admin 127.0.0.1:PORT --log-dir DIR --out FILE
//!          [--count N] [--interval-ms MS] [--trigger FILE] [--stop-file FILE] [--migrate-timeout 10s]
//!          [--wait-superseded] [--baton-arg ARG]...
//! ```
//!
//! 1. Starts instance 1 (`SIDECARSET_VERSION=1 SIDECARSET_VERSION_ALT=0`, fresh) and its postStart hook
//!    (`baton migrate`), waits until `/status` on the admin address answers with its pid, prints `ready PID`.
//! 2. Waits for `--trigger` to exist (when given), then runs `--count` upgrades, one every `--interval-ms`:
//!    upgrade k starts `baton run` with `VERSION=k ALT=k-1` and, right after, `baton migrate` with the same
//!    env (the postStart hook); polls `/status` until the new pid answers (serving the inherited sockets) and
//!    waits for `migrate` to exit; then SIGTERMs the old instance (the slot reset), without waiting for it.
//!    With `--wait-superseded`, as the demo does, the reset waits (up to 15 s) for the old instance to log that it
//!    is superseded (it handed over every live connection, its probation passed, it holds nothing); the time
//!    from the start of the upgrade to that line is `superseded_ms` in the report.
//! 3. Waits for every old instance to exit, writes the JSON report to `--out`, prints `done`.
//! 4. Waits for `--stop-file` to exist (when given), then SIGTERMs the last instance and exits.
//!
//! Every child gets SIGKILL if this process dies (PR_SET_PDEATHSIG). Only loopback admin addresses.
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn prctl(option: i32, ...) -> i32;
}
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;
const PR_SET_PDEATHSIG: i32 = 1;
const SCRUBBED_ENV: &[&str] = &[
    "SIDECARSET_VERSION",
    "SIDECARSET_VERSION_ALT",
    "BATON_CONFIG",
    "BATON_UDS_DIR",
    "BATON_FAILPOINT",
    "BATON_WORKERS",
];

struct Args {
    baton: PathBuf,
    config: PathBuf,
    uds_dir: PathBuf,
    admin: SocketAddr,
    log_dir: PathBuf,
    out: PathBuf,
    count: u32,
    interval: Duration,
    trigger: Option<PathBuf>,
    stop_file: Option<PathBuf>,
    migrate_timeout: String,
    wait_superseded: bool,
    baton_args: Vec<String>,
}

fn die(msg: impl AsRef<str>) -> ! {
    eprintln!("upgrader: {}", msg.as_ref());
    std::process::exit(1);
}

fn parse_args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut a = Args {
        baton: PathBuf::new(),
        config: PathBuf::new(),
        uds_dir: PathBuf::new(),
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        log_dir: PathBuf::new(),
        out: PathBuf::new(),
        count: 1,
        interval: Duration::from_millis(500),
        trigger: None,
        stop_file: None,
        migrate_timeout: "10s".into(),
        wait_superseded: false,
        baton_args: Vec::new(),
    };
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| die(format!("{flag} needs a value")));
        match flag.as_str() {
            "--baton" => a.baton = val().into(),
            "--config" => a.config = val().into(),
            "--uds-dir" => a.uds_dir = val().into(),
            "--admin" => a.admin = val().parse().unwrap_or_else(|_| die("--admin: not ip:port")),
            "--log-dir" => a.log_dir = val().into(),
            "--out" => a.out = val().into(),
            "--count" => a.count = val().parse().unwrap_or_else(|_| die("--count: not a number")),
            "--interval-ms" => {
                a.interval = Duration::from_millis(val().parse().unwrap_or_else(|_| die("--interval-ms: not a number")))
            }
            "--trigger" => a.trigger = Some(val().into()),
            "--stop-file" => a.stop_file = Some(val().into()),
            "--migrate-timeout" => a.migrate_timeout = val(),
            "--baton-arg" => a.baton_args.push(val()),
            "--wait-superseded" => a.wait_superseded = true,
            other => die(format!("unknown argument {other}")),
        }
    }
    if a.baton.as_os_str().is_empty() || a.config.as_os_str().is_empty() || a.out.as_os_str().is_empty() {
        die("--baton, --config and --out are required");
    }
    if !a.admin.ip().is_loopback() || a.admin.port() == 0 {
        die("--admin must be a loopback ip:port");
    }
    a
}

/// `baton SUBCOMMAND` with the Kruise env of a slot at `version`/`alt`, output to `log`.
fn baton(a: &Args, sub: &str, version: u64, alt: u64, log: &Path) -> Child {
    let out = File::create(log).unwrap_or_else(|e| die(format!("creating {}: {e}", log.display())));
    let err = out.try_clone().unwrap_or_else(|e| die(format!("{e}")));
    let mut cmd = Command::new(&a.baton);
    cmd.arg(sub)
        .arg("--config")
        .arg(&a.config)
        .arg("--uds-dir")
        .arg(&a.uds_dir);
    if sub == "run" {
        cmd.args(&a.baton_args);
    } else {
        cmd.arg("--timeout").arg(&a.migrate_timeout);
    }
    for v in SCRUBBED_ENV {
        cmd.env_remove(v);
    }
    cmd.env("NO_COLOR", "1")
        .env("SIDECARSET_VERSION", version.to_string())
        .env("SIDECARSET_VERSION_ALT", alt.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: only async-signal-safe prctl(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL as std::ffi::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| die(format!("starting {} {sub}: {e}", a.baton.display())))
}

fn signal(child: &Child, sig: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        if pid > 0 {
            // SAFETY: kill(2) on one positive pid, a child we have not reaped yet.
            unsafe { kill(pid, sig) };
        }
    }
}

/// The pid in `GET /status` on a new connection, if it answers.
fn status_pid(admin: SocketAddr) -> Option<u32> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_nodelay(true);
    s.write_all(format!("GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let rest = &body[body.find("\"pid\":")? + 6..];
    let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => c.to_string(),
        (None, Some(s)) => format!("\"signal {s}\""),
        _ => "null".into(),
    }
}

fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `elapsed_ms` of the "handoff complete" line in a takeover instance's log.
fn internal_ms(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("handoff complete"))?;
    let rest = &line[line.find("elapsed_ms=")? + 11..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

struct Upgrade {
    version: u64,
    pid: u32,
    serve_ms: Option<f64>,
    migrate_ms: Option<f64>,
    migrate_exit: String,
    internal_ms: Option<u64>,
    superseded_ms: Option<f64>,
    ok: bool,
    log: PathBuf,
}

fn opt_f(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "null".into())
}

fn main() {
    let a = parse_args();
    std::fs::create_dir_all(&a.log_dir).unwrap_or_else(|e| die(format!("creating {}: {e}", a.log_dir.display())));
    let poll = Duration::from_micros(250);

    // Instance 1: fresh.
    let mut current = baton(&a, "run", 1, 0, &a.log_dir.join("baton-1.log"));
    let mut hook = baton(&a, "migrate", 1, 0, &a.log_dir.join("migrate-1.log"));
    let _ = wait_deadline(&mut hook, Duration::from_secs(10));
    let end = Instant::now() + Duration::from_secs(10);
    while status_pid(a.admin) != Some(current.id()) {
        if Instant::now() >= end || matches!(current.try_wait(), Ok(Some(_))) {
            signal(&current, SIGKILL);
            die(format!(
                "instance 1 is not serving /status on {} (see {})",
                a.admin,
                a.log_dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("ready {}", current.id());
    let _ = std::io::stdout().flush();

    if let Some(trigger) = &a.trigger {
        let end = Instant::now() + Duration::from_secs(120);
        while !trigger.exists() {
            if Instant::now() >= end {
                signal(&current, SIGKILL);
                die("the trigger file never appeared");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    let mut version: u64 = 1;
    let mut upgrades: Vec<Upgrade> = Vec::new();
    let mut draining: Vec<(u64, Child)> = Vec::new();
    let mut old_exits: Vec<(u64, String)> = Vec::new();
    let started = Instant::now();
    for i in 0..a.count {
        let at = started + a.interval * i;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let v = version + 1;
        let log = a.log_dir.join(format!("baton-{v}.log"));
        let t0 = Instant::now();
        let mut new = baton(&a, "run", v, version, &log);
        let mut mig = baton(&a, "migrate", v, version, &a.log_dir.join(format!("migrate-{v}.log")));
        let deadline = t0 + Duration::from_secs(15);
        let (mut serve, mut migrated, mut migrate_exit) = (None, None, "null".to_string());
        let mut new_died = false;
        loop {
            if serve.is_none() && status_pid(a.admin) == Some(new.id()) {
                serve = Some(t0.elapsed().as_secs_f64() * 1e3);
            }
            if migrated.is_none() {
                if let Ok(Some(st)) = mig.try_wait() {
                    migrated = Some(t0.elapsed().as_secs_f64() * 1e3);
                    migrate_exit = describe(st);
                }
            }
            if serve.is_some() && migrated.is_some() {
                break;
            }
            if matches!(new.try_wait(), Ok(Some(_))) {
                new_died = true;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(poll);
        }
        if migrated.is_none() {
            signal(&mig, SIGKILL);
        }
        let _ = mig.wait();
        let ok = serve.is_some() && migrate_exit == "0" && !new_died;
        upgrades.push(Upgrade {
            version: v,
            pid: new.id(),
            serve_ms: serve,
            migrate_ms: migrated,
            migrate_exit,
            internal_ms: None,
            superseded_ms: None,
            ok,
            log,
        });
        if ok {
            if a.wait_superseded {
                let old_log = a.log_dir.join(format!("baton-{version}.log"));
                let end = Instant::now() + Duration::from_secs(15);
                while Instant::now() < end && !matches!(current.try_wait(), Ok(Some(_))) {
                    let text = std::fs::read_to_string(&old_log).unwrap_or_default();
                    if text.contains("superseded: holding nothing") {
                        if let Some(u) = upgrades.last_mut() {
                            u.superseded_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                        }
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            // The slot reset: SIGTERM the old instance (it is already draining after the commit).
            signal(&current, SIGTERM);
            let old = std::mem::replace(&mut current, new);
            draining.push((version, old));
            version = v;
        } else {
            eprintln!("upgrader: upgrade to version {v} failed (see {})", a.log_dir.display());
            signal(&new, SIGTERM);
            draining.push((v, new));
        }
        // Reap whatever finished meanwhile.
        draining.retain_mut(|(v, c)| match c.try_wait() {
            Ok(Some(st)) => {
                old_exits.push((*v, describe(st)));
                false
            }
            _ => true,
        });
    }
    for (v, mut c) in draining {
        let st = wait_deadline(&mut c, Duration::from_secs(15));
        if st.is_none() {
            signal(&c, SIGKILL);
            let _ = c.wait();
        }
        old_exits.push((v, st.map(describe).unwrap_or_else(|| "\"did not exit\"".into())));
    }
    for u in &mut upgrades {
        u.internal_ms = internal_ms(&u.log);
    }

    let mut json = String::from("{\"upgrades\":[");
    for (i, u) in upgrades.iter().enumerate() {
        let _ = write!(
            json,
            "{}{{\"version\":{},\"pid\":{},\"ok\":{},\"serve_ms\":{},\"migrate_ms\":{},\"migrate_exit\":{},\"internal_ms\":{},\"superseded_ms\":{}}}",
            if i > 0 { "," } else { "" },
            u.version,
            u.pid,
            u.ok,
            opt_f(u.serve_ms),
            opt_f(u.migrate_ms),
            u.migrate_exit,
            u.internal_ms.map(|x| x.to_string()).unwrap_or_else(|| "null".into()),
            opt_f(u.superseded_ms),
        );
    }
    json.push_str("],\"old_exits\":[");
    old_exits.sort();
    for (i, (v, e)) in old_exits.iter().enumerate() {
        let _ = write!(json, "{}{{\"version\":{v},\"exit\":{e}}}", if i > 0 { "," } else { "" });
    }
    let _ = writeln!(json, "],\"final_pid\":{}}}", current.id());
    std::fs::write(&a.out, json).unwrap_or_else(|e| die(format!("writing {}: {e}", a.out.display())));
    println!("done");
    let _ = std::io::stdout().flush();

    if let Some(stop) = &a.stop_file {
        let end = Instant::now() + Duration::from_secs(600);
        while !stop.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    signal(&current, SIGTERM);
    if wait_deadline(&mut current, Duration::from_secs(10)).is_none() {
        signal(&current, SIGKILL);
        let _ = current.wait();
    }
}
