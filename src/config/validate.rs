//! From the text to a [`Config`]: serde structs that mirror the file, then checks that collect every problem, each
//! starting with the path of its field, instead of stopping at the first.
//!
//! Unknown fields are problems like the others: the text is first read as a YAML value tree, every field the
//! structs do not know is reported with its path and taken out, and what is left goes on to the structs and the
//! checks. A YAML syntax or type error is the one exception: the parser cannot go on past it, so it is reported
//! alone (with the unknown fields, if any). Otherwise problems come in this order: unknown fields, clusters
//! (listeners name them), listeners, admin (its address must differ from the listeners'), handoff.

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

/// `clusters[].stream_idle_timeout` when absent: Envoy's default for the same timeout. A stream that sends
/// something (an event, a heartbeat) more often than this is never cut.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest `clusters[].stream_idle_timeout` accepted (`0s` turns it off, for streams silent for longer).
const MAX_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

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
    stream_idle_timeout: Option<String>,
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
    /// Parses YAML or JSON text; blank text is an empty config. Unknown fields do not stop it: each is a problem
    /// in the list returned with the config, which [`RawConfig::validate`] reports with the others.
    pub(super) fn from_yaml(text: &str) -> Result<(RawConfig, Vec<String>), ConfigError> {
        if text.trim().is_empty() {
            return Ok((RawConfig::default(), Vec::new()));
        }
        let mut tree: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| invalid(vec![yaml_problem(&e)]))?;
        let mut unknown = Vec::new();
        strip_unknown_fields(&mut tree, &mut unknown);
        let parsed = if unknown.is_empty() {
            // From the text: a type error then says on which line it is.
            yaml_serde::from_str(text).map_err(|e| yaml_problem(&e))
        } else {
            // From the tree written out again, read as text is: a plain scalar is a string where a string is
            // wanted (`timeout: 10` is the string "10", and its problem is that it has no unit). Its lines are not
            // the file's: a type error goes without one.
            yaml_serde::to_string(&tree)
                .and_then(|again| yaml_serde::from_str(&again))
                .map_err(|e| without_location(&e.to_string()).to_string())
        };
        match parsed {
            Ok(raw) => Ok((raw, unknown)),
            Err(problem) => {
                unknown.push(problem);
                Err(invalid(unknown))
            }
        }
    }

    /// Checks every section and builds the [`Config`] whose [`Config::source`] is `source`, or reports every
    /// problem found, after `problems` (the unknown fields [`RawConfig::from_yaml`] found).
    pub(super) fn validate(self, source: &str, mut problems: Vec<String>) -> Result<Config, ConfigError> {
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

/// Takes every field the structs do not know out of `tree`, each reported in `problems` the way serde words it,
/// after the path of the mapping it is in: ``listeners[0]: unknown field `colour`, expected one of `name`, ...``.
/// A section of the wrong type is left as it is, for serde to report.
fn strip_unknown_fields(tree: &mut yaml_serde::Value, problems: &mut Vec<String>) {
    let Some(root) = strip_mapping(tree, "", fields_of::<RawConfig>(), problems) else {
        return;
    };
    for (section, fields) in [
        ("listeners", fields_of::<RawListener>()),
        ("clusters", fields_of::<RawCluster>()),
    ] {
        if let Some(yaml_serde::Value::Sequence(items)) = root.get_mut(section) {
            for (i, item) in items.iter_mut().enumerate() {
                strip_mapping(item, &format!("{section}[{i}]"), fields, problems);
            }
        }
    }
    for (section, fields) in [
        ("admin", fields_of::<RawAdmin>()),
        ("handoff", fields_of::<RawHandoff>()),
    ] {
        if let Some(value) = root.get_mut(section) {
            strip_mapping(value, section, fields, problems);
        }
    }
}

/// Takes the keys that are not `fields` out of `value` if it is a mapping (which it returns), each reported as a
/// problem at `at` (the root when empty). Keys that are not strings are left for serde to report.
fn strip_mapping<'a>(
    value: &'a mut yaml_serde::Value,
    at: &str,
    fields: &'static [&'static str],
    problems: &mut Vec<String>,
) -> Option<&'a mut yaml_serde::Mapping> {
    let yaml_serde::Value::Mapping(map) = value else {
        return None;
    };
    map.retain(|key, _| {
        let Some(key) = key.as_str() else { return true };
        if fields.contains(&key) {
            return true;
        }
        let what = <serde::de::value::Error as serde::de::Error>::unknown_field(key, fields);
        problems.push(if at.is_empty() {
            what.to_string()
        } else {
            format!("{at}: {what}")
        });
        false
    });
    Some(map)
}

/// The fields of a struct that derives `Deserialize`, as its derive names them (what `deny_unknown_fields`
/// accepts), asked of the derive itself so that this list is never written twice.
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    let mut probe = FieldsProbe(&[]);
    let _ = T::deserialize(&mut probe);
    probe.0
}

/// A deserializer that only records the field names a struct asks it for, and fails.
struct FieldsProbe(&'static [&'static str]);

impl<'de> serde::Deserializer<'de> for &mut FieldsProbe {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("only structs are probed"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(serde::de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// A yaml_serde message without the ` at line L column C` it ends with, if it does.
fn without_location(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i)
            if msg[i + " at line ".len()..]
                .split(" column ")
                .map(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .eq([true, true]) =>
        {
            &msg[..i]
        }
        _ => msg,
    }
}

/// yaml_serde says `listeners[0]: invalid type ...` with the path first; keep it, and the line when known.
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
        let stream_idle_timeout = duration_or(
            problems,
            &format!("{at}.stream_idle_timeout"),
            &c.stream_idle_timeout,
            DEFAULT_STREAM_IDLE_TIMEOUT,
        );
        if stream_idle_timeout > MAX_STREAM_IDLE_TIMEOUT {
            problems.push(format!(
                "{at}.stream_idle_timeout: {:?} is longer than 1h, the most allowed (0s turns it off)",
                c.stream_idle_timeout.as_deref().unwrap_or_default()
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
            stream_idle_timeout,
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
