//! [`Config`]: the baton config (docs/CONTRACT.md) built in code and written as YAML or JSON into a
//! [`TestDir`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::dir::TestDir;

#[derive(Clone, Debug)]
pub struct ListenerCfg {
    pub name: String,
    pub address: String,
    pub protocol: String,
    pub cluster: String,
}

#[derive(Clone, Debug)]
pub struct ClusterCfg {
    pub name: String,
    pub endpoints: Vec<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    /// `stream_idle_timeout`; omitted from the file when `None` (the default).
    pub stream_idle_timeout: Option<String>,
    /// `http1` or `h2c`; omitted from the file when `None` (http1).
    pub protocol: Option<String>,
}

/// The baton config (docs/CONTRACT.md), written as YAML.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub listeners: Vec<ListenerCfg>,
    pub clusters: Vec<ClusterCfg>,
    pub admin: Option<String>,
    pub uds_dir: Option<PathBuf>,
    pub handoff_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    /// `handoff.inherit_config`; omitted from the file when `None`.
    pub inherit_config: Option<bool>,
    /// `handoff.probation`; omitted from the file when `None`.
    pub probation: Option<String>,
}

impl Config {
    pub fn listener(mut self, name: &str, address: impl ToString, protocol: &str, cluster: &str) -> Self {
        self.listeners.push(ListenerCfg {
            name: name.into(),
            address: address.to_string(),
            protocol: protocol.into(),
            cluster: cluster.into(),
        });
        self
    }

    pub fn cluster(mut self, name: &str, endpoints: &[SocketAddr]) -> Self {
        self.clusters.push(ClusterCfg {
            name: name.into(),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            connect_timeout: Some("1s".into()),
            request_timeout: Some("5s".into()),
            stream_idle_timeout: None,
            protocol: None,
        });
        self
    }

    /// The last cluster added speaks `protocol` (`http1` or `h2c`) and gives up on a response head after
    /// `request_timeout`.
    pub fn upstream(mut self, protocol: &str, request_timeout: &str) -> Self {
        if let Some(c) = self.clusters.last_mut() {
            c.protocol = Some(protocol.into());
            c.request_timeout = Some(request_timeout.into());
        }
        self
    }

    /// The last cluster added ends an exchange that moves no byte for `timeout` (`0s`: never).
    pub fn stream_idle_timeout(mut self, timeout: &str) -> Self {
        if let Some(c) = self.clusters.last_mut() {
            c.stream_idle_timeout = Some(timeout.into());
        }
        self
    }

    pub fn admin(mut self, address: SocketAddr) -> Self {
        self.admin = Some(address.to_string());
        self
    }

    pub fn uds_dir(mut self, dir: &Path) -> Self {
        self.uds_dir = Some(dir.to_path_buf());
        self
    }

    pub fn handoff(mut self, timeout: &str, drain_timeout: &str) -> Self {
        self.handoff_timeout = Some(timeout.into());
        self.drain_timeout = Some(drain_timeout.into());
        self
    }

    /// Writes `probation: <d>` under `handoff:` (how long an old instance watches its successor after a commit).
    pub fn probation(mut self, d: &str) -> Self {
        self.probation = Some(d.into());
        self
    }

    /// Writes `inherit_config: <on>` under `handoff:` (a new instance serving its predecessor's config).
    pub fn inherit_config(mut self, on: bool) -> Self {
        self.inherit_config = Some(on);
        self
    }

    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        y.push_str("listeners:\n");
        for l in &self.listeners {
            y.push_str(&format!("  - name: {}\n", l.name));
            y.push_str(&format!("    address: \"{}\"\n", l.address));
            y.push_str(&format!("    protocol: {}\n", l.protocol));
            y.push_str(&format!("    cluster: {}\n", l.cluster));
        }
        y.push_str("clusters:\n");
        for c in &self.clusters {
            y.push_str(&format!("  - name: {}\n", c.name));
            let eps: Vec<String> = c.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
            y.push_str(&format!("    endpoints: [{}]\n", eps.join(", ")));
            if let Some(t) = &c.connect_timeout {
                y.push_str(&format!("    connect_timeout: {t}\n"));
            }
            if let Some(t) = &c.request_timeout {
                y.push_str(&format!("    request_timeout: {t}\n"));
            }
            if let Some(t) = &c.stream_idle_timeout {
                y.push_str(&format!("    stream_idle_timeout: {t}\n"));
            }
            if let Some(p) = &c.protocol {
                y.push_str(&format!("    protocol: {p}\n"));
            }
        }
        if let Some(a) = &self.admin {
            y.push_str(&format!("admin:\n  address: \"{a}\"\n"));
        }
        if self.uds_dir.is_some()
            || self.handoff_timeout.is_some()
            || self.drain_timeout.is_some()
            || self.inherit_config.is_some()
            || self.probation.is_some()
        {
            y.push_str("handoff:\n");
            if let Some(d) = &self.uds_dir {
                y.push_str(&format!("  uds_dir: \"{}\"\n", d.display()));
            }
            if let Some(t) = &self.handoff_timeout {
                y.push_str(&format!("  timeout: {t}\n"));
            }
            if let Some(t) = &self.drain_timeout {
                y.push_str(&format!("  drain_timeout: {t}\n"));
            }
            if let Some(on) = self.inherit_config {
                y.push_str(&format!("  inherit_config: {on}\n"));
            }
            if let Some(p) = &self.probation {
                y.push_str(&format!("  probation: {p}\n"));
            }
        }
        y
    }

    pub fn to_json(&self) -> String {
        let listeners: Vec<serde_json::Value> = self
            .listeners
            .iter()
            .map(|l| {
                serde_json::json!({"name": l.name, "address": l.address, "protocol": l.protocol, "cluster": l.cluster})
            })
            .collect();
        let clusters: Vec<serde_json::Value> = self
            .clusters
            .iter()
            .map(|c| {
                let mut v = serde_json::json!({"name": c.name, "endpoints": c.endpoints});
                if let Some(t) = &c.connect_timeout {
                    v["connect_timeout"] = t.clone().into();
                }
                if let Some(t) = &c.request_timeout {
                    v["request_timeout"] = t.clone().into();
                }
                if let Some(t) = &c.stream_idle_timeout {
                    v["stream_idle_timeout"] = t.clone().into();
                }
                if let Some(p) = &c.protocol {
                    v["protocol"] = p.clone().into();
                }
                v
            })
            .collect();
        let mut v = serde_json::json!({"listeners": listeners, "clusters": clusters});
        if let Some(a) = &self.admin {
            v["admin"] = serde_json::json!({ "address": a });
        }
        let mut h = serde_json::Map::new();
        if let Some(d) = &self.uds_dir {
            h.insert("uds_dir".into(), d.display().to_string().into());
        }
        if let Some(t) = &self.handoff_timeout {
            h.insert("timeout".into(), t.clone().into());
        }
        if let Some(t) = &self.drain_timeout {
            h.insert("drain_timeout".into(), t.clone().into());
        }
        if let Some(on) = self.inherit_config {
            h.insert("inherit_config".into(), on.into());
        }
        if let Some(p) = &self.probation {
            h.insert("probation".into(), p.clone().into());
        }
        if !h.is_empty() {
            v["handoff"] = serde_json::Value::Object(h);
        }
        serde_json::to_string_pretty(&v).expect("serialize json config")
    }

    pub fn write_yaml(&self, dir: &TestDir, name: &str) -> PathBuf {
        dir.write(name, &self.to_yaml())
    }

    pub fn write_json(&self, dir: &TestDir, name: &str) -> PathBuf {
        dir.write(name, &self.to_json())
    }
}
