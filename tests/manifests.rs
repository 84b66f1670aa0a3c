//! The Kubernetes example (`examples/kubernetes/`) checked without a cluster:
//!
//! - the SidecarSet and the CloneSet against the real OpenKruise CRD schemas (`tests/data/kruise-crds/`, master and
//!   v1.8.4), with a small validator of the OpenAPI v3 subset those schemas use (see [`schema`] for what "valid"
//!   means here), and the parts the CRDs leave schemaless (the sidecar container, the SidecarSet volumes, the
//!   CloneSet pod template) against a hand-written subset of core/v1 ([`core_v1`]);
//! - the validator itself against broken copies of the manifests, so that this test can fail;
//! - the baton config embedded in the ConfigMap with `Config::parse` and `baton check`, and its agreement with the
//!   manifests (mount paths, admin port and probe, drain timeout and grace period, selectors, namespaces);
//! - every command, hook and exec probe of the sidecar container against the empty placeholder
//!   (`images/empty`, built here with cargo) and against the real `baton` binary.
//!
//! Everything runs in temp dirs and binds nothing.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use baton::config::{parse_duration, Config};
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The CRD sets the manifests must fit: the one Kruise master ships, and the v1.8.4 release.
const CRD_DIRS: [&str; 2] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kruise-crds/master"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/kruise-crds/v1.8.4"),
];

/// The apiVersion of both Kruise manifests.
const KRUISE_V1ALPHA1: &str = "apps.kruise.io/v1alpha1";

/// `migrate`'s timeout when the hook does not pass `--timeout` (see `baton migrate --help`).
const MIGRATE_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A SidecarSet resourceVersion, as Kruise writes into `SIDECARSET_VERSION[_ALT]`.
const R2: &str = "7340032";

// ---------------------------------------------------------------------------------------------------------------
// loading
// ---------------------------------------------------------------------------------------------------------------

fn example_path(name: &str) -> PathBuf {
    Path::new(ROOT).join("examples/kubernetes").join(name)
}

/// Parses a YAML file that must hold exactly one document.
fn load_yaml(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs: Vec<Value> = yaml_serde::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("parse {}: {e}", path.display())))
        .collect();
    assert_eq!(docs.len(), 1, "{} must hold exactly one YAML document", path.display());
    docs.into_iter().next().unwrap()
}

fn manifest(name: &str) -> Value {
    load_yaml(&example_path(name))
}

/// Walks a path of object keys and array indexes; panics with the path if anything is missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        let next = match key.parse::<usize>() {
            Ok(n) => cur.get(n),
            Err(_) => cur.get(*key),
        };
        cur = next.unwrap_or_else(|| panic!("missing {}", path[..=i].join(".")));
    }
    cur
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

/// `apps.kruise.io/v1alpha1` → (`apps.kruise.io`, `v1alpha1`).
fn group_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// The `openAPIV3Schema` of the version of `kind` that `api_version` names, which must be served.
fn crd_schema(crd_file: &Path, api_version: &str, kind: &str) -> Value {
    assert!(
        crd_file.exists(),
        "{} is missing: the Kruise CRDs are kept in tests/data/kruise-crds",
        crd_file.display()
    );
    let crd = load_yaml(crd_file);
    let (group, version) = group_version(api_version);
    assert_eq!(str_at(&crd, &["kind"]), "CustomResourceDefinition");
    assert_eq!(str_at(&crd, &["spec", "group"]), group, "{}", crd_file.display());
    assert_eq!(str_at(&crd, &["spec", "names", "kind"]), kind, "{}", crd_file.display());
    let versions = at(&crd, &["spec", "versions"]).as_array().expect("spec.versions");
    let v = versions
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("{}: no version {version}", crd_file.display()));
    assert_eq!(
        v["served"],
        true,
        "{}: version {version} is not served",
        crd_file.display()
    );
    at(v, &["schema", "openAPIV3Schema"]).clone()
}

/// Every `(file, schema)` pair a manifest of this kind must satisfy.
fn crd_schemas(file: &str, api_version: &str, kind: &str) -> Vec<(PathBuf, Value)> {
    CRD_DIRS
        .iter()
        .map(|dir| {
            let path = Path::new(dir).join(file);
            let schema = crd_schema(&path, api_version, kind);
            (path, schema)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// the validator (tests/manifests/schema.rs) and the core/v1 subset (tests/manifests/core_v1.rs)
// ---------------------------------------------------------------------------------------------------------------

#[path = "manifests/schema.rs"]
mod schema;

#[path = "manifests/core_v1.rs"]
mod core_v1;

/// Validates a custom resource against its CRD schema, with root `metadata` as ObjectMeta and `apiVersion` and
/// `kind` required to be the ones the CRD version serves.
fn validate_resource(crd: &Value, resource: &Value, api_version: &str, kind: &str) -> Vec<String> {
    let mut schema = crd.clone();
    schema["properties"]["metadata"] = core_v1::object_meta();
    schema["properties"]["apiVersion"]["enum"] = json!([api_version]);
    schema["properties"]["kind"]["enum"] = json!([kind]);
    schema["required"] = json!(["apiVersion", "kind", "metadata"]);
    let mut errors = schema::validate(&schema, resource, "");
    if resource.get("metadata").is_some() && resource.pointer("/metadata/name").and_then(Value::as_str).is_none() {
        errors.push("metadata.name: required field missing".into());
    }
    errors
}

/// The parts of each manifest the CRDs leave schemaless, against [`core_v1`].
fn validate_core_parts(name: &str, resource: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let mut each = |path: &str, schema: &Value| {
        if let Some(items) = resource.pointer(path).and_then(Value::as_array) {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{}[{i}]", path.trim_start_matches('/').replace('/', "."));
                errors.extend(schema::validate(schema, item, &at));
            }
        }
    };
    match name {
        "SidecarSet" => {
            each("/spec/containers", &core_v1::sidecar_container());
            each("/spec/initContainers", &core_v1::sidecar_container());
            each("/spec/volumes", &core_v1::volume());
        }
        "CloneSet" => {
            if let Some(template) = resource.pointer("/spec/template") {
                errors.extend(schema::validate(&core_v1::pod_template(), template, "spec.template"));
            }
        }
        other => panic!("no core/v1 parts known for {other}"),
    }
    errors
}

/// Rules of Kruise's admission webhooks and controller that the CRD schema does not express, and that this
/// example depends on. The CRD types `upgradeType` as a bare string: Kruise hot-upgrades only a container whose
/// `upgradeType` is exactly `HotUpgrade`, so a misspelling would quietly turn the sidecar into a cold-upgraded one.
fn kruise_rules(sidecarset: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let containers = sidecarset.pointer("/spec/containers").and_then(Value::as_array);
    for (i, c) in containers.into_iter().flatten().enumerate() {
        let at = format!("spec.containers[{i}].upgradeStrategy");
        match c.pointer("/upgradeStrategy/upgradeType").and_then(Value::as_str) {
            Some("HotUpgrade") => {}
            other => errors.push(format!("{at}.upgradeType: {other:?}, baton needs \"HotUpgrade\"")),
        }
        match c
            .pointer("/upgradeStrategy/hotUpgradeEmptyImage")
            .and_then(Value::as_str)
        {
            Some(img) if !img.is_empty() => {}
            _ => errors.push(format!("{at}.hotUpgradeEmptyImage: required with HotUpgrade")),
        }
    }
    let name = sidecarset
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        errors.push(format!(
            "metadata.name: {name:?} must be 1-63 characters of [a-zA-Z0-9-]"
        ));
    }
    errors
}

/// Every problem of the SidecarSet against one CRD schema: schema, core/v1 parts, Kruise rules.
fn sidecarset_problems(crd: &Value, s: &Value) -> Vec<String> {
    let mut errors = validate_resource(crd, s, KRUISE_V1ALPHA1, "SidecarSet");
    errors.extend(validate_core_parts("SidecarSet", s));
    errors.extend(kruise_rules(s));
    errors
}

fn cloneset_problems(crd: &Value, c: &Value) -> Vec<String> {
    let mut errors = validate_resource(crd, c, KRUISE_V1ALPHA1, "CloneSet");
    errors.extend(validate_core_parts("CloneSet", c));
    errors
}

fn assert_valid(what: &str, errors: &[String]) {
    assert!(errors.is_empty(), "{what} is invalid:\n  {}", errors.join("\n  "));
}

/// Asserts that `errors` has a problem mentioning every one of `needles`.
fn assert_rejected(what: &str, errors: &[String], needles: &[&str]) {
    assert!(
        errors.iter().any(|e| needles.iter().all(|n| e.contains(n))),
        "{what}: expected a problem mentioning {needles:?}, got {errors:#?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// the manifests, as the test sees them
// ---------------------------------------------------------------------------------------------------------------

struct Example {
    configmap: Value,
    sidecarset: Value,
    cloneset: Value,
}

impl Example {
    fn load() -> Example {
        Example {
            configmap: manifest("configmap.yaml"),
            sidecarset: manifest("sidecarset.yaml"),
            cloneset: manifest("cloneset.yaml"),
        }
    }

    /// The one sidecar container.
    fn proxy(&self) -> &Value {
        let containers = at(&self.sidecarset, &["spec", "containers"])
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "the example has one sidecar container");
        &containers[0]
    }

    /// The SidecarSet volume named `name`.
    fn volume(&self, name: &str) -> &Value {
        at(&self.sidecarset, &["spec", "volumes"])
            .as_array()
            .expect("spec.volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no SidecarSet volume {name}"))
    }

    /// The proxy's mount path of the volume whose source is `source` (`emptyDir`, `configMap`).
    fn mount_of(&self, source: &str) -> (String, &Value) {
        let mounts = at(self.proxy(), &["volumeMounts"]).as_array().expect("volumeMounts");
        let found: Vec<_> = mounts
            .iter()
            .map(|m| (str_at(m, &["mountPath"]).to_string(), self.volume(str_at(m, &["name"]))))
            .filter(|(_, v)| v.get(source).is_some())
            .collect();
        assert_eq!(found.len(), 1, "expected one {source} volume mounted in the proxy");
        found.into_iter().next().unwrap()
    }

    /// The ConfigMap's `data`, by key.
    fn config_files(&self) -> BTreeMap<String, String> {
        at(&self.configmap, &["data"])
            .as_object()
            .expect("data")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("data values are strings").to_string()))
            .collect()
    }

    /// The path of baton's config file in the container, from `--config` of the container command.
    fn config_path(&self) -> String {
        let argv = self.command();
        let i = argv
            .iter()
            .position(|a| a == "--config")
            .expect("--config in the command");
        argv[i + 1].clone()
    }

    fn config_text(&self) -> String {
        let path = self.config_path();
        let (mount, volume) = self.mount_of("configMap");
        let key = path
            .strip_prefix(&format!("{mount}/"))
            .unwrap_or_else(|| panic!("--config {path} is not in the ConfigMap mount {mount}"));
        assert_eq!(
            str_at(volume, &["configMap", "name"]),
            str_at(&self.configmap, &["metadata", "name"]),
            "the mounted ConfigMap is the one in configmap.yaml"
        );
        self.config_files()
            .remove(key)
            .unwrap_or_else(|| panic!("the ConfigMap has no key {key}"))
    }

    fn config(&self) -> Config {
        Config::parse(&self.config_text()).unwrap_or_else(|e| panic!("the ConfigMap's config: {e}"))
    }

    /// The container's command followed by its args: what the process runs with.
    fn command(&self) -> Vec<String> {
        let p = self.proxy();
        let mut argv = strings(p.get("command"));
        argv.extend(strings(p.get("args")));
        assert!(
            !argv.is_empty(),
            "the sidecar must set its command: the two images differ in ENTRYPOINT"
        );
        argv
    }

    /// Every exec hook and exec probe of the proxy container: (where, argv).
    fn execs(&self) -> Vec<(String, Vec<String>)> {
        let p = self.proxy();
        let mut out = Vec::new();
        for hook in ["postStart", "preStop"] {
            if let Some(h) = p.pointer(&format!("/lifecycle/{hook}")) {
                out.push((format!("lifecycle.{hook}"), handler_exec(h, hook)));
            }
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if let Some(argv) = p.pointer(&format!("/{probe}/exec/command")) {
                out.push((probe.to_string(), strings(Some(argv))));
            }
        }
        out
    }

    /// Env of a slot: the image's ENV, then the container's env, then what Kruise injects.
    fn slot_env(&self, containerfile: &str, version: &str, alt: &str) -> Vec<(String, String)> {
        let mut env = containerfile_env(containerfile);
        for e in self.proxy().get("env").and_then(Value::as_array).into_iter().flatten() {
            let value = e
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("env {e}: only plain values are supported here"));
            env.push((str_at(e, &["name"]).to_string(), value.to_string()));
        }
        env.push(("SIDECARSET_VERSION".into(), version.into()));
        env.push(("SIDECARSET_VERSION_ALT".into(), alt.into()));
        env
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .unwrap_or_else(|| panic!("{v} is not a list"))
            .iter()
            .map(|s| s.as_str().unwrap_or_else(|| panic!("{s} is not a string")).to_string())
            .collect(),
    }
}

/// The argv of a lifecycle handler, which must be an exec: an httpGet or tcpSocket hook would be answered by the
/// live slot's process for the empty slot too, and a sleep hook delays every reset. None of those is tested here.
fn handler_exec(h: &Value, hook: &str) -> Vec<String> {
    let argv = strings(h.pointer("/exec/command"));
    assert!(
        !argv.is_empty(),
        "lifecycle.{hook} must be an exec hook with a command: {h}"
    );
    argv
}

fn containerfile(name: &str) -> String {
    let path = Path::new(ROOT).join("images").join(name).join("Containerfile");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `ENV K=V` lines of a Containerfile.
fn containerfile_env(name: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for line in containerfile(name).lines() {
        if let Some(rest) = line.trim().strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("images/{name}/Containerfile: ENV {rest}: only K=V is supported here"));
                env.push((k.to_string(), v.to_string()));
            }
        }
    }
    env
}

/// Destinations of the `COPY` lines and the `USER` of a Containerfile.
fn containerfile_copies_and_user(name: &str) -> (Vec<String>, Option<String>) {
    let text = containerfile(name);
    let copies = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter_map(|rest| rest.split_whitespace().last().map(str::to_string))
        .collect();
    let user = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .map(|u| u.trim().to_string());
    (copies, user)
}

// ---------------------------------------------------------------------------------------------------------------
// processes
// ---------------------------------------------------------------------------------------------------------------

/// A spawned process, killed on drop if still running (so a failed assertion leaves nothing behind).
struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
        Proc {
            child,
            what: what.to_string(),
        }
    }

    fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if t0.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit, then returns (status, stdout, stderr); panics after `timeout`.
    fn finish(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let status = self
            .wait_for(timeout)
            .unwrap_or_else(|| panic!("{}: still running after {timeout:?}", self.what));
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, out, err)
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "{}: kill -TERM failed", self.what);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A command for `argv` run by `binary` (argv[0] kept as the manifest spells it) with exactly `env`.
fn command(binary: &Path, argv: &[String], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg0(&argv[0]).args(&argv[1..]).env_clear();
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs a hook or probe: it must exit 0 within `within`. Returns stdout.
fn expect_exit_0(binary: &Path, argv: &[String], env: &[(String, String)], within: Duration, what: &str) -> String {
    let t0 = Instant::now();
    let (status, out, err) = Proc::spawn(command(binary, argv, env), what).finish(within);
    assert!(
        status.success(),
        "{what}: {argv:?} exited with {status}\nstdout: {out}\nstderr: {err}"
    );
    assert!(t0.elapsed() < within, "{what}: took {:?}", t0.elapsed());
    out
}

/// Runs the container command: it must still be running after 300 ms and exit 0 within 1 s of SIGTERM.
fn expect_idle_until_sigterm(binary: &Path, argv: &[String], env: &[(String, String)], what: &str) {
    let mut p = Proc::spawn(command(binary, argv, env), what);
    if let Some(status) = p.wait_for(Duration::from_millis(300)) {
        let (_, out, err) = p.finish(Duration::ZERO);
        panic!("{what}: {argv:?} exited with {status} instead of idling\nstdout: {out}\nstderr: {err}");
    }
    p.sigterm();
    let t0 = Instant::now();
    let (status, out, err) = p.finish(Duration::from_secs(1));
    assert!(
        status.success(),
        "{what}: exit after SIGTERM: {status}\nstdout: {out}\nstderr: {err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "{what}: SIGTERM → exit took {:?}",
        t0.elapsed()
    );
}

/// Builds the empty placeholder (images/empty, its own workspace) once; returns the binary.
///
/// In release, the profile the image is built with: a dev build of this `no_std` binary does not link
/// (`rust_eh_personality` is left undefined without LTO). The crate is tiny, so this stays fast.
fn empty_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(ROOT).join("images/empty");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--message-format=json-render-diagnostics",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .stdin(Stdio::null())
            .output()
            .expect("run cargo build for images/empty");
        assert!(
            out.status.success(),
            "cargo build of images/empty failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exe = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "baton-empty")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no baton-empty executable");
        assert!(exe.exists(), "{} does not exist", exe.display());
        exe
    })
}

/// A pod's files in a temp dir: the ConfigMap's keys under the ConfigMap mount and an empty uds dir, with every
/// argv and env value that names a path under those mounts rewritten to the temp dir.
struct Sandbox {
    _dir: tempfile::TempDir,
    mounts: Vec<(String, PathBuf)>,
    uds_dir: PathBuf,
}

impl Sandbox {
    fn new(ex: &Example) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("baton-k8s-")
            .tempdir()
            .expect("temp dir");
        let (config_mount, _) = ex.mount_of("configMap");
        let (uds_mount, _) = ex.mount_of("emptyDir");
        let config_dir = dir.path().join("config");
        let uds_dir = dir.path().join("uds");
        fs::create_dir(&config_dir).unwrap();
        fs::create_dir(&uds_dir).unwrap();
        for (key, text) in ex.config_files() {
            fs::write(config_dir.join(key), text).unwrap();
        }
        Sandbox {
            _dir: dir,
            mounts: vec![(config_mount, config_dir), (uds_mount, uds_dir.clone())],
            uds_dir,
        }
    }

    fn localize(&self, s: &str) -> String {
        for (mount, local) in &self.mounts {
            if s == mount {
                return local.display().to_string();
            }
            if let Some(rest) = s.strip_prefix(&format!("{mount}/")) {
                return local.join(rest).display().to_string();
            }
        }
        s.to_string()
    }

    fn argv(&self, argv: &[String]) -> Vec<String> {
        argv.iter().map(|a| self.localize(a)).collect()
    }

    /// `env` localized, plus BATON_UDS_DIR so that nothing can reach the config's /var/run/baton.
    fn env(&self, env: &[(String, String)]) -> Vec<(String, String)> {
        let mut out: Vec<_> = env.iter().map(|(k, v)| (k.clone(), self.localize(v))).collect();
        out.push(("BATON_UDS_DIR".into(), self.uds_dir.display().to_string()));
        out
    }
}

// ---------------------------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn manifests_fit_the_kruise_crds_and_core_v1() {
    let ex = Example::load();
    // The schema of the CRD version the manifest names (validate_resource then requires it to be v1alpha1).
    let s_version = str_at(&ex.sidecarset, &["apiVersion"]);
    for (path, crd) in crd_schemas("apps.kruise.io_sidecarsets.yaml", s_version, "SidecarSet") {
        assert_valid(
            &format!("sidecarset.yaml against {}", path.display()),
            &sidecarset_problems(&crd, &ex.sidecarset),
        );
    }
    let c_version = str_at(&ex.cloneset, &["apiVersion"]);
    for (path, crd) in crd_schemas("apps.kruise.io_clonesets.yaml", c_version, "CloneSet") {
        assert_valid(
            &format!("cloneset.yaml against {}", path.display()),
            &cloneset_problems(&crd, &ex.cloneset),
        );
    }
    assert_valid(
        "configmap.yaml",
        &schema::validate(&core_v1::config_map(), &ex.configmap, ""),
    );
}

/// The validator must be able to say no: broken copies of the manifests, each with the problem it must report.
#[test]
fn validator_rejects_broken_manifests() {
    let ex = Example::load();
    let (_, s_crd) = crd_schemas("apps.kruise.io_sidecarsets.yaml", KRUISE_V1ALPHA1, "SidecarSet").remove(0);
    let (_, c_crd) = crd_schemas("apps.kruise.io_clonesets.yaml", KRUISE_V1ALPHA1, "CloneSet").remove(0);
    let sidecarset = |edit: &dyn Fn(&mut Value)| {
        let mut s = ex.sidecarset.clone();
        edit(&mut s);
        sidecarset_problems(&s_crd, &s)
    };
    let cloneset = |edit: &dyn Fn(&mut Value)| {
        let mut c = ex.cloneset.clone();
        edit(&mut c);
        cloneset_problems(&c_crd, &c)
    };

    // Another kind or version than the schema's.
    assert_rejected(
        "misspelled kind",
        &sidecarset(&|s| s["kind"] = json!("Sidecarset")),
        &["kind", "is not one of"],
    );
    // A string where the schema wants an object.
    assert_rejected(
        "upgradeStrategy as a string",
        &sidecarset(&|s| s["spec"]["containers"][0]["upgradeStrategy"] = json!("HotUpgrade")),
        &["spec.containers[0].upgradeStrategy", "expected object, got string"],
    );
    // A misspelled field in an object with explicit properties: the API server would prune it.
    assert_rejected(
        "misspelled upgradeStrategy field",
        &sidecarset(&|s| {
            let u = s["spec"]["containers"][0]["upgradeStrategy"].as_object_mut().unwrap();
            let v = u.remove("upgradeType").unwrap();
            u.insert("upgradeTyp".into(), v);
        }),
        &["spec.containers[0].upgradeStrategy.upgradeTyp", "unknown field"],
    );
    // A value outside an enum.
    assert_rejected(
        "injectionStrategy.revision.policy outside its enum",
        &sidecarset(&|s| s["spec"]["injectionStrategy"] = json!({"revision": {"policy": "Sometimes"}})),
        &["spec.injectionStrategy.revision.policy", "is not one of"],
    );
    // int-or-string.
    assert_rejected(
        "maxUnavailable as a boolean",
        &sidecarset(&|s| s["spec"]["updateStrategy"]["maxUnavailable"] = json!(true)),
        &["spec.updateStrategy.maxUnavailable", "neither an integer nor a string"],
    );
    // A null, as `emptyDir:` without `{}` would be.
    assert_rejected(
        "emptyDir: null",
        &sidecarset(&|s| s["spec"]["volumes"][0]["emptyDir"] = Value::Null),
        &["spec.volumes[0].emptyDir", "null"],
    );
    // The CRD schema types upgradeType as any string; only the Kruise rule catches a misspelling.
    let mut misspelled = ex.sidecarset.clone();
    misspelled["spec"]["containers"][0]["upgradeStrategy"]["upgradeType"] = json!("Hotupgrade");
    assert_valid(
        "misspelled upgradeType against the CRD schema alone (it has no enum)",
        &validate_resource(&s_crd, &misspelled, KRUISE_V1ALPHA1, "SidecarSet"),
    );
    assert_rejected(
        "misspelled upgradeType",
        &sidecarset(&|s| s["spec"]["containers"][0]["upgradeStrategy"]["upgradeType"] = json!("Hotupgrade")),
        &["upgradeType", "Hotupgrade"],
    );
    // Typos in the schemaless parts, caught by the core/v1 subset.
    assert_rejected(
        "misspelled livenessProbe",
        &sidecarset(&|s| {
            let c = s["spec"]["containers"][0].as_object_mut().unwrap();
            let v = c.remove("livenessProbe").unwrap();
            c.insert("livenesProbe".into(), v);
        }),
        &["spec.containers[0].livenesProbe", "unknown field"],
    );
    assert_rejected(
        "probe port as a list",
        &sidecarset(&|s| s["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = json!([15000])),
        &["spec.containers[0].livenessProbe.httpGet.port"],
    );
    assert_rejected(
        "postStart command as a string",
        &sidecarset(&|s| {
            s["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"] = json!("baton migrate")
        }),
        &["spec.containers[0].lifecycle.postStart.exec.command", "expected array"],
    );
    assert_rejected(
        "misspelled terminationGracePeriodSeconds",
        &cloneset(&|c| {
            let spec = c["spec"]["template"]["spec"].as_object_mut().unwrap();
            let v = spec.remove("terminationGracePeriodSeconds").unwrap();
            spec.insert("terminationGracePeriodSecond".into(), v);
        }),
        &["spec.template.spec.terminationGracePeriodSecond", "unknown field"],
    );
    // Required fields and integer types of the CloneSet CRD.
    assert_rejected(
        "CloneSet without a selector",
        &cloneset(&|c| {
            c["spec"].as_object_mut().unwrap().remove("selector");
        }),
        &["spec.selector", "required field missing"],
    );
    assert_rejected(
        "replicas as a string",
        &cloneset(&|c| c["spec"]["replicas"] = json!("2")),
        &["spec.replicas", "expected integer, got string"],
    );
    assert_rejected(
        "replicas beyond int32",
        &cloneset(&|c| c["spec"]["replicas"] = json!(1u64 << 40)),
        &["spec.replicas", "out of range"],
    );
    // A keyword the validator does not implement is an error, never silently skipped.
    assert_rejected(
        "unknown schema keyword",
        &schema::validate(&json!({"type": "string", "pattern": "^a"}), &json!("b"), "x"),
        &["x", "\"pattern\" is not implemented"],
    );
}

#[test]
fn configmap_holds_a_valid_config_that_agrees_with_the_manifests() {
    let ex = Example::load();
    let config = ex.config();

    // What the example promises.
    assert_eq!(config.listeners.len(), 1);
    let l = &config.listeners[0];
    assert_eq!(l.address.to_string(), "0.0.0.0:15006");
    assert_eq!(l.protocol.as_str(), "http");
    let cluster = &config.clusters[l.cluster];
    assert_eq!(
        cluster.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        ["127.0.0.1:8080"]
    );
    assert_eq!(config.handoff.timeout, Duration::from_secs(30));
    assert_eq!(config.handoff.drain_timeout, Duration::from_secs(20));

    // The uds dir is the emptyDir both slots mount.
    let (uds_mount, _) = ex.mount_of("emptyDir");
    assert_eq!(
        config.handoff.uds_dir,
        Path::new(&uds_mount),
        "handoff.uds_dir vs the emptyDir mount"
    );

    // The liveness probe asks the admin listener, which must be reachable from the kubelet (the pod IP).
    let admin = config.admin.as_ref().expect("the example configures admin").address;
    assert!(
        admin.ip().is_unspecified(),
        "admin {admin} must listen on the pod IP for httpGet probes"
    );
    let probe = at(ex.proxy(), &["livenessProbe", "httpGet"]);
    assert_eq!(
        probe["port"].as_u64(),
        Some(u64::from(admin.port())),
        "liveness port vs admin.address"
    );
    assert_eq!(probe["path"], "/live");
    for p in ["readinessProbe", "startupProbe"] {
        assert!(
            ex.proxy().get(p).is_none(),
            "the sidecar has no {p}: both slots would report the one live process (see sidecarset.yaml)"
        );
    }
    // The app port is the cluster endpoint.
    let app = at(&ex.cloneset, &["spec", "template", "spec", "containers", "0"]);
    assert_eq!(
        at(app, &["ports", "0", "containerPort"]).as_u64(),
        Some(u64::from(cluster.endpoints[0].port()))
    );

    // The grace period is the old slot's drain window: above drain_timeout.
    let grace = at(
        &ex.cloneset,
        &["spec", "template", "spec", "terminationGracePeriodSeconds"],
    )
    .as_u64()
    .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > config.handoff.drain_timeout,
        "terminationGracePeriodSeconds {grace} must exceed handoff.drain_timeout {:?}",
        config.handoff.drain_timeout
    );

    // The postStart hook must not give up before the handoff itself does.
    let (_, hook) = ex
        .execs()
        .into_iter()
        .find(|(w, _)| w == "lifecycle.postStart")
        .expect("a postStart hook");
    assert_eq!(
        hook.get(1).map(String::as_str),
        Some("migrate"),
        "postStart runs baton migrate"
    );
    let migrate_timeout = match hook.iter().position(|a| a == "--timeout") {
        Some(i) => parse_duration(&hook[i + 1]).expect("--timeout"),
        None => MIGRATE_DEFAULT_TIMEOUT,
    };
    assert!(
        migrate_timeout >= config.handoff.timeout,
        "migrate --timeout {migrate_timeout:?} below handoff.timeout {:?}",
        config.handoff.timeout
    );
    assert_eq!(
        hook.iter().position(|a| a == "--config").map(|i| &hook[i + 1]),
        Some(&ex.config_path()),
        "postStart reads the same config as run"
    );

    // Selection and namespaces: the SidecarSet injects into the CloneSet's pods, which find the ConfigMap.
    let labels = at(&ex.cloneset, &["spec", "template", "metadata", "labels"]);
    for (path, selector) in [
        (
            "SidecarSet spec.selector",
            at(&ex.sidecarset, &["spec", "selector", "matchLabels"]),
        ),
        (
            "CloneSet spec.selector",
            at(&ex.cloneset, &["spec", "selector", "matchLabels"]),
        ),
    ] {
        for (k, v) in selector.as_object().expect("matchLabels") {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{path} {k}={v} must match the pod template labels"
            );
        }
    }
    let ns = str_at(&ex.sidecarset, &["spec", "namespace"]);
    assert_eq!(str_at(&ex.cloneset, &["metadata", "namespace"]), ns);
    assert_eq!(str_at(&ex.configmap, &["metadata", "namespace"]), ns);

    // The images: the binary sits at the command's path in both, and the container runs as the images' user.
    let argv0 = &ex.command()[0];
    for image in ["sidecar", "empty"] {
        let (copies, user) = containerfile_copies_and_user(image);
        assert!(
            copies.contains(argv0),
            "images/{image} puts no binary at {argv0}: {copies:?}"
        );
        let user = user.unwrap_or_else(|| panic!("images/{image}: no USER"));
        let sc = at(ex.proxy(), &["securityContext"]);
        let (uid, gid) = user.split_once(':').unwrap_or((&user, ""));
        assert_eq!(sc["runAsUser"].as_u64().map(|u| u.to_string()).as_deref(), Some(uid));
        if !gid.is_empty() {
            assert_eq!(sc["runAsGroup"].as_u64().map(|g| g.to_string()).as_deref(), Some(gid));
        }
    }
    let sc = at(ex.proxy(), &["securityContext"]);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));

    // The real binary agrees: `baton check` on the ConfigMap's file.
    let sandbox = Sandbox::new(&ex);
    let argv = sandbox.argv(&[
        "/usr/local/bin/baton".into(),
        "check".into(),
        "--config".into(),
        ex.config_path(),
    ]);
    let out = expect_exit_0(
        Path::new(env!("CARGO_BIN_EXE_baton")),
        &argv,
        &sandbox.env(&[]),
        Duration::from_secs(10),
        "baton check",
    );
    assert!(out.contains("valid"), "baton check output: {out}");
}

/// Kruise runs the sidecar's exact command, hooks and probes in the empty slot: the placeholder must answer each.
#[test]
fn empty_image_answers_every_command_hook_and_exec_probe() {
    let ex = Example::load();
    let bin = empty_binary();
    // The empty slot as Kruise starts it: the placeholder image's env, SIDECARSET_VERSION=0.
    let env = ex.slot_env("empty", "0", R2);
    let execs = ex.execs();
    assert!(
        execs.iter().any(|(w, _)| w == "lifecycle.postStart"),
        "the sidecar has a postStart hook (baton migrate)"
    );
    for (what, argv) in &execs {
        expect_exit_0(bin, argv, &env, Duration::from_secs(1), &format!("empty slot, {what}"));
    }
    expect_idle_until_sigterm(bin, &ex.command(), &env, "empty slot, command");
}

/// The same argv, run by the real binary: its CLI accepts them and each slot role behaves.
#[test]
fn real_baton_accepts_the_same_command_hooks_and_probes() {
    let ex = Example::load();
    let bin = Path::new(env!("CARGO_BIN_EXE_baton"));
    let sandbox = Sandbox::new(&ex);
    // First start (slot -1 at pod creation: 1 / 0) and an idle slot (0 / R2): every hook exits 0 at once, without
    // a peer. (A takeover is the subject of tests/handoff.rs.)
    for (version, alt) in [("1", "0"), ("0", R2)] {
        let env = sandbox.env(&ex.slot_env("sidecar", version, alt));
        for (what, argv) in ex.execs() {
            match argv.get(1).map(String::as_str) {
                Some("migrate" | "check" | "--version") => {}
                other => {
                    panic!("{what}: don't know how to check `baton {other:?}` without a cluster; extend this test")
                }
            }
            let out = expect_exit_0(
                bin,
                &sandbox.argv(&argv),
                &env,
                Duration::from_secs(5),
                &format!("baton, {what} with SIDECARSET_VERSION={version} ALT={alt}"),
            );
            if argv[1] == "migrate" {
                assert!(out.contains("nothing to migrate"), "{what}: {out}");
            }
        }
    }
    // The container command in a superseded slot (VERSION < ALT), as after a pod restart: parses its arguments
    // and config, binds nothing, idles until SIGTERM, exits 0.
    let env = sandbox.env(&ex.slot_env("sidecar", "1", R2));
    expect_idle_until_sigterm(
        bin,
        &sandbox.argv(&ex.command()),
        &env,
        "baton, command in a superseded slot",
    );
}
