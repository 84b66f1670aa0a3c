//! Observing a running baton from outside: its admin API (`/status`, `/ready`, `/metrics` and its samples),
//! the instance files it publishes in the uds dir, and the listening sockets its process holds.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use hyper::StatusCode;

use super::requests::http_get;
use super::wait::wait_until;

/// `GET /status` on the admin address, parsed as JSON.
pub async fn status(admin: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let got = http_get(admin, "/status").await?;
    if got.status != StatusCode::OK {
        bail!("/status answered {}", got.status);
    }
    serde_json::from_slice(&got.body).with_context(|| format!("/status body is not JSON: {:?}", got.body))
}

/// `GET /ready` status code.
pub async fn ready_code(admin: SocketAddr) -> anyhow::Result<u16> {
    Ok(http_get(admin, "/ready").await?.status.as_u16())
}

/// `/status` pid, if the admin answers.
pub async fn status_pid(admin: SocketAddr) -> Option<u64> {
    status(admin).await.ok().and_then(|s| s["pid"].as_u64())
}

/// `GET /metrics` from the admin port, checking the Prometheus text content type.
pub async fn metrics(admin: SocketAddr) -> String {
    let got = http_get(admin, "/metrics").await.expect("GET /metrics");
    assert_eq!(got.status, 200);
    let ct = got
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "content-type {ct}");
    String::from_utf8(got.body.to_vec()).expect("utf-8")
}

/// The value of the sample line that starts with `series ` (exact series, labels included) in a /metrics text.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("sample {series}: {e}"))
}

/// Waits until an instance in `phase` has published itself in the uds dir (see `baton status`).
pub async fn wait_phase_published(uds_dir: &Path, phase: &str, timeout: Duration) -> bool {
    let needle = format!("\"phase\":\"{phase}\"");
    wait_until(timeout, || async {
        fs::read_dir(uds_dir)
            .map(|entries| {
                entries.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("instance-")
                        && fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&needle))
                })
            })
            .unwrap_or(false)
    })
    .await
}

/// How many listening TCP sockets (IPv4 or IPv6) process `pid` holds: its socket fds matched against the
/// LISTEN entries of /proc/net/tcp{,6}.
pub fn listening_tcp_sockets(pid: u32) -> usize {
    let mut listening = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // cols[3] is the state (0A = LISTEN), cols[9] the inode.
            if cols.len() > 9 && cols[3] == "0A" {
                listening.insert(cols[9].to_string());
            }
        }
    }
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).expect("read the process's fds");
    fds.flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().to_string();
            t.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .filter(|inode| listening.contains(inode))
        .count()
}
