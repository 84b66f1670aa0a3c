//! The `baton` command line: `check`, config errors, usage errors, `--version`.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(10);

fn valid_config() -> Config {
    Config::default()
        .listener("ingress", "127.0.0.1:15006", "http", "app")
        .listener("raw", "127.0.0.1:15007", "tcp", "app")
        .cluster("app", &["127.0.0.1:8080".parse().unwrap()])
        .admin("127.0.0.1:15000".parse().unwrap())
        .handoff("30s", "20s")
}

fn check(dir: &TestDir, file: &str, contents: &str) -> Outcome {
    let path = dir.write(file, contents);
    let p = path.display().to_string();
    run_baton(
        dir,
        &format!("check-{file}"),
        &["check", "--config", &p],
        &Env::fresh(),
        LIMIT,
    )
}

/// `baton check` on `contents` must exit 2 and mention every one of `needles` on stderr.
fn assert_invalid(contents: &str, needles: &[&str]) {
    let dir = TestDir::new();
    let out = check(&dir, "bad.yaml", contents);
    assert_eq!(
        out.code,
        Some(2),
        "baton check should reject this config (exit 2):\n{contents}\nstderr:\n{}",
        out.stderr
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "stderr should name {n:?}; config:\n{contents}\nstderr:\n{}",
            out.stderr
        );
    }
}

#[test]
fn check_accepts_valid_yaml() {
    let dir = TestDir::new();
    let out = check(&dir, "good.yaml", &valid_config().to_yaml());
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert!(!out.stdout.trim().is_empty(), "check should print a summary on stdout");
}

#[test]
fn check_accepts_minimal_yaml_with_defaults() {
    let dir = TestDir::new();
    let yaml = "listeners:\n  - name: ingress\n    address: 127.0.0.1:15006\n    protocol: http\n    cluster: app\n\
                clusters:\n  - name: app\n    endpoints: [\"127.0.0.1:8080\"]\n";
    let out = check(&dir, "minimal.yaml", yaml);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
}

#[test]
fn check_accepts_json() {
    let dir = TestDir::new();
    let json = valid_config().to_json();
    assert!(
        serde_json::from_str::<serde_json::Value>(&json).is_ok(),
        "test bug: not JSON"
    );
    let out = check(&dir, "good.json", &json);
    assert_eq!(
        out.code,
        Some(0),
        "JSON config should be accepted; stderr:\n{}",
        out.stderr
    );
}

#[test]
fn check_rejects_invalid_json_field() {
    let dir = TestDir::new();
    let mut cfg = valid_config();
    cfg.listeners[0].address = "127.0.0.1".into();
    let out = check(&dir, "bad.json", &cfg.to_json());
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("listeners[0].address"), "stderr:\n{}", out.stderr);
}

#[test]
fn check_rejects_unknown_field() {
    let yaml = valid_config()
        .to_yaml()
        .replace("    protocol: tcp\n", "    protocol: tcp\n    protcol: http\n");
    assert!(yaml.contains("protcol"), "test bug");
    assert_invalid(&yaml, &["protcol"]);
}

#[test]
fn check_rejects_unknown_top_level_field() {
    let yaml = format!("{}tracing: on\n", valid_config().to_yaml());
    assert_invalid(&yaml, &["tracing"]);
}

/// An unknown field does not hide the other problems: `baton check` lists every one of them in one run.
#[test]
fn check_reports_unknown_fields_with_every_other_problem() {
    let yaml = valid_config()
        .to_yaml()
        .replace("    protocol: tcp\n", "    protocol: tcp\n    protcol: http\n")
        .replace("    cluster: app\n", "    cluster: nowhere\n")
        .replace(
            "    connect_timeout: 1s\n",
            "    connect_timeout: 3 parsecs\n    retries: 3\n",
        );
    let yaml = format!("{yaml}tracing: on\n");
    assert!(
        yaml.contains("protcol") && yaml.contains("nowhere") && yaml.contains("parsecs"),
        "test bug:\n{yaml}"
    );
    assert_invalid(
        &yaml,
        &[
            "listeners[1]: unknown field `protcol`",
            "clusters[0]: unknown field `retries`",
            "unknown field `tracing`",
            "listeners[0].cluster: no cluster named \"nowhere\"",
            "listeners[1].cluster: no cluster named \"nowhere\"",
            "clusters[0].connect_timeout: \"3 parsecs\" is not a duration",
        ],
    );
}

#[test]
fn check_rejects_duplicate_listener_name() {
    let mut cfg = valid_config();
    cfg.listeners[1].name = "ingress".into();
    assert_invalid(&cfg.to_yaml(), &["listeners[1]", "name"]);
}

#[test]
fn check_rejects_dangling_cluster_reference() {
    let mut cfg = valid_config();
    cfg.listeners[1].cluster = "nowhere".into();
    assert_invalid(&cfg.to_yaml(), &["listeners[1].cluster"]);
}

#[test]
fn check_rejects_bad_address() {
    let mut cfg = valid_config();
    cfg.listeners[0].address = "localhost-ish:http".into();
    assert_invalid(&cfg.to_yaml(), &["listeners[0].address"]);
}

#[test]
fn check_rejects_bad_duration() {
    let cfg = valid_config().handoff("3 parsecs", "20s");
    assert_invalid(&cfg.to_yaml(), &["handoff.timeout"]);
}

#[test]
fn check_rejects_empty_endpoints() {
    let mut cfg = valid_config();
    cfg.clusters[0].endpoints.clear();
    assert_invalid(&cfg.to_yaml(), &["clusters[0].endpoints"]);
}

#[test]
fn check_rejects_missing_file() {
    let dir = TestDir::new();
    let p = dir.join("does-not-exist.yaml").display().to_string();
    let out = run_baton(&dir, "check-missing", &["check", "--config", &p], &Env::fresh(), LIMIT);
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    assert!(!out.stderr.trim().is_empty(), "should say why");
}

#[test]
fn run_with_bad_config_is_exit_2() {
    let dir = TestDir::new();
    let http = free_addr();
    let mut cfg = valid_config();
    cfg.listeners.truncate(1);
    cfg.listeners[0].address = http.to_string();
    cfg.listeners[0].cluster = "nowhere".into();
    cfg.admin = None;
    let path = cfg.write_yaml(&dir, "bad.yaml").display().to_string();
    let uds = dir.subdir("uds").display().to_string();
    let out = run_baton(
        &dir,
        "run-bad",
        &["run", "--config", &path, "--uds-dir", &uds],
        &Env::fresh(),
        LIMIT,
    );
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("listeners[0].cluster"), "stderr:\n{}", out.stderr);
}

#[test]
fn run_with_bad_config_from_env_is_exit_2() {
    let dir = TestDir::new();
    let path = dir
        .write("bad.yaml", &valid_config().handoff("3 parsecs", "20s").to_yaml())
        .display()
        .to_string();
    let uds = dir.subdir("uds").display().to_string();
    let env = Env::fresh().with("BATON_CONFIG", &path);
    let out = run_baton(&dir, "run-bad-env", &["run", "--uds-dir", &uds], &env, LIMIT);
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("handoff.timeout"), "stderr:\n{}", out.stderr);
}

#[test]
fn migrate_with_bad_timeout_is_exit_2() {
    let dir = TestDir::new();
    let path = valid_config().write_yaml(&dir, "good.yaml").display().to_string();
    let uds = dir.subdir("uds").display().to_string();
    let args = ["migrate", "--config", &path, "--uds-dir", &uds, "--timeout", "nonsense"];
    let out = run_baton(&dir, "migrate-bad-timeout", &args, &Env::versions(R2, "1"), LIMIT);
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
    assert!(!out.stderr.trim().is_empty(), "should say why");
}

#[test]
fn unknown_subcommand_is_exit_2() {
    let dir = TestDir::new();
    let out = run_baton(&dir, "bogus", &["frobnicate"], &Env::fresh(), LIMIT);
    assert_eq!(out.code, Some(2), "stderr:\n{}", out.stderr);
}

#[test]
fn version_flag() {
    let dir = TestDir::new();
    let out = run_baton(&dir, "version", &["--version"], &Env::fresh(), LIMIT);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version should print {}; stdout: {:?}",
        env!("CARGO_PKG_VERSION"),
        out.stdout
    );
}

/// `--log-level` takes a level and `target=level` pairs (the documented syntax); anything else is a usage error
/// naming the flag, before any work is done.
#[test]
fn log_level_syntax() {
    let dir = TestDir::new();
    let path = valid_config().write_yaml(&dir, "good.yaml").display().to_string();
    for good in [
        "debug",
        "info,baton_migrate=debug",
        "warn,baton=trace,baton_migrate=off",
    ] {
        let args = ["--log-level", good, "check", "--config", &path];
        let out = run_baton(&dir, "log-level-good", &args, &Env::fresh(), LIMIT);
        assert_eq!(out.code, Some(0), "{good}: stderr:\n{}", out.stderr);
    }
    for bad in ["baton=nonsense", "info,baton=7"] {
        let args = ["--log-level", bad, "check", "--config", &path];
        let out = run_baton(&dir, "log-level-bad", &args, &Env::fresh(), LIMIT);
        assert_eq!(out.code, Some(2), "{bad}: stderr:\n{}", out.stderr);
        assert!(out.stderr.contains("--log-level"), "{bad}: stderr:\n{}", out.stderr);
    }
}

#[test]
fn missing_config_names_the_flag_and_the_env_variable() {
    let dir = TestDir::new();
    for cmd in ["run", "check"] {
        let out = run_baton(&dir, &format!("{cmd}-no-config"), &[cmd], &Env::fresh(), LIMIT);
        assert_eq!(out.code, Some(2), "{cmd}: stderr:\n{}", out.stderr);
        assert!(
            out.stderr.contains("--config") && out.stderr.contains("BATON_CONFIG"),
            "{cmd}: stderr:\n{}",
            out.stderr
        );
    }
}

#[test]
fn migrate_on_a_first_start_says_why_from_the_env() {
    let dir = TestDir::new();
    let uds = dir.subdir("uds").display().to_string();
    let args = ["migrate", "--uds-dir", &uds];
    let out = run_baton(&dir, "migrate-alt-0", &args, &Env::versions("1", "0"), LIMIT);
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert!(
        out.stdout.contains("first start (SIDECARSET_VERSION_ALT=0"),
        "stdout:\n{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("no SIDECARSET_VERSION_ALT"),
        "stdout:\n{}",
        out.stdout
    );
}
