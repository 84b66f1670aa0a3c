//! The configuration file: YAML (JSON syntax parses too), checked all at once so that every error is reported
//! with the path of the field it concerns.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod duration;
mod validate;

pub use duration::{format_duration, parse_duration};
use validate::RawConfig;

/// Default uds dir: where both sidecar slots mount their shared volume.
pub const DEFAULT_UDS_DIR: &str = "/var/run/baton";

/// A validated configuration.
///
/// Two configs are equal when their effective settings are: [`Config::source`] (the text, with its comments and
/// layout) is not compared.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Upstream clusters, in file order.
    pub clusters: Vec<ClusterConfig>,
    /// The admin listener (`/live`, `/ready`, `/status`), if any.
    pub admin: Option<AdminConfig>,
    /// Hot-upgrade settings.
    pub handoff: HandoffConfig,
    /// The text this config was parsed from (see [`Config::source`]).
    source: String,
}

impl PartialEq for Config {
    fn eq(&self, other: &Config) -> bool {
        self.listeners == other.listeners
            && self.clusters == other.clusters
            && self.admin == other.admin
            && self.handoff == other.handoff
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and h2c (prior knowledge) on one port, proxied per request.
    Http,
    /// A byte relay.
    Tcp,
}

impl Protocol {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A proxy listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name; tags the socket in a handoff.
    pub name: String,
    /// Local address.
    pub address: SocketAddr,
    /// What it speaks.
    pub protocol: Protocol,
    /// Index into [`Config::clusters`].
    pub cluster: usize,
}

/// An upstream cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Unique name.
    pub name: String,
    /// Endpoints, used round robin.
    pub endpoints: Vec<SocketAddr>,
    /// Time allowed to open a connection to an endpoint (then 502).
    pub connect_timeout: Duration,
    /// HTTP only: time allowed for the upstream's response headers (then 504).
    pub request_timeout: Duration,
    /// HTTP/1 only: how long an idle pooled upstream connection is kept (`0`: none is kept).
    pub pool_idle_timeout: Duration,
    /// HTTP only: once the request head was read, how long an exchange (or an upgraded connection) may move no
    /// byte either way before it is ended (`0`: never).
    pub stream_idle_timeout: Duration,
    /// HTTP only: what the endpoints speak. TCP listeners relay bytes whatever it says.
    pub protocol: UpstreamProtocol,
}

/// What a cluster's endpoints speak to an `http` listener's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, one exchange at a time per pooled connection.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (cleartext), requests multiplexed on a few connections per endpoint: gRPC.
    H2c,
}

impl UpstreamProtocol {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Local address.
    pub address: SocketAddr,
}

/// Hot-upgrade settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffConfig {
    /// Directory shared by both sidecar slots.
    pub uds_dir: PathBuf,
    /// The whole handoff, both sides.
    pub timeout: Duration,
    /// How long an old instance drains before closing what is left; keep below terminationGracePeriodSeconds.
    pub drain_timeout: Duration,
    /// After a committed handoff, how long the old instance keeps its copies of the listening sockets (not
    /// accepting) and watches the successor, and at least until its live connections are handed over: if the
    /// successor dies meanwhile, the old instance accepts and serves again. `0s`: only until the connections are
    /// handed over.
    pub probation: Duration,
    /// A takeover serves its predecessor's effective listeners, clusters and admin instead of its own file's
    /// (see [`Config::inherit`]); this section still comes from its own file.
    pub inherit_config: bool,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            uds_dir: PathBuf::from(DEFAULT_UDS_DIR),
            timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            probation: Duration::from_secs(2),
            inherit_config: false,
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when read from one.
    pub source: Option<PathBuf>,
    /// True when the problems are in the config inherited from the previous instance ([`Config::inherit`]).
    pub inherited: bool,
    /// One entry per problem, each starting with the field path.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            _ if self.inherited => write!(
                f,
                "invalid config inherited from the previous instance (handoff.inherit_config):"
            )?,
            Some(p) => write!(f, "invalid config {}:", p.display())?,
            None => write!(f, "invalid config:")?,
        }
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a file. [`Config::source`] is then the file's contents.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: Some(path.to_path_buf()),
            inherited: false,
            problems: vec![format!("cannot read: {e}")],
        })?;
        Config::parse(&text).map_err(|mut e| {
            e.source = Some(path.to_path_buf());
            e
        })
    }

    /// Parses and validates YAML or JSON text. [`Config::source`] is then `text`.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let (raw, unknown_fields) = RawConfig::from_yaml(text)?;
        raw.validate(text, unknown_fields)
    }

    /// The text this config was parsed from: the file's contents for [`Config::load`], the text for
    /// [`Config::parse`], the inherited text for [`Config::inherit`]. A successor that inherits this instance's
    /// config receives this text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The effective config of a new instance that inherits its predecessor's (`handoff.inherit_config`):
    /// `old_source` is the predecessor's [`Config::source`], parsed and validated like a file. Listeners, clusters
    /// and admin come from it; the `handoff` section from `self`, since the new instance's own file governs its
    /// upgrade mechanics (uds dir, timeouts, whether to inherit). The result's [`Config::source`] is `old_source`,
    /// so that the next successor can inherit it in turn.
    ///
    /// An `old_source` that does not parse or validate is an error whose [`ConfigError::inherited`] is set (its
    /// message names the inherited config).
    pub fn inherit(&self, old_source: &str) -> Result<Config, ConfigError> {
        let old = Config::parse(old_source).map_err(|mut e| {
            e.inherited = true;
            e
        })?;
        Ok(Config {
            listeners: old.listeners,
            clusters: old.clusters,
            admin: old.admin,
            handoff: self.handoff.clone(),
            source: old.source,
        })
    }

    /// A one-screen summary, for `baton check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("listeners ({}):\n", self.listeners.len()));
        for l in &self.listeners {
            let c = &self.clusters[l.cluster];
            out.push_str(&format!(
                "  {:<16} {:<6} {:<24} -> {}\n",
                l.name, l.protocol, l.address, c.name
            ));
        }
        out.push_str(&format!("clusters ({}):\n", self.clusters.len()));
        for c in &self.clusters {
            let eps: Vec<String> = c.endpoints.iter().map(|e| e.to_string()).collect();
            out.push_str(&format!(
                "  {:<16} [{}] protocol={} connect_timeout={} request_timeout={} pool_idle_timeout={} \
                 stream_idle_timeout={}\n",
                c.name,
                eps.join(", "),
                c.protocol,
                format_duration(c.connect_timeout),
                format_duration(c.request_timeout),
                format_duration(c.pool_idle_timeout),
                format_duration(c.stream_idle_timeout)
            ));
        }
        match &self.admin {
            Some(a) => out.push_str(&format!("admin: {}\n", a.address)),
            None => out.push_str("admin: none\n"),
        }
        out.push_str(&format!(
            "handoff: uds_dir={} timeout={} drain_timeout={} probation={} inherit_config={}\n",
            self.handoff.uds_dir.display(),
            format_duration(self.handoff.timeout),
            format_duration(self.handoff.drain_timeout),
            format_duration(self.handoff.probation),
            self.handoff.inherit_config
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listeners:
  - name: ingress
    address: 127.0.0.1:15006
    protocol: http
    cluster: app
  - name: db
    address: "[::1]:15432"
    protocol: tcp
    cluster: app
clusters:
  - name: app
    endpoints: ["127.0.0.1:8080", "127.0.0.1:8081"]
    connect_timeout: 500ms
admin:
  address: 127.0.0.1:15000
handoff:
  uds_dir: /tmp/x
  timeout: 2m
  drain_timeout: 1m30s
"#;

    fn problems(text: &str) -> Vec<String> {
        Config::parse(text).expect_err("should be invalid").problems
    }

    #[test]
    fn full_config() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[1].protocol, Protocol::Tcp);
        assert_eq!(c.listeners[1].address, "[::1]:15432".parse().expect("addr"));
        assert_eq!(c.clusters[0].connect_timeout, Duration::from_millis(500));
        assert_eq!(c.clusters[0].request_timeout, Duration::from_secs(30));
        assert_eq!(c.handoff.timeout, Duration::from_secs(120));
        assert_eq!(c.handoff.drain_timeout, Duration::from_secs(90));
        assert!(c.summary().contains("ingress"));
    }

    #[test]
    fn json_parses_and_defaults_apply() {
        let c = Config::parse(
            r#"{"listeners":[{"name":"a","address":"127.0.0.1:1","cluster":"c"}],
                "clusters":[{"name":"c","endpoints":["127.0.0.1:2"]}]}"#,
        )
        .expect("valid json");
        assert_eq!(c.listeners[0].protocol, Protocol::Http);
        assert_eq!(c.handoff, HandoffConfig::default());
        assert!(c.admin.is_none());
    }

    #[test]
    fn cluster_timeouts_default_and_are_checked() {
        let c = Config::parse("clusters:\n  - {name: a, endpoints: [\"127.0.0.1:9\"]}\n").expect("valid");
        assert_eq!(
            c.clusters[0].connect_timeout,
            Duration::from_secs(3),
            "above the 1 s SYN retransmit"
        );
        assert_eq!(c.clusters[0].pool_idle_timeout, Duration::from_secs(50));
        assert_eq!(c.clusters[0].stream_idle_timeout, Duration::from_secs(300));
        assert!(
            c.summary()
                .contains("connect_timeout=3s request_timeout=30s pool_idle_timeout=50s stream_idle_timeout=5m"),
            "{}",
            c.summary()
        );
        let c = Config::parse("clusters:\n  - {name: a, endpoints: [\"127.0.0.1:9\"], pool_idle_timeout: 0s}\n")
            .expect("0s keeps no idle connection");
        assert_eq!(c.clusters[0].pool_idle_timeout, Duration::ZERO);
        let p = problems(
            "clusters:\n  - {name: a, endpoints: [\"127.0.0.1:9\"], pool_idle_timeout: 50}\n  \
             - {name: b, endpoints: [\"127.0.0.1:9\"], pool_idle_timeout: 2h}\n",
        );
        assert_eq!(
            p,
            [
                "clusters[0].pool_idle_timeout: \"50\" is not a duration (use e.g. 500ms, 30s, 2m, 1h)",
                "clusters[1].pool_idle_timeout: \"2h\" is longer than 1h, the most allowed (upstreams close idle \
                 connections long before; 0s keeps none)",
            ],
            "{p:#?}"
        );
    }

    #[test]
    fn stream_idle_timeout_is_a_duration_of_at_most_an_hour_and_0s_turns_it_off() {
        let c = Config::parse(
            "clusters:\n  - {name: a, endpoints: [\"127.0.0.1:9\"], stream_idle_timeout: 500ms}\n  \
             - {name: b, endpoints: [\"127.0.0.1:9\"], stream_idle_timeout: 0s}\n",
        )
        .expect("valid");
        assert_eq!(c.clusters[0].stream_idle_timeout, Duration::from_millis(500));
        assert_eq!(c.clusters[1].stream_idle_timeout, Duration::ZERO);
        assert!(c.summary().contains("stream_idle_timeout=500ms"), "{}", c.summary());
        assert!(c.summary().contains("stream_idle_timeout=0s"), "{}", c.summary());
        let p = problems(
            "clusters:\n  - {name: a, endpoints: [\"127.0.0.1:9\"], stream_idle_timeout: 5}\n  \
             - {name: b, endpoints: [\"127.0.0.1:9\"], stream_idle_timeout: 61m}\n",
        );
        assert_eq!(
            p,
            [
                "clusters[0].stream_idle_timeout: \"5\" is not a duration (use e.g. 500ms, 30s, 2m, 1h)",
                "clusters[1].stream_idle_timeout: \"61m\" is longer than 1h, the most allowed (0s turns it off)",
            ],
            "{p:#?}"
        );
    }

    #[test]
    fn unknown_field_names_its_path() {
        let p = problems("listeners:\n  - name: a\n    address: 127.0.0.1:1\n    cluster: c\n    colour: red\n");
        assert!(p[0].contains("listeners[0]") && p[0].contains("colour"), "{p:?}");
        let p = problems("handoff:\n  timeout: 1s\n  grace: 2s\n");
        assert!(p[0].contains("handoff") && p[0].contains("grace"), "{p:?}");
    }

    #[test]
    fn every_semantic_error_at_once() {
        let p = problems(
            r#"
listeners:
  - {name: a, address: "localhost", cluster: app}
  - {name: a, address: "127.0.0.1:1", cluster: nope, protocol: udp}
  - {name: b, address: "127.0.0.1:1", cluster: app}
clusters:
  - {name: app, endpoints: [], connect_timeout: 3 parsecs}
admin: {address: "127.0.0.1:1"}
handoff: {timeout: 10, drain_timeout: 1x}
"#,
        );
        let want = [
            "listeners[0].address",
            "listeners[1].name: duplicate listener name",
            "listeners[1].cluster: no cluster named \"nope\"",
            "listeners[1].protocol",
            "listeners[2].address: 127.0.0.1:1 is already used by listeners[1].address",
            "admin.address: 127.0.0.1:1 is already used",
            "clusters[0].endpoints: at least one",
            "clusters[0].connect_timeout: \"3 parsecs\" is not a duration",
            "handoff.timeout: \"10\" is not a duration",
            "handoff.drain_timeout",
        ];
        for w in want {
            assert!(p.iter().any(|x| x.contains(w)), "missing {w:?} in {p:#?}");
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
    }

    /// Unknown fields, at any depth and in any number, are reported with the other problems, not instead of them.
    #[test]
    fn unknown_fields_hide_no_other_problem() {
        let p = problems(
            r#"
listeners:
  - {name: a, address: "127.0.0.1:1", cluster: nope, colour: red}
clusters:
  - {name: app, endpoints: ["127.0.0.1:2"], connect_timeout: 3 parsecs, retries: 3}
admin: {address: "127.0.0.1:1", port: 9}
tracing: on
handoff: {timeout: 10, grace: 2s}
"#,
        );
        let want = [
            "listeners[0]: unknown field `colour`, expected one of `name`, `address`, `protocol`, `cluster`",
            "clusters[0]: unknown field `retries`, expected one of `name`, `endpoints`, `connect_timeout`, \
             `request_timeout`, `pool_idle_timeout`, `stream_idle_timeout`, `protocol`",
            "admin: unknown field `port`, expected `address`",
            "unknown field `tracing`, expected one of `listeners`, `clusters`, `admin`, `handoff`",
            "handoff: unknown field `grace`, expected one of `uds_dir`, `timeout`, `drain_timeout`, `probation`, \
             `inherit_config`",
            "clusters[0].connect_timeout: \"3 parsecs\" is not a duration (use e.g. 500ms, 30s, 2m, 1h)",
            "listeners[0].cluster: no cluster named \"nope\"",
            "admin.address: 127.0.0.1:1 is already used by listeners[0].address",
            "handoff.timeout: \"10\" is not a duration (use e.g. 500ms, 30s, 2m, 1h)",
        ];
        let mut sorted = p.clone();
        sorted.sort();
        let mut want_sorted = want.map(String::from).to_vec();
        want_sorted.sort();
        assert_eq!(sorted, want_sorted, "{p:#?}");
        // A type error still stops the parser, but not before the unknown fields are named.
        let p = problems("listeners: 5\ncolour: red\n");
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].starts_with("unknown field `colour`"), "{p:#?}");
        assert!(p[1].contains("listeners") && p[1].contains("invalid type"), "{p:#?}");
        // Without unknown fields a type error keeps its line.
        let p = problems("handoff: {timeout: 1s}\nlisteners: 5\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("line 2"), "{p:#?}");
    }

    #[test]
    fn inherit_config_is_a_checked_bool_off_by_default() {
        let c = Config::parse(GOOD).expect("valid");
        assert!(!c.handoff.inherit_config);
        assert!(c.summary().contains("inherit_config=false"), "{}", c.summary());
        assert!(!Config::parse("").expect("valid").handoff.inherit_config);
        assert!(
            !Config::parse("handoff: {inherit_config: null}")
                .expect("null is unset")
                .handoff
                .inherit_config
        );
        let on = Config::parse("handoff:\n  inherit_config: true\n").expect("valid");
        assert!(on.handoff.inherit_config);
        assert!(on.summary().contains("inherit_config=true"), "{}", on.summary());
        assert!(
            Config::parse(r#"{"handoff": {"inherit_config": true}}"#)
                .expect("json")
                .handoff
                .inherit_config
        );
        for bad in ["yes", "\"true\"", "1", "[true]", "{a: 1}"] {
            let p = problems(&format!("handoff:\n  inherit_config: {bad}\n  timeout: 0s\n"));
            assert_eq!(p.len(), 2, "{bad}: {p:?}");
            assert!(
                p[0].starts_with("handoff.inherit_config: ") && p[0].contains("not a boolean"),
                "{bad}: {p:?}"
            );
            assert!(p[1].starts_with("handoff.timeout"), "{bad}: {p:?}");
        }
        let long = problems(&format!("handoff: {{inherit_config: {}}}", "x".repeat(500)));
        assert!(long[0].len() < 150, "{long:?}");
    }

    #[test]
    fn source_is_the_text_parsed_or_loaded() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.source(), GOOD);
        assert_eq!(Config::parse("").expect("valid").source(), "");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        let text = format!("# a comment\n{GOOD}");
        std::fs::write(&path, &text).expect("write");
        let loaded = Config::load(&path).expect("valid");
        assert_eq!(loaded.source(), text);
        // Equality is about the effective settings, not the text.
        assert_eq!(loaded, c);
        assert_ne!(loaded.source(), c.source());
        let e = Config::load(&dir.path().join("missing.yaml")).expect_err("no file");
        assert!(!e.inherited && e.to_string().contains("missing.yaml"), "{e}");
    }

    /// The new instance's file: other endpoints, another listener, no admin, its own handoff section.
    const NEW: &str = r#"
listeners:
  - {name: ingress, address: "127.0.0.1:25006", cluster: app}
  - {name: extra, address: "127.0.0.1:25007", protocol: tcp, cluster: app}
clusters:
  - {name: app, endpoints: ["10.0.0.1:9090"], request_timeout: 5s}
handoff:
  uds_dir: /tmp/new
  timeout: 10s
  drain_timeout: 3s
  inherit_config: true
"#;

    #[test]
    fn inherit_takes_the_old_traffic_config_and_keeps_its_own_handoff() {
        let new = Config::parse(NEW).expect("valid");
        let old = Config::parse(GOOD).expect("valid");
        let effective = new.inherit(old.source()).expect("the old source is valid");
        assert_eq!(effective.listeners, old.listeners);
        assert_eq!(effective.clusters, old.clusters);
        assert_eq!(
            effective.clusters[0].endpoints,
            vec![
                "127.0.0.1:8080".parse().expect("addr"),
                "127.0.0.1:8081".parse().expect("addr")
            ]
        );
        assert_eq!(effective.admin, old.admin);
        assert_eq!(effective.handoff, new.handoff);
        assert_eq!(effective.handoff.uds_dir, PathBuf::from("/tmp/new"));
        assert_eq!(effective.handoff.timeout, Duration::from_secs(10));
        assert!(effective.handoff.inherit_config);
        assert_eq!(effective.source(), GOOD);
        assert!(
            effective.summary().contains("127.0.0.1:8081"),
            "{}",
            effective.summary()
        );

        // The next successor inherits the same text again: a chain keeps the first instance's traffic config.
        let newer = Config::parse("handoff: {uds_dir: /tmp/newer, inherit_config: true}").expect("valid");
        let again = newer.inherit(effective.source()).expect("valid");
        assert_eq!(again.listeners, old.listeners);
        assert_eq!(again.clusters, old.clusters);
        assert_eq!(again.handoff, newer.handoff);
        assert_eq!(again.source(), GOOD);

        // Inheriting an empty config is valid: no listeners.
        let none = new.inherit("").expect("empty is valid");
        assert!(none.listeners.is_empty() && none.clusters.is_empty() && none.admin.is_none());
        assert_eq!(none.handoff, new.handoff);
    }

    #[test]
    fn inherit_refuses_a_bad_old_source_naming_it() {
        let new = Config::parse(NEW).expect("valid");
        for bad in [
            ":::\n- [",
            "listeners: [{name: a, address: nowhere, cluster: c}]",
            "colour: red",
        ] {
            let e = new.inherit(bad).expect_err(bad);
            assert!(e.inherited, "{bad}: {e:?}");
            assert!(!e.problems.is_empty(), "{bad}");
            let msg = e.to_string();
            assert!(
                msg.starts_with("invalid config inherited from the previous instance"),
                "{msg}"
            );
        }
        let e = new
            .inherit("listeners: [{name: a, address: nowhere, cluster: c}]")
            .expect_err("bad");
        assert!(e.problems.iter().any(|p| p.starts_with("listeners[0].address")), "{e}");
        assert!(e.problems.iter().any(|p| p.starts_with("listeners[0].cluster")), "{e}");
        // A direct parse error is not marked inherited.
        assert!(!Config::parse(":::\n- [").expect_err("bad").inherited);
    }

    #[test]
    fn cluster_protocol_is_http1_or_h2c() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.clusters[0].protocol, UpstreamProtocol::Http1, "the default");
        assert!(c.summary().contains("protocol=http1"), "{}", c.summary());
        let yaml = "clusters:\n  - {name: grpc, endpoints: [\"127.0.0.1:9\"], protocol: h2c}\n";
        let c = Config::parse(yaml).expect("valid");
        assert_eq!(c.clusters[0].protocol, UpstreamProtocol::H2c);
        assert!(c.summary().contains("protocol=h2c"), "{}", c.summary());
        let json = r#"{"clusters": [{"name": "a", "endpoints": ["127.0.0.1:9"], "protocol": "http1"}]}"#;
        assert_eq!(
            Config::parse(json).expect("json").clusters[0].protocol,
            UpstreamProtocol::Http1
        );
        for bad in ["h2", "HTTP1", "grpc", "\"\""] {
            let p = problems(&format!(
                "clusters:\n  - {{name: a, endpoints: [\"127.0.0.1:9\"], protocol: {bad}}}\n"
            ));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(
                p[0].starts_with("clusters[0].protocol: ") && p[0].contains(r#"is not one of "http1", "h2c""#),
                "{bad}: {p:?}"
            );
        }
    }

    #[test]
    fn empty_and_garbage() {
        let c = Config::parse("").expect("empty config is valid: no listeners");
        assert!(c.listeners.is_empty());
        assert!(!problems(":::\n- [").is_empty());
        assert!(!problems("listeners: 5").is_empty());
    }
}
