//! 100 consecutive upgrades under load: no failed request, and the serving process's open fds and RSS do not
//! grow from one generation to the next.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

const UPGRADES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_upgrades_under_load() {
    let s = Setup::new("10s", "2s").await;
    let mut serving = s.spawn_run("gen-1", &Env::versions("1", "0"));
    serving.wait_ready(s.admin, Duration::from_secs(10)).await;
    let load = Load::start(s.http, 4, 2, Some(s.tcp), 1);
    assert!(load.wait_progress(20, Duration::from_secs(5)).await);

    let mut samples = Vec::new();
    for generation in 2..=UPGRADES + 1 {
        // Alternate slots as Kruise does; the version always grows.
        let env = Env::versions(
            &(7_340_000 + generation).to_string(),
            &(7_340_000 + generation - 1).to_string(),
        );
        let mut next = s.spawn_run(&format!("gen-{generation}"), &env);
        let out = s
            .migrate(&format!("migrate-{generation}"), &env, "10s", Duration::from_secs(15))
            .await;
        assert_eq!(out.code, Some(0), "upgrade to generation {generation}: {}", out.stderr);
        let (code, _) = serving.expect_handed_over(Duration::from_secs(8)).await;
        assert_eq!(code, Some(0), "generation {} exit", generation - 1);
        assert!(
            load.wait_progress(5, Duration::from_secs(5)).await,
            "load stalled at generation {generation}"
        );
        samples.push((generation, open_fds(next.pid()), rss_kib(next.pid())));
        std::mem::swap(&mut serving, &mut next);
    }
    let report = load.stop().await;
    eprintln!("{report}");
    let st = status(s.admin).await.expect("status");
    assert_eq!(st["generation"].as_u64(), Some(UPGRADES + 1), "{st}");
    assert_eq!(report.failures(), 0, "{report}");
    // Keep-alive connections move to each new instance instead of being closed (live connection migration).
    assert_eq!(
        report.reconnects(),
        0,
        "keep-alive connections reopened across upgrades: {report}"
    );

    // The serving process at generation 101 holds no more fds, and barely more memory, than at generation 2.
    let (_, fds_first, rss_first) = samples[0];
    let (_, fds_last, rss_last) = samples[samples.len() - 1];
    eprintln!(
        "open fds: generation 2 {fds_first}, generation {} {fds_last}; RSS KiB: {rss_first} -> {rss_last}",
        UPGRADES + 1
    );
    let max_fds = samples.iter().map(|s| s.1).max().unwrap_or(0);
    assert!(max_fds <= fds_first + 16, "fds grow across upgrades: {samples:?}");
    assert!(
        rss_last <= rss_first + rss_first / 2 + 2048,
        "RSS grows across upgrades: {samples:?}"
    );
    serving.sigterm();
    assert_eq!(serving.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}
