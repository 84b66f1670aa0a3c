//! From the text to a [`Config`]: serde structs that mirror the file (unknown fields refused), then checks that
//! collect every problem, each starting with the path of its field, instead of stopping at the first.
//!
//! A YAML syntax or type error is the one exception: the parser cannot go on past it, so it is the only problem
//! reported. Otherwise problems come section by section: clusters (listeners name them), listeners, admin (its
//! address must differ from the listeners'), handoff.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration::format_duration;
use super::{
    parse_duration, AdminConfig, ClusterConfig, Config, ConfigError, HandoffConfig, ListenerConfig, Protocol,
    UpstreamProtocol,
};

/// `clusters[].connect_timeout` when absent: above Linux's initial SYN retransmission timeout (1 s), so that a SYN
/// dropped by an upstream whose accept queue is full is sent again before the connect gives up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `clusters[].pool_idle_timeout` when absent: below nginx's default `keepalive_timeout` (75 s) and the 60 s idle
/// timeout of common load balancers, so that baton drops an idle connection before the upstream closes it under a
/// request. (An upstream with a shorter timeout closes them first; the pool sees that and never uses one.)
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// The longest `clusters[].pool_idle_timeout` accepted.
const MAX_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The file as written. Serde's messages name these types (`expected struct RawConfig`), so renaming one changes
/// what `baton check` prints.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    clusters: Vec<RawCluster>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    handoff: RawHandoff,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    address: String,
    #[serde(default = "default_protocol")]
    protocol: String,
    cluster: String,
}

fn default_protocol() -> String {
    "http".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    endpoints: Vec<String>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHandoff {
    uds_dir: Option<PathBuf>,
    timeout: Option<String>,
    drain_timeout: Option<String>,
    probation: Option<String>,
    /// Checked in [`check_handoff`], so that a non-bool is reported with the other problems.
    inherit_config: Option<yaml_serde::Value>,
}

impl RawConfig {
    /// Parses YAML or JSON text; blank text is an empty config.
    pub(super) fn from_yaml(text: &str) -> Result<RawConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(RawConfig::default());
        }
        yaml_serde::from_str(text).map_err(|e| invalid(vec![yaml_problem(&e)]))
    }

    /// Checks every section and builds the [`Config`] whose [`Config::source`] is `source`, or reports every
    /// problem found.
    pub(super) fn validate(self, source: &str) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let clusters = check_clusters(&mut problems, &self.clusters);
        let mut addresses = Vec::new();
        let listeners = check_listeners(&mut problems, &self.listeners, &clusters, &mut addresses);
        let admin = self
            .admin
            .as_ref()
            .and_then(|a| check_admin(&mut problems, a, &mut addresses));
        let handoff = check_handoff(&mut problems, &self.handoff);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        Ok(Config {
            listeners,
            clusters,
            admin,
            handoff,
            source: source.to_string(),
        })
    }
}

/// A config error not yet tied to a file.
fn invalid(problems: Vec<String>) -> ConfigError {
    ConfigError {
        source: None,
        inherited: false,
        problems,
    }
}

/// yaml_serde says `listeners[0]: unknown field ...` with the path first; keep it, and the line when known.
fn yaml_problem(e: &yaml_serde::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if !msg.contains("line ") => format!("{msg} (line {})", loc.line()),
        _ => msg,
    }
}

/// `clusters`: unique names, at least one endpoint, endpoints and timeouts that parse. A cluster with problems is
/// still returned, so that the listeners that name it are not reported as well.
fn check_clusters(problems: &mut Vec<String>, raw: &[RawCluster]) -> Vec<ClusterConfig> {
    let mut clusters = Vec::new();
    let mut names = HashSet::new();
    for (i, c) in raw.iter().enumerate() {
        let at = format!("clusters[{i}]");
        check_name(problems, &at, &c.name, &mut names, "cluster");
        if c.endpoints.is_empty() {
            problems.push(format!("{at}.endpoints: at least one endpoint is required"));
        }
        let endpoints = c
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(j, e)| address(problems, &format!("{at}.endpoints[{j}]"), e))
            .collect();
        let connect_timeout = duration_or(
            problems,
            &format!("{at}.connect_timeout"),
            &c.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let request_timeout = duration_or(
            problems,
            &format!("{at}.request_timeout"),
            &c.request_timeout,
            Duration::from_secs(30),
        );
        let pool_idle_timeout = duration_or(
            problems,
            &format!("{at}.pool_idle_timeout"),
            &c.pool_idle_timeout,
            DEFAULT_POOL_IDLE_TIMEOUT,
        );
        if pool_idle_timeout > MAX_POOL_IDLE_TIMEOUT {
            problems.push(format!(
                "{at}.pool_idle_timeout: {:?} is longer than 1h, the most allowed (upstreams close idle connections \
                 long before; 0s keeps none)",
                c.pool_idle_timeout.as_deref().unwrap_or_default()
            ));
        }
        let protocol = match c.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2c") => UpstreamProtocol::H2c,
            Some(other) => {
                problems.push(format!("{at}.protocol: {other:?} is not one of \"http1\", \"h2c\""));
                UpstreamProtocol::Http1
            }
        };
        clusters.push(ClusterConfig {
            name: c.name.clone(),
            endpoints,
            connect_timeout,
            request_timeout,
            pool_idle_timeout,
            protocol,
        });
    }
    clusters
}

/// Addresses taken so far by listeners and admin, each with the path of the field that took it.
type Taken = Vec<(SocketAddr, String)>;

/// `listeners`: unique names, unique addresses that parse, a known protocol, a cluster that exists (an index into
/// `clusters`).
fn check_listeners(
    problems: &mut Vec<String>,
    raw: &[RawListener],
    clusters: &[ClusterConfig],
    addresses: &mut Taken,
) -> Vec<ListenerConfig> {
    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    for (i, l) in raw.iter().enumerate() {
        let at = format!("listeners[{i}]");
        check_name(problems, &at, &l.name, &mut names, "listener");
        let addr = address(problems, &format!("{at}.address"), &l.address);
        if let Some(a) = addr {
            unique_address(problems, addresses, a, &format!("{at}.address"));
        }
        let protocol = match l.protocol.as_str() {
            "http" => Some(Protocol::Http),
            "tcp" => Some(Protocol::Tcp),
            other => {
                problems.push(format!("{at}.protocol: {other:?} is not one of \"http\", \"tcp\""));
                None
            }
        };
        let cluster = clusters.iter().position(|c| c.name == l.cluster);
        if cluster.is_none() {
            problems.push(format!("{at}.cluster: no cluster named {:?}", l.cluster));
        }
        if let (Some(address), Some(protocol), Some(cluster)) = (addr, protocol, cluster) {
            listeners.push(ListenerConfig {
                name: l.name.clone(),
                address,
                protocol,
                cluster,
            });
        }
    }
    listeners
}

/// `admin`: an address that parses and that no listener uses.
fn check_admin(problems: &mut Vec<String>, raw: &RawAdmin, addresses: &mut Taken) -> Option<AdminConfig> {
    let addr = address(problems, "admin.address", &raw.address)?;
    unique_address(problems, addresses, addr, "admin.address");
    Some(AdminConfig { address: addr })
}

/// The longest `handoff.probation`.
const MAX_PROBATION: Duration = Duration::from_secs(60);

/// `handoff`: every field defaulted; durations that parse, a non-empty uds dir, a timeout above zero, a boolean
/// `inherit_config`.
fn check_handoff(problems: &mut Vec<String>, h: &RawHandoff) -> HandoffConfig {
    let defaults = HandoffConfig::default();
    let handoff = HandoffConfig {
        uds_dir: h.uds_dir.clone().unwrap_or(defaults.uds_dir),
        timeout: duration_or(problems, "handoff.timeout", &h.timeout, defaults.timeout),
        drain_timeout: duration_or(
            problems,
            "handoff.drain_timeout",
            &h.drain_timeout,
            defaults.drain_timeout,
        ),
        probation: duration_or(problems, "handoff.probation", &h.probation, defaults.probation),
        inherit_config: bool_or(
            problems,
            "handoff.inherit_config",
            &h.inherit_config,
            defaults.inherit_config,
        ),
    };
    if handoff.uds_dir.as_os_str().is_empty() {
        problems.push("handoff.uds_dir: must not be empty".into());
    }
    if handoff.timeout.is_zero() {
        problems.push("handoff.timeout: must be greater than 0".into());
    }
    if handoff.probation > MAX_PROBATION {
        problems.push(format!(
            "handoff.probation: {} is longer than {}, the most allowed (the old instance holds the listening \
             sockets that long after a handoff)",
            format_duration(handoff.probation),
            format_duration(MAX_PROBATION)
        ));
    }
    handoff
}

fn check_name(problems: &mut Vec<String>, at: &str, name: &str, seen: &mut HashSet<String>, what: &str) {
    if name.trim().is_empty() {
        problems.push(format!("{at}.name: must not be empty"));
    } else if !seen.insert(name.to_string()) {
        problems.push(format!("{at}.name: duplicate {what} name {name:?}"));
    }
}

fn address(problems: &mut Vec<String>, at: &str, value: &str) -> Option<SocketAddr> {
    match value.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "{at}: {value:?} is not an address of the form ip:port (e.g. 127.0.0.1:8080, [::1]:8080)"
            ));
            None
        }
    }
}

fn unique_address(problems: &mut Vec<String>, seen: &mut Taken, addr: SocketAddr, at: &str) {
    if let Some((_, other)) = seen.iter().find(|(a, _)| *a == addr) {
        problems.push(format!("{at}: {addr} is already used by {other}"));
    } else {
        seen.push((addr, at.to_string()));
    }
}

fn duration_or(problems: &mut Vec<String>, at: &str, value: &Option<String>, default: Duration) -> Duration {
    match value {
        None => default,
        Some(v) => match parse_duration(v) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{at}: {e}"));
                default
            }
        },
    }
}

/// A YAML boolean; absent or `null` is `default`. Only YAML 1.2 booleans count (`true`, `false`): YAML 1.1
/// spellings such as `yes` or `off`, and strings such as `"true"`, are problems.
fn bool_or(problems: &mut Vec<String>, at: &str, value: &Option<yaml_serde::Value>, default: bool) -> bool {
    match value {
        None => default,
        Some(yaml_serde::Value::Bool(b)) => *b,
        Some(other) => {
            problems.push(format!("{at}: {} is not a boolean (true or false)", yaml_value(other)));
            default
        }
    }
}

/// A YAML value as it would be written in the file, on one line and cut short, for error messages.
fn yaml_value(v: &yaml_serde::Value) -> String {
    let text = match v {
        yaml_serde::Value::String(s) => format!("{s:?}"),
        other => yaml_serde::to_string(other)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    };
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}
