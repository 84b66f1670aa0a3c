//! What operators see: `/metrics` (checked by promtool), structured JSON logs of a handoff, `baton status`.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const R2: &str = "7340032";

fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool is needed to check /metrics ({e}); install it: apt-get install prometheus (see .ci/run)")
    });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_traffic_and_pass_promtool() {
    let s = Setup::new("10s", "2s").await;
    let mut b = s.spawn_run("fresh", &Env::fresh());
    b.wait_ready(s.admin, Duration::from_secs(10)).await;
    for _ in 0..5 {
        proxy_ok(s.http).await.expect("http through the proxy");
    }
    tcp_echo_once(s.tcp, b"ping\n").await.expect("tcp through the proxy");
    // The relay counts its stream when it ends; wait for the connection to be gone.
    let settled = wait_until(Duration::from_secs(5), || async {
        let m = metrics(s.admin).await;
        sample(&m, "baton_connections_active{listener=\"raw\"}") == 0.0
            && sample(&m, "baton_connections_active{listener=\"ingress\"}") == 0.0
    })
    .await;
    assert!(settled, "connections still active");
    let m = metrics(s.admin).await;
    assert_eq!(
        sample(
            &m,
            "baton_requests_total{listener=\"ingress\",protocol=\"http\",class=\"2xx\"}"
        ),
        5.0
    );
    assert_eq!(
        sample(
            &m,
            "baton_requests_total{listener=\"raw\",protocol=\"tcp\",class=\"2xx\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "baton_request_duration_seconds_count{listener=\"ingress\"}"),
        5.0
    );
    assert!(sample(&m, "baton_connections_total{listener=\"ingress\"}") >= 1.0);
    assert!(sample(&m, "baton_received_bytes_total{listener=\"raw\"}") >= 5.0);
    assert!(sample(&m, "baton_sent_bytes_total{listener=\"ingress\"}") > 0.0);
    assert_eq!(sample(&m, "baton_generation"), 1.0);
    assert_eq!(sample(&m, "baton_phase{phase=\"serving\"}"), 1.0);
    promtool_check(&m);

    b.sigterm();
    assert_eq!(b.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_shows_in_metrics_json_logs_and_status() {
    let s = Setup::new("10s", "2s").await;
    let (c, u) = (s.config_str(), s.uds_str());
    let json_run = ["--log-format", "json", "run", "--config", &c, "--uds-dir", &u];
    let mut old = Baton::spawn(&s.dir, "old", &json_run, &Env::versions("1", "0"));
    old.wait_ready(s.admin, Duration::from_secs(10)).await;

    let status_cmd = ["status", "--uds-dir", &u];
    let out = run_baton_async(&s.dir, "status-1", &status_cmd, &Env::fresh(), Duration::from_secs(5)).await;
    assert_eq!(out.code, Some(0), "status with a serving instance: {}", out.stderr);
    assert!(
        out.stdout.contains("phase serving") && out.stdout.contains("generation 1"),
        "{}",
        out.stdout
    );

    let env = Env::versions(R2, "1");
    let mut new = Baton::spawn(&s.dir, "new", &json_run, &env);
    let m = s.migrate("migrate", &env, "10s", Duration::from_secs(15)).await;
    assert_eq!(m.code, Some(0), "migrate: {}", m.stderr);
    assert_eq!(old.expect_handed_over(Duration::from_secs(8)).await.0, Some(0));

    let text = metrics(s.admin).await;
    assert_eq!(sample(&text, "baton_generation"), 2.0);
    assert_eq!(
        sample(&text, "baton_handoffs_total{side=\"new\",outcome=\"committed\"}"),
        1.0
    );
    assert_eq!(sample(&text, "baton_handoff_duration_seconds_count"), 1.0);
    promtool_check(&text);

    // Every protocol step is one JSON event with generation, peer and elapsed time, on both sides.
    for (who, proc_) in [("old", &old), ("new", &new)] {
        let steps: Vec<serde_json::Value> = proc_
            .stderr()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {l}"))
            })
            .filter(|v| v["message"] == "handoff step done")
            .collect();
        let names: Vec<&str> = steps.iter().filter_map(|v| v["step"].as_str()).collect();
        assert_eq!(
            names,
            ["connect", "hello", "listeners", "ready", "commit"],
            "{who} steps"
        );
        for v in &steps {
            assert_eq!(v["side"].as_str(), Some(who), "{v}");
            assert!(
                v["generation"].as_u64().is_some() && v["elapsed_us"].as_u64().is_some(),
                "{v}"
            );
            assert!(v["peer_version"].as_str().is_some(), "{v}");
        }
    }

    let out = run_baton_async(&s.dir, "status-2", &status_cmd, &Env::fresh(), Duration::from_secs(5)).await;
    assert_eq!(out.code, Some(0));
    assert!(
        out.stdout.contains("generation 2") && out.stdout.contains("role takeover"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("generation 1"),
        "the old instance is gone: {}",
        out.stdout
    );

    new.sigterm();
    assert_eq!(new.expect_exit(Duration::from_secs(5)).await.0, Some(0));
    let out = run_baton_async(&s.dir, "status-3", &status_cmd, &Env::fresh(), Duration::from_secs(5)).await;
    assert_eq!(out.code, Some(1), "no instance left: {}", out.stdout);
}
