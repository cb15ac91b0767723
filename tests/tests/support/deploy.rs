//! The Kubernetes manifests of `deploy/kubernetes` against the real binary.
//!
//! - [`render`]: `kubectl kustomize` of overlays and components, then
//!   `deploy/kubernetes/validate.py` (Kubernetes' schemas from the pinned kubernetes-validate, the
//!   CRD schemas in `deploy/kubernetes/schemas`), every object with the file it came from.
//! - [`static_problems`]: what the manifests and the configuration files they carry must agree on
//!   without running anything (grace periods and drain deadlines, ports, Secrets, images, KEDA and
//!   HPA thresholds, selectors, NetworkPolicies, the NATS cluster's routes).
//! - [`LocalFleet`]: the rendered Deployments and StatefulSets started on this machine as the pods
//!   would run them: the same program, arguments, environment and configuration files, each
//!   container port remapped to a free port on 127.0.0.1, Service and pod names resolved to those
//!   ports, Secrets given made-up values, volumes given folders, judges pointed at the fake judge.
//!   Then probes, Service ports, the consumers that KEDA triggers name (read as KEDA reads them,
//!   from nats-server's monitoring endpoint) and their lag are checked on the real processes.
//!
//! Every problem names the file the object came from, the object and the field.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rewardfleet_core::config::Config;
use rewardfleet_fakejudge::{FakeJudge, FakeJudgeConfig};
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_proto::v1::{Candidate, ChatMessage, ScoreBatchRequest, reward};
use rewardfleet_queue::JetStreamQueue;
use rewardfleet_queue::jetstream::JetStreamOptions;
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long a started container may take to pass its readiness probe (a model worker loads and
/// warms its model first; the test machine is small and shared).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How many times a container that exits before it is ready is started again (the kubelet would
/// go on, backing off).
const MAX_RESTARTS: usize = 3;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `deploy/kubernetes`.
pub fn kubernetes_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// One thing wrong with a manifest: the file its object came from, the object, the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The source file (relative to the repository's root), from kustomize's origin annotation.
    pub origin: String,
    /// `Kind/name`.
    pub object: String,
    /// The field's path in the object, e.g. `spec.template.spec.terminationGracePeriodSeconds`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.origin, self.object, self.field, self.message
        )
    }
}

/// Problems as lines, for assertion messages.
pub fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One rendered object and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub origin: String,
    pub value: Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    /// `Kind/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    pub fn problem(&self, field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            origin: self.origin.clone(),
            object: self.id(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Overlays and components rendered together and validated.
pub struct Rendered {
    pub label: String,
    pub objects: Vec<Object>,
    /// Schema violations (validate.py).
    pub problems: Vec<Problem>,
    /// Objects no schema covers, with the reason.
    pub skipped: Vec<String>,
    pub kubernetes_version: String,
}

impl Rendered {
    pub fn get(&self, kind: &str, name: &str) -> &Object {
        find(&self.objects, kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind}/{name} rendered", self.label))
    }
}

pub fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> Option<&'a Object> {
    objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
}

/// Why the manifests cannot be rendered here, if they cannot: `kubectl` (which has kustomize
/// built in) is missing, or its kustomize predates components (v4). The set-up installs kubectl
/// where a package source offers it.
pub fn missing_tools() -> Option<String> {
    let out = match Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return Some(format!(
                "`kubectl version --client` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Err(e) => {
            return Some(format!(
                "kubectl is not installed ({e}); it renders the Kustomize overlays"
            ));
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let major = text
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    match major {
        Some(m) if m >= 4 => None,
        _ => Some(format!(
            "kubectl's kustomize is too old for the overlays' \
            components (v4 or newer needed):\n{text}"
        )),
    }
}

/// Renders `resources` and `components` (paths relative to `deploy/kubernetes`) with `kubectl
/// kustomize`, with kustomize's origin annotations, and validates every object.
///
/// # Panics
/// If kustomize or validate.py fails (the message carries their output).
pub fn render(label: &str, resources: &[&str], components: &[&str]) -> Rendered {
    let dir = tempfile::Builder::new()
        .prefix("rf-kustomize-")
        .tempdir()
        .unwrap();
    let rel = |p: &str| relative(dir.path(), &kubernetes_dir().join(p));
    let mut text = String::from(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: \
        Kustomization\nbuildMetadata: [originAnnotations]\nresources:\n",
    );
    for r in resources {
        text += &format!("  - {}\n", rel(r));
    }
    if !components.is_empty() {
        text += "components:\n";
        for c in components {
            text += &format!("  - {}\n", rel(c));
        }
    }
    fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{label}: kubectl kustomize failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = dir.path().join("rendered.yaml");
    fs::write(&rendered, &out.stdout).unwrap();
    let python = rewardfleet_testkit::python();
    let out = Command::new(&python)
        .arg(kubernetes_dir().join("validate.py"))
        .arg("--json")
        .arg("--root")
        .arg(dir.path())
        .arg(&rendered)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", python.display()));
    assert!(
        out.status.success(),
        "{label}: deploy/kubernetes/validate.py failed \
        (scripts/setup.sh installs kubernetes-validate):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    Rendered {
        label: label.into(),
        objects: report["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| Object {
                origin: text(&o["origin"]),
                value: o["object"].clone(),
            })
            .collect(),
        problems: report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| Problem {
                origin: text(&p["origin"]),
                object: text(&p["object"]),
                field: text(&p["field"]),
                message: text(&p["message"]),
            })
            .collect(),
        skipped: report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{}: {}", text(&s["object"]), text(&s["reason"])))
            .collect(),
        kubernetes_version: text(&report["kubernetes_version"]),
    }
}

/// `to` relative to the folder `from` (both absolute).
fn relative(from: &Path, to: &Path) -> String {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for c in &to[common..] {
        path.push(c);
    }
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// The objects' structure.

/// A Deployment or StatefulSet.
#[derive(Clone, Copy)]
pub struct Workload<'a> {
    pub object: &'a Object,
}

pub fn workloads(objects: &[Object]) -> Vec<Workload<'_>> {
    // StatefulSets first: what the others connect to starts first.
    let mut w: Vec<Workload> = objects
        .iter()
        .filter(|o| o.kind() == "StatefulSet")
        .chain(objects.iter().filter(|o| o.kind() == "Deployment"))
        .map(|object| Workload { object })
        .collect();
    w.dedup_by(|a, b| a.object.id() == b.object.id());
    w
}

impl<'a> Workload<'a> {
    pub fn name(&self) -> &'a str {
        self.object.name()
    }

    pub fn pod_spec(&self) -> &'a Value {
        &self.object.value["spec"]["template"]["spec"]
    }

    pub fn labels(&self) -> &'a Value {
        &self.object.value["spec"]["template"]["metadata"]["labels"]
    }

    pub fn containers(&self) -> Vec<&'a Value> {
        array(&self.pod_spec()["containers"])
    }

    /// The processes started for it: a StatefulSet's every replica (`name-0`, …; they know each
    /// other), one of a Deployment's (its replicas are alike).
    pub fn pod_names(&self) -> Vec<String> {
        if self.object.kind() == "StatefulSet" {
            let n = self.object.value["spec"]["replicas"].as_u64().unwrap_or(1);
            (0..n).map(|i| format!("{}-{i}", self.name())).collect()
        } else {
            vec![format!("{}-local", self.name())]
        }
    }

    /// `terminationGracePeriodSeconds`, Kubernetes' default when absent.
    pub fn grace(&self) -> u64 {
        self.pod_spec()["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30)
    }

    /// A volume of the pod spec by name.
    pub fn volume(&self, name: &str) -> Option<&'a Value> {
        array(&self.pod_spec()["volumes"])
            .into_iter()
            .find(|v| v["name"] == name)
    }
}

pub fn array(v: &Value) -> Vec<&Value> {
    v.as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// What a container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Worker,
    Nats,
    Other,
}

pub fn role(container: &Value) -> Role {
    let command = str_of(&container["command"][0]);
    let program = command.rsplit('/').next().unwrap_or("");
    match (program, str_of(&container["args"][0])) {
        ("rewardfleet", "gateway") => Role::Gateway,
        ("rewardfleet", "worker") => Role::Worker,
        ("nats-server", _) => Role::Nats,
        _ => Role::Other,
    }
}

/// A container's ports: (name, number).
fn container_ports(container: &Value) -> Vec<(String, u16)> {
    array(&container["ports"])
        .into_iter()
        .map(|p| {
            (
                str_of(&p["name"]).to_owned(),
                p["containerPort"].as_u64().unwrap_or(0) as u16,
            )
        })
        .collect()
}

/// The number of a port given as a number or as the name of one of `containers`' ports.
fn port_number(port: &Value, containers: &[&Value]) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        return Some(n as u16);
    }
    let name = port.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    containers
        .iter()
        .flat_map(|c| container_ports(c))
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
}

/// The file a container reads with `--config FILE` (`-c` for nats-server), from the ConfigMap
/// mounted where it points.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The ConfigMap object.
    pub configmap: Object,
    pub key: String,
    /// The path in the container.
    pub path: String,
    pub text: String,
}

impl ConfigFile {
    /// Where a key of the file is, for messages: `ConfigMap rewardfleet-cpu-… key fleet.toml`.
    pub fn describe(&self) -> String {
        format!("ConfigMap {} key {}", self.configmap.name(), self.key)
    }

    /// A problem in the file, reported on its ConfigMap (from the generator that made it).
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        self.configmap
            .problem(format!("data[{}] {key}", self.key), message)
    }
}

/// The file a container's command line names with `--config FILE` (`-c FILE` for nats-server).
fn config_arg(container: &Value) -> Option<String> {
    let args: Vec<&str> = array(&container["command"])
        .into_iter()
        .skip(1)
        .chain(array(&container["args"]))
        .filter_map(Value::as_str)
        .collect();
    config_in(&args)
}

fn config_in(args: &[&str]) -> Option<String> {
    for (i, a) in args.iter().enumerate() {
        if *a == "--config" || *a == "-c" {
            return args.get(i + 1).map(|s| (*s).to_owned());
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_owned());
        }
    }
    None
}

/// The configuration file of container `c` of `w`.
///
/// # Errors
/// Where the container names none, or it is not in a mounted ConfigMap.
pub fn config_file(objects: &[Object], w: Workload, c: &Value) -> Result<ConfigFile, String> {
    let path = config_arg(c).ok_or("the container passes no --config FILE")?;
    let mount = array(&c["volumeMounts"])
        .into_iter()
        .find(|m| path.starts_with(&format!("{}/", str_of(&m["mountPath"]))))
        .ok_or_else(|| format!("--config {path}: no volume is mounted there"))?;
    let volume = w
        .volume(str_of(&mount["name"]))
        .ok_or_else(|| format!("volume {} is not in the pod", mount["name"]))?;
    let name = str_of(&volume["configMap"]["name"]);
    let configmap = find(objects, "ConfigMap", name)
        .ok_or_else(|| format!("--config {path}: the volume is not a rendered ConfigMap"))?;
    let key = path[str_of(&mount["mountPath"]).len() + 1..].to_owned();
    let text = configmap.value["data"][&key]
        .as_str()
        .ok_or_else(|| format!("--config {path}: ConfigMap {name} has no key {key}"))?
        .to_owned();
    Ok(ConfigFile {
        configmap: configmap.clone(),
        key,
        path,
        text,
    })
}

/// A rewardfleet configuration as the binary parses it (paths unresolved: they are the pod's).
pub fn fleet_config(file: &ConfigFile) -> Result<Config, String> {
    Config::parse(&file.text).map_err(|e| e.to_string())
}

/// A duration as nats-server writes them: `30s`, `2m`, `500ms`, `1h`.
fn nats_duration(text: &str) -> Option<Duration> {
    let text = text.trim().trim_matches('"');
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..digits].parse().ok()?;
    Some(match &text[digits..] {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

/// The value of a top-level `key: value` (or `key = value`) line of a nats-server configuration.
fn nats_value<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(key)?;
        let rest = rest.trim_start();
        let value = rest
            .strip_prefix(':')
            .or_else(|| rest.strip_prefix('='))?
            .trim();
        Some(value.split('#').next().unwrap_or("").trim())
    })
}

/// How long a container may take to stop, and the keys that say so.
fn drain_deadline(role: Role, file: &ConfigFile) -> Option<(Duration, String)> {
    match role {
        Role::Gateway | Role::Worker => {
            let config = fleet_config(file).ok()?;
            Some(if role == Role::Gateway {
                (config.gateway.drain_timeout, "gateway.drain_timeout".into())
            } else {
                (config.worker.drain_timeout, "worker.drain_timeout".into())
            })
        }
        // nats-server's defaults: lame duck mode lasts 2 minutes after 10 s of grace.
        Role::Nats => {
            let duration = nats_value(&file.text, "lame_duck_duration")
                .and_then(nats_duration)
                .unwrap_or(Duration::from_secs(120));
            let grace = nats_value(&file.text, "lame_duck_grace_period")
                .and_then(nats_duration)
                .unwrap_or(Duration::from_secs(10));
            Some((
                duration + grace,
                "lame_duck_duration + lame_duck_grace_period".into(),
            ))
        }
        Role::Other => None,
    }
}

/// Whether a selector selects `labels`: a plain map (a Service's), or a LabelSelector with
/// `matchLabels` and `matchExpressions`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(map) = selector.as_object() else {
        return false;
    };
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    if !map.contains_key("matchLabels") && !map.contains_key("matchExpressions") {
        return map.iter().all(|(k, v)| label(k) == v.as_str());
    }
    let labels_match = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let expressions_match = array(&selector["matchExpressions"]).iter().all(|e| {
        let value = label(str_of(&e["key"]));
        let values: Vec<&str> = array(&e["values"])
            .into_iter()
            .filter_map(Value::as_str)
            .collect();
        match str_of(&e["operator"]) {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => value.is_none_or(|v| !values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// The workloads whose pods a selector selects.
fn selected<'a>(objects: &'a [Object], selector: &Value) -> Vec<Workload<'a>> {
    workloads(objects)
        .into_iter()
        .filter(|w| selects(selector, w.labels()))
        .collect()
}

/// The namespace the manifests install into.
fn namespace(objects: &[Object]) -> String {
    objects
        .iter()
        .find_map(|o| o.value["metadata"]["namespace"].as_str())
        .unwrap_or("default")
        .to_owned()
}

/// A host name as pods see it, resolved against the rendered Services: `svc`, `svc.ns`,
/// `svc.ns.svc.cluster.local` (the Service's pods behind one of its ports) or `pod.svc…` (one
/// pod of the StatefulSet that the headless Service governs, on the port as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod (its local name: `nats-0`, `rewardfleet-gateway-cpu-local`).
    pub pod: String,
    /// The container port the connection reaches.
    pub container_port: u16,
}

/// Resolves `host:port` as a pod of the fleet would.
///
/// # Errors
/// Why the name does not lead to a container port.
pub fn resolve(objects: &[Object], host: &str, port: u16) -> Result<Endpoint, String> {
    let ns = namespace(objects);
    let short = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let parts: Vec<&str> = short.split('.').collect();
    let (pod, service) = match parts.as_slice() {
        [svc] => (None, *svc),
        [svc, n] if *n == ns => (None, *svc),
        [pod, svc] => (Some(*pod), *svc),
        [pod, svc, n] if *n == ns => (Some(*pod), *svc),
        _ => {
            return Err(format!(
                "{host} is not a Service of namespace {ns} (nor a pod under one)"
            ));
        }
    };
    let svc = find(objects, "Service", service)
        .ok_or_else(|| format!("{host}: there is no Service {service}"))?;
    let targets = selected(objects, &svc.value["spec"]["selector"]);
    let Some(first) = targets.first() else {
        return Err(format!("{host}: Service {service} selects no pods"));
    };
    match pod {
        Some(pod) => {
            let owner = targets
                .iter()
                .find(|w| {
                    w.object.kind() == "StatefulSet"
                        && w.object.value["spec"]["serviceName"] == service
                        && w.pod_names().iter().any(|p| p == pod)
                })
                .ok_or_else(|| {
                    format!(
                        "{host}: no pod {pod} under Service {service} (a StatefulSet's \
                        pods are <name>-<ordinal>, with serviceName {service})"
                    )
                })?;
            let declared = owner
                .containers()
                .iter()
                .any(|c| container_ports(c).iter().any(|(_, p)| *p == port));
            if !declared {
                return Err(format!(
                    "{host}:{port}: no container of {} declares port {port}",
                    owner.name()
                ));
            }
            Ok(Endpoint {
                pod: pod.to_owned(),
                container_port: port,
            })
        }
        None => {
            let svc_port = array(&svc.value["spec"]["ports"])
                .into_iter()
                .find(|p| p["port"].as_u64() == Some(u64::from(port)))
                .ok_or_else(|| format!("{host}:{port}: Service {service} has no port {port}"))?;
            let target = if svc_port["targetPort"].is_null() {
                &svc_port["port"]
            } else {
                &svc_port["targetPort"]
            };
            let container_port = port_number(target, &first.containers()).ok_or_else(|| {
                format!(
                    "{host}:{port}: targetPort {target} is not a port of {}",
                    first.name()
                )
            })?;
            Ok(Endpoint {
                pod: first.pod_names()[0].clone(),
                container_port,
            })
        }
    }
}

/// `host:port` pairs of the URLs (`scheme://host:port…`) in `text`, with their byte ranges.
fn urls(text: &str) -> Vec<(std::ops::Range<usize>, String, u16)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        let end = text[start..]
            .find(|c: char| "/\"', \n\t]}".contains(c))
            .map_or(text.len(), |e| start + e);
        let authority = &text[start..end];
        if let Some((host, port)) = authority.rsplit_once(':')
            && let Ok(port) = port.parse::<u16>()
        {
            found.push((start..end, host.to_owned(), port));
        }
        from = end;
    }
    found
}

// ---------------------------------------------------------------------------------------------
// NetworkPolicies.

/// A pod that wants to connect: its labels and its namespace's labels.
pub struct Peer {
    pub labels: Value,
    pub namespace: String,
}

impl Peer {
    fn namespace_labels(&self, objects: &[Object]) -> Value {
        let mut labels = find(objects, "Namespace", &self.namespace)
            .map(|n| n.value["metadata"]["labels"].clone())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        labels["kubernetes.io/metadata.name"] = json!(self.namespace);
        labels
    }
}

/// Whether the NetworkPolicies let `peer` reach `container_port` of the pods of `target`.
pub fn allowed(objects: &[Object], target: Workload, container_port: u16, peer: &Peer) -> bool {
    let ns = namespace(objects);
    let policies: Vec<&Object> = objects
        .iter()
        .filter(|o| o.kind() == "NetworkPolicy")
        .filter(|p| selects(&p.value["spec"]["podSelector"], target.labels()))
        .filter(|p| {
            let types = array(&p.value["spec"]["policyTypes"]);
            types.is_empty() || types.iter().any(|t| *t == "Ingress")
        })
        .collect();
    if policies.is_empty() {
        return true;
    }
    let containers = target.containers();
    policies.iter().any(|p| {
        array(&p.value["spec"]["ingress"]).iter().any(|rule| {
            let ports = array(&rule["ports"]);
            let port_ok = ports.is_empty()
                || ports
                    .iter()
                    .any(|p| port_number(&p["port"], &containers) == Some(container_port));
            let from = array(&rule["from"]);
            let from_ok = from.is_empty()
                || from.iter().any(|f| {
                    let pods = &f["podSelector"];
                    let namespaces = &f["namespaceSelector"];
                    match (pods.is_object(), namespaces.is_object()) {
                        (true, false) => peer.namespace == ns && selects_or_all(pods, &peer.labels),
                        (false, true) => {
                            selects_or_all(namespaces, &peer.namespace_labels(objects))
                        }
                        (true, true) => {
                            selects_or_all(pods, &peer.labels)
                                && selects_or_all(namespaces, &peer.namespace_labels(objects))
                        }
                        (false, false) => false,
                    }
                });
            port_ok && from_ok
        })
    })
}

/// An empty LabelSelector (`{}`) selects everything.
fn selects_or_all(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(serde_json::Map::is_empty) || selects(selector, labels)
}

// ---------------------------------------------------------------------------------------------
// Checks on the manifests alone.

/// Everything the manifests and the configuration files they carry must agree on, without
/// running anything.
pub fn static_problems(objects: &[Object]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let ns = namespace(objects);
    let nats_servers: HashMap<&str, u64> = workloads(objects)
        .iter()
        .filter(|w| w.containers().iter().any(|c| role(c) == Role::Nats))
        .map(|w| {
            (
                w.name(),
                w.object.value["spec"]["replicas"].as_u64().unwrap_or(1),
            )
        })
        .collect();
    for w in workloads(objects) {
        let o = w.object;
        for (i, c) in w.containers().into_iter().enumerate() {
            let at = format!("spec.template.spec.containers[{i}]");
            check_image(o, c, &at, &mut problems);
            let role = role(c);
            if role == Role::Other {
                continue;
            }
            let file = match config_file(objects, w, c) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(o.problem(format!("{at}.args"), e));
                    continue;
                }
            };
            if let Some((deadline, keys)) = drain_deadline(role, &file)
                && Duration::from_secs(w.grace()) <= deadline
            {
                problems.push(o.problem(
                    "spec.template.spec.terminationGracePeriodSeconds",
                    format!(
                        "{} s is not above {keys} ({} s) of {}: \
                        Kubernetes would kill {} before it has drained",
                        w.grace(),
                        deadline.as_secs_f64(),
                        file.describe(),
                        str_of(&c["name"]),
                    ),
                ));
            }
            if role == Role::Nats {
                check_nats_cluster(objects, w, &file, &mut problems);
                continue;
            }
            let config = match fleet_config(&file) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(file.problem("(the file)", e));
                    continue;
                }
            };
            let mut listens = vec![(
                "telemetry.prometheus_listen",
                config.telemetry.prometheus_listen.clone(),
            )];
            match role {
                Role::Gateway => {
                    listens.push(("gateway.listen", Some(config.gateway.listen.clone())))
                }
                Role::Worker => {
                    listens.push(("worker.health_listen", config.worker.health_listen.clone()))
                }
                _ => {}
            }
            let declared = container_ports(c);
            for (key, addr) in listens {
                let Some(addr) = addr else { continue };
                match addr.parse::<std::net::SocketAddr>() {
                    Ok(a) if !a.ip().is_unspecified() => problems.push(file.problem(
                        key,
                        format!(
                            "{addr}: only the pod itself reaches {}; listen on \
                            0.0.0.0 so that probes, Services and Prometheus can",
                            a.ip()
                        ),
                    )),
                    Ok(a) if !declared.iter().any(|(_, p)| *p == a.port()) => {
                        problems.push(o.problem(
                            format!("{at}.ports"),
                            format!(
                                "{key} of {} listens on port {}, \
                                which the container does not declare",
                                file.describe(),
                                a.port()
                            ),
                        ))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        problems.push(file.problem(key, format!("{addr:?} is not host:port")))
                    }
                }
            }
            if let Some(port) =
                o.value["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
                    .as_str()
                && let Some(addr) = &config.telemetry.prometheus_listen
                && !addr.ends_with(&format!(":{port}"))
            {
                problems.push(o.problem(
                    "spec.template.metadata.annotations[prometheus.io/port]",
                    format!(
                        "{port}, but telemetry.prometheus_listen of {} is {addr}",
                        file.describe()
                    ),
                ));
            }
            // Secrets the configuration reads from the environment.
            let env: Vec<&str> = array(&c["env"])
                .into_iter()
                .map(|e| str_of(&e["name"]))
                .collect();
            let mut wanted: Vec<(String, String)> = Vec::new();
            if let Some(nats) = &config.nats
                && let Some(var) = &nats.token_env
            {
                wanted.push((var.clone(), "nats.token_env".into()));
            }
            // The binary reads every judge's key at start, in a gateway too.
            for (j, judge) in config.judge.iter().enumerate() {
                if let Some(var) = &judge.api_key_env {
                    wanted.push((var.clone(), format!("judge[{j}].api_key_env")));
                }
            }
            for (var, key) in wanted {
                if !env.contains(&var.as_str()) {
                    problems.push(o.problem(
                        format!("{at}.env"),
                        format!(
                            "{key} of {} names ${var}, which the container does not set",
                            file.describe()
                        ),
                    ));
                }
            }
            if role == Role::Worker {
                check_worker_image(o, c, &at, &config, &file, &mut problems);
            }
            // The NATS URL leads to a Service of the NATS servers, which lets these pods in.
            if let Some(nats) = &config.nats {
                for (_, host, port) in urls(&nats.url) {
                    match resolve(objects, &host, port) {
                        Err(e) => problems.push(file.problem("nats.url", e)),
                        Ok(end) => {
                            let server = workloads(objects)
                                .into_iter()
                                .find(|s| s.pod_names().contains(&end.pod))
                                .unwrap();
                            let peer = Peer {
                                labels: w.labels().clone(),
                                namespace: ns.clone(),
                            };
                            if !allowed(objects, server, end.container_port, &peer) {
                                problems.push(o.problem(
                                    "spec.template.metadata.labels",
                                    format!(
                                        "the NetworkPolicies let these pods not \
                                        reach {host}:{port} (nats.url of {})",
                                        file.describe()
                                    ),
                                ));
                            }
                        }
                    }
                }
                let copies = nats.replicas as u64;
                if let Some(servers) = nats_servers.values().max()
                    && copies > *servers
                {
                    problems.push(file.problem(
                        "nats.replicas",
                        format!(
                            "{copies} copies of each stream, but NATS runs {servers} server(s)"
                        ),
                    ));
                }
            }
            // Trainers reach a gateway's gRPC port; any other pod does not.
            if role == Role::Gateway
                && let Ok(addr) = config.gateway.listen.parse::<std::net::SocketAddr>()
            {
                let trainer = Peer {
                    labels: json!({"rewardfleet/trainer": "true"}),
                    namespace: "trainers".into(),
                };
                let stranger = Peer {
                    labels: json!({"app": "something-else"}),
                    namespace: "other".into(),
                };
                if !allowed(objects, w, addr.port(), &trainer) {
                    problems.push(o.problem(
                        "spec.template.metadata.labels",
                        format!(
                            "the NetworkPolicies keep trainers (pods labelled \
                            rewardfleet/trainer: \"true\") from port {}",
                            addr.port()
                        ),
                    ));
                }
                if allowed(objects, w, addr.port(), &stranger) {
                    problems.push(o.problem(
                        "spec.template.metadata.labels",
                        format!(
                            "the NetworkPolicies let any pod reach port {}, not only trainers",
                            addr.port()
                        ),
                    ));
                }
            }
        }
    }
    // Only the fleet's pods reach the NATS servers' client port.
    for w in workloads(objects) {
        if let Some(c) = w.containers().into_iter().find(|c| role(c) == Role::Nats) {
            let stranger = Peer {
                labels: json!({"app": "something-else"}),
                namespace: ns.clone(),
            };
            for (_, port) in container_ports(c)
                .into_iter()
                .filter(|(n, _)| n == "client")
            {
                if allowed(objects, w, port, &stranger) {
                    problems.push(w.object.problem(
                        "spec.template.metadata.labels",
                        format!(
                            "the NetworkPolicies let any pod reach \
                            NATS on port {port}, not only the fleet's"
                        ),
                    ));
                }
            }
        }
    }
    for o in objects {
        match o.kind() {
            "ScaledObject" => check_scaled_object(objects, o, &mut problems),
            "HorizontalPodAutoscaler" => check_hpa(objects, o, &mut problems),
            "PodDisruptionBudget" => {
                let n = selected(objects, &o.value["spec"]["selector"]).len();
                if n != 1 {
                    problems.push(o.problem(
                        "spec.selector",
                        format!(
                            "selects the pods of {n} workloads; a budget \
                            with maxUnavailable must cover exactly one"
                        ),
                    ));
                }
            }
            "Service" => check_service(objects, o, &mut problems),
            "NetworkPolicy" if selected(objects, &o.value["spec"]["podSelector"]).is_empty() => {
                problems.push(o.problem("spec.podSelector", "selects no pod of these manifests"));
            }
            _ => {}
        }
    }
    problems
}

fn image_name(image: &str) -> (&str, Option<&str>) {
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((name, tag)) => (name, Some(tag)),
        None => (last, None),
    }
}

fn check_image(o: &Object, c: &Value, at: &str, problems: &mut Vec<Problem>) {
    let image = str_of(&c["image"]);
    match image_name(image) {
        (_, None) | (_, Some("latest")) => problems.push(o.problem(
            format!("{at}.image"),
            format!("{image:?} names no version: pin a tag (the overlay's images: list)"),
        )),
        _ => {}
    }
}

/// A worker's image must have what its models need: libtorch (`rewardfleet-torch` or
/// `rewardfleet-cuda`), and CUDA with a GPU for a model on `cuda:N`.
fn check_worker_image(
    o: &Object,
    c: &Value,
    at: &str,
    config: &Config,
    file: &ConfigFile,
    problems: &mut Vec<Problem>,
) {
    let (image, _) = image_name(str_of(&c["image"]));
    let gpus = &c["resources"]["limits"]["nvidia.com/gpu"];
    let cuda = config.model.iter().any(|m| m.device.is_cuda());
    if !config.model.is_empty() && image == "rewardfleet" {
        problems.push(o.problem(
            format!("{at}.image"),
            format!(
                "{} declares [[model]]s, but {image} is the judge-and-rules image \
                without libtorch (use rewardfleet-torch or rewardfleet-cuda)",
                file.describe()
            ),
        ));
    }
    if cuda && !image.ends_with("-cuda") {
        problems.push(o.problem(
            format!("{at}.image"),
            format!(
                "{} puts a model on CUDA, but {image} is not the CUDA image",
                file.describe()
            ),
        ));
    }
    if cuda && gpus.is_null() {
        problems.push(o.problem(
            format!("{at}.resources.limits"),
            format!(
                "{} puts a model on CUDA, but the container asks for no nvidia.com/gpu",
                file.describe()
            ),
        ));
    }
    if !cuda && !gpus.is_null() {
        problems.push(o.problem(
            format!("{at}.resources.limits"),
            format!(
                "the container holds a GPU, but no model of {} runs on CUDA",
                file.describe()
            ),
        ));
    }
}

/// A NATS cluster's routes name each server of the StatefulSet under its headless Service.
fn check_nats_cluster(
    objects: &[Object],
    w: Workload,
    file: &ConfigFile,
    problems: &mut Vec<Problem>,
) {
    let o = w.object;
    let service = str_of(&o.value["spec"]["serviceName"]);
    match find(objects, "Service", service) {
        None => {
            problems.push(o.problem("spec.serviceName", format!("there is no Service {service}")))
        }
        Some(svc) => {
            if svc.value["spec"]["clusterIP"] != "None" {
                problems.push(svc.problem(
                    "spec.clusterIP",
                    "the StatefulSet's governing Service must be \
                    headless (None): pods are named under it",
                ));
            }
            if svc.value["spec"]["publishNotReadyAddresses"] != true {
                problems.push(svc.problem(
                    "spec.publishNotReadyAddresses",
                    "must be true: NATS servers must find each other before any is ready",
                ));
            }
        }
    }
    let Some(start) = file.text.find("routes") else {
        return;
    };
    let block = &file.text[start..];
    let block = &block[..block.find(']').unwrap_or(block.len())];
    let mut named: Vec<String> = urls(block).into_iter().map(|(_, host, _)| host).collect();
    named.sort();
    let mut expected: Vec<String> = w
        .pod_names()
        .iter()
        .map(|p| format!("{p}.{service}"))
        .collect();
    expected.sort();
    if named != expected {
        problems.push(file.problem(
            "cluster.routes",
            format!(
                "routes name {named:?}, but the StatefulSet \
                {} runs {expected:?} under Service {service}",
                w.name()
            ),
        ));
    }
}

/// The worker container of Deployment `name`, its configuration file and configuration.
fn target_worker<'a>(
    objects: &'a [Object],
    name: &str,
) -> Option<(Workload<'a>, ConfigFile, Config)> {
    let w = workloads(objects)
        .into_iter()
        .find(|w| w.object.kind() == "Deployment" && w.name() == name)?;
    let c = w
        .containers()
        .into_iter()
        .find(|c| role(c) == Role::Worker)?;
    let file = config_file(objects, w, c).ok()?;
    let config = fleet_config(&file).ok()?;
    Some((w, file, config))
}

fn check_scaled_object(objects: &[Object], o: &Object, problems: &mut Vec<Problem>) {
    let spec = &o.value["spec"];
    let target = str_of(&spec["scaleTargetRef"]["name"]);
    let Some((_, file, config)) = target_worker(objects, target) else {
        problems.push(o.problem(
            "spec.scaleTargetRef.name",
            format!("{target} is not a Deployment of rewardfleet workers"),
        ));
        return;
    };
    let Some(nats) = &config.nats else {
        problems.push(file.problem("nats", "a worker's configuration needs [nats]"));
        return;
    };
    let slots = config.worker.max_concurrent_jobs as u64;
    let max = spec["maxReplicaCount"].as_u64().unwrap_or(100);
    if (config.worker.max_ack_pending as u64) < max * slots {
        problems.push(o.problem(
            "spec.maxReplicaCount",
            format!(
                "{max} workers × worker.max_concurrent_jobs ({slots}) is more than \
                worker.max_ack_pending ({}) of {}: the last workers would find nothing to pull",
                config.worker.max_ack_pending,
                file.describe()
            ),
        ));
    }
    for (j, trigger) in array(&spec["triggers"]).into_iter().enumerate() {
        if trigger["type"] != "nats-jetstream" {
            continue;
        }
        let md = &trigger["metadata"];
        let at = |k: &str| format!("spec.triggers[{j}].metadata.{k}");
        if md["stream"] != nats.jobs_stream.as_str() {
            problems.push(o.problem(
                at("stream"),
                format!(
                    "{}, but the jobs stream of {} is {}",
                    md["stream"],
                    file.describe(),
                    nats.jobs_stream
                ),
            ));
        }
        if md["lagThreshold"].as_str() != Some(&slots.to_string()) {
            problems.push(o.problem(
                at("lagThreshold"),
                format!(
                    "{}, but worker.max_concurrent_jobs of {} is {slots}: \
                    one worker per {slots} jobs waiting or in flight",
                    md["lagThreshold"],
                    file.describe()
                ),
            ));
        }
        let account = if nats.credentials_file.is_some() {
            None
        } else {
            Some("$G")
        };
        if let Some(account) = account
            && md["account"] != account
        {
            problems.push(o.problem(
                at("account"),
                format!(
                    "{}: without credentials the servers' account is {account}",
                    md["account"]
                ),
            ));
        }
        let endpoint = str_of(&md["natsServerMonitoringEndpoint"]);
        let resolved = endpoint
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("{endpoint:?} is not host:port"))
            .and_then(|(h, p)| resolve(objects, h, p));
        match resolved {
            Err(e) => problems.push(o.problem(at("natsServerMonitoringEndpoint"), e)),
            Ok(end) => {
                let server = workloads(objects)
                    .into_iter()
                    .find(|s| s.pod_names().contains(&end.pod))
                    .unwrap();
                let keda = Peer {
                    labels: json!({"app.kubernetes.io/name": "keda-operator"}),
                    namespace: "keda".into(),
                };
                if !allowed(objects, server, end.container_port, &keda) {
                    problems.push(o.problem(
                        at("natsServerMonitoringEndpoint"),
                        format!(
                            "the NetworkPolicies keep KEDA (namespace keda) from port {} of {}",
                            end.container_port,
                            server.name()
                        ),
                    ));
                }
            }
        }
    }
}

fn check_hpa(objects: &[Object], o: &Object, problems: &mut Vec<Problem>) {
    let spec = &o.value["spec"];
    let target = str_of(&spec["scaleTargetRef"]["name"]);
    let Some((_, file, config)) = target_worker(objects, target) else {
        problems.push(o.problem(
            "spec.scaleTargetRef.name",
            format!("{target} is not a Deployment of rewardfleet workers"),
        ));
        return;
    };
    let slots = config.worker.max_concurrent_jobs.to_string();
    for (j, metric) in array(&spec["metrics"]).into_iter().enumerate() {
        let external = &metric["external"];
        if external.is_null() {
            continue;
        }
        let pool = &external["metric"]["selector"]["matchLabels"]["pool"];
        if pool != config.worker.pool.as_str() {
            problems.push(o.problem(
                format!("spec.metrics[{j}].external.metric.selector.matchLabels.pool"),
                format!(
                    "{pool}, but worker.pool of {} is {}",
                    file.describe(),
                    config.worker.pool
                ),
            ));
        }
        let target = &external["target"]["averageValue"];
        if target.as_str() != Some(&slots)
            && target.as_u64().map(|v| v.to_string()) != Some(slots.clone())
        {
            problems.push(o.problem(
                format!("spec.metrics[{j}].external.target.averageValue"),
                format!(
                    "{target}, but worker.max_concurrent_jobs of {} is {slots}",
                    file.describe()
                ),
            ));
        }
    }
}

fn check_service(objects: &[Object], o: &Object, problems: &mut Vec<Problem>) {
    let targets = selected(objects, &o.value["spec"]["selector"]);
    if targets.is_empty() {
        problems.push(o.problem("spec.selector", "selects no pod of these manifests"));
        return;
    }
    for (k, port) in array(&o.value["spec"]["ports"]).into_iter().enumerate() {
        let target = if port["targetPort"].is_null() {
            &port["port"]
        } else {
            &port["targetPort"]
        };
        for w in &targets {
            let containers = w.containers();
            let declared = port_number(target, &containers).is_some_and(|n| {
                containers
                    .iter()
                    .any(|c| container_ports(c).iter().any(|(_, p)| *p == n))
            });
            if !declared {
                problems.push(o.problem(
                    format!("spec.ports[{k}].targetPort"),
                    format!("{target} is not a declared port of {}", w.name()),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet on this machine.

/// A free port on 127.0.0.1 that no other pod of this test process got: the tests run in parallel
/// and each hands out dozens, and the OS may offer a port again once its probe socket is closed.
fn local_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = rewardfleet_testkit::free_port().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `GET path` over HTTP/1.0 (no chunked body) on 127.0.0.1:`port`: status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}

/// The local `nats-server`: `REWARDFLEET_NATS_SERVER`, then `PATH`, then Debian's place.
fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os(rewardfleet_testkit::NATS_SERVER_ENV) {
        return p.into();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server is not installed (scripts/setup.sh installs it)")
}

/// A container of a local pod: what runs it, and the process when it runs.
struct LocalContainer {
    name: String,
    role: Role,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A rewardfleet container's configuration as written here (addresses and paths local).
    config: Option<Config>,
    log: PathBuf,
    child: Option<Child>,
    /// Path rewriting of this container's mounts (for preStop commands).
    mounts: Vec<(String, PathBuf)>,
}

impl LocalContainer {
    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits at most `limit` for the process to exit.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status();
        }
    }
}

impl Drop for LocalContainer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pod of a workload, on this machine.
struct LocalPod {
    workload: String,
    name: String,
    grace: u64,
    /// Container port → the port on 127.0.0.1 that stands for it.
    ports: HashMap<u16, u16>,
    dir: PathBuf,
    containers: Vec<LocalContainer>,
    /// Why it is not started, if it is not.
    not_started: Option<String>,
}

/// The rendered Deployments and StatefulSets running here (see the module's doc).
pub struct LocalFleet {
    pods: Vec<LocalPod>,
    judge: FakeJudge,
    /// What was not started or not checked, and why; what the lag did.
    pub notes: Vec<String>,
    /// What went wrong while preparing the pods (a configuration `rewardfleet check` refuses).
    start_problems: Vec<Problem>,
    dir: TempDir,
}

impl LocalFleet {
    /// Starts every pod of `objects`: StatefulSets first, every replica, each waited for until
    /// its readiness probe passes; then one pod of each Deployment, likewise. A
    /// PersistentVolumeClaim named in `claims` is that folder (e.g. the models volume, filled as
    /// deploy/README.md says); any other volume is a new folder. Workers whose models ask for
    /// CUDA are not started: `rewardfleet check` runs on their configuration, and a note says so.
    ///
    /// # Panics
    /// If a process exits or is not ready within two minutes (with the end of its log).
    /// `RF_DEPLOY_KEEP=1` keeps the pods' folders (the files as written here, the logs).
    pub async fn start(objects: &[Object], claims: &[(&str, &Path)]) -> Self {
        // RF_DEPLOY_KEEP=1 keeps the pods' folders (files as written, logs) for a look afterwards.
        let dir = tempfile::Builder::new()
            .prefix("rf-deploy-")
            .disable_cleanup(std::env::var_os("RF_DEPLOY_KEEP").is_some())
            .tempdir()
            .unwrap();
        let judge = FakeJudge::start(FakeJudgeConfig::default()).await.unwrap();
        let mut pods = Vec::new();
        for w in workloads(objects) {
            for name in w.pod_names() {
                let mut ports = HashMap::new();
                for c in w.containers() {
                    for (_, port) in container_ports(c) {
                        ports.insert(port, local_port());
                    }
                }
                pods.push(LocalPod {
                    workload: w.name().to_owned(),
                    dir: dir.path().join(&name),
                    name,
                    grace: w.grace(),
                    ports,
                    containers: Vec::new(),
                    not_started: None,
                });
            }
        }
        let mut fleet = Self {
            pods,
            judge,
            notes: Vec::new(),
            start_problems: Vec::new(),
            dir,
        };
        let ports_of: HashMap<String, HashMap<u16, u16>> = fleet
            .pods
            .iter()
            .map(|p| (p.name.clone(), p.ports.clone()))
            .collect();
        let ns = namespace(objects);
        for index in 0..fleet.pods.len() {
            let w = workloads(objects)
                .into_iter()
                .find(|w| w.name() == fleet.pods[index].workload)
                .unwrap();
            fs::create_dir_all(&fleet.pods[index].dir).unwrap();
            for (i, c) in w.containers().into_iter().enumerate() {
                let prepared = fleet.prepare(objects, w, index, i, c, &ports_of, claims, &ns);
                fleet.pods[index].containers.push(prepared);
            }
        }
        // NATS first, then the rest; a StatefulSet's replicas start together.
        for stateful in [true, false] {
            let started: Vec<usize> = (0..fleet.pods.len())
                .filter(|&i| {
                    let w = find(objects, "StatefulSet", &fleet.pods[i].workload).is_some();
                    w == stateful && fleet.pods[i].not_started.is_none()
                })
                .collect();
            for &i in &started {
                for c in &mut fleet.pods[i].containers {
                    c.spawn();
                }
            }
            for &i in &started {
                fleet.wait_ready(objects, i).await;
            }
        }
        fleet
    }

    /// Files, environment and command of container `i` of pod `pod` (of workload `w`); runs
    /// `rewardfleet check` on a rewardfleet container's configuration.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        objects: &[Object],
        w: Workload,
        pod: usize,
        i: usize,
        c: &Value,
        ports_of: &HashMap<String, HashMap<u16, u16>>,
        claims: &[(&str, &Path)],
        ns: &str,
    ) -> LocalContainer {
        let at = format!("spec.template.spec.containers[{i}]");
        let pod_dir = self.pods[pod].dir.clone();
        let pod_name = self.pods[pod].name.clone();
        let name = str_of(&c["name"]).to_owned();
        // Mounts: a folder for each, longest mount path first for rewriting.
        let mut mounts: Vec<(String, PathBuf, Option<&Value>)> = Vec::new();
        for m in array(&c["volumeMounts"]) {
            let volume_name = str_of(&m["name"]);
            let volume = w.volume(volume_name);
            let local = match volume {
                Some(v) if v["persistentVolumeClaim"].is_object() => {
                    let claim = str_of(&v["persistentVolumeClaim"]["claimName"]);
                    claims
                        .iter()
                        .find(|(n, _)| *n == claim)
                        .map(|(_, p)| p.to_path_buf())
                        .unwrap_or_else(|| self.dir.path().join("claims").join(claim))
                }
                _ => pod_dir.join("volumes").join(volume_name),
            };
            fs::create_dir_all(&local).unwrap();
            mounts.push((str_of(&m["mountPath"]).to_owned(), local, volume));
        }
        mounts.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.len()));
        let paths: Vec<(String, PathBuf)> = mounts
            .iter()
            .map(|(p, l, _)| (p.clone(), l.clone()))
            .collect();
        let judge_url = self.judge.base_url();
        let rewrite = |text: &str| {
            rewrite(
                text,
                objects,
                &self.pods[pod].ports,
                ports_of,
                &paths,
                &judge_url,
            )
        };
        for (_, local, volume) in &mounts {
            let Some(volume) = volume else { continue };
            if let Some(cm) = volume["configMap"]["name"].as_str() {
                let Some(cm) = find(objects, "ConfigMap", cm) else {
                    continue;
                };
                for (key, text) in cm.value["data"].as_object().into_iter().flatten() {
                    fs::write(local.join(key), rewrite(str_of(text))).unwrap();
                }
            } else if let Some(secret) = volume["secret"]["secretName"].as_str()
                && let Some(s) = find(objects, "Secret", secret)
            {
                for key in s.value["data"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    fs::write(local.join(key), secret_value(secret, key)).unwrap();
                }
            }
        }
        let mut env = vec![
            ("HOSTNAME".to_owned(), pod_name.clone()),
            (
                "HOME".to_owned(),
                pod_dir.join("home").display().to_string(),
            ),
        ];
        fs::create_dir_all(pod_dir.join("home")).unwrap();
        for e in array(&c["env"]) {
            let key = str_of(&e["name"]).to_owned();
            let from = &e["valueFrom"];
            let value = if let Some(v) = e["value"].as_str() {
                rewrite(v)
            } else if from["secretKeyRef"].is_object() {
                secret_value(
                    str_of(&from["secretKeyRef"]["name"]),
                    str_of(&from["secretKeyRef"]["key"]),
                )
            } else {
                match str_of(&from["fieldRef"]["fieldPath"]) {
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => ns.to_owned(),
                    "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                    other => {
                        self.start_problems.push(w.object.problem(
                            format!("{at}.env"),
                            format!("{key}: the test cannot stand in for {other:?}"),
                        ));
                        String::new()
                    }
                }
            };
            env.push((key, value));
        }
        let command: Vec<String> = array(&c["command"])
            .into_iter()
            .chain(array(&c["args"]))
            .map(|v| rewrite(str_of(v)))
            .collect();
        let role = role(c);
        let program = match role {
            Role::Gateway | Role::Worker => super::binary(),
            Role::Nats => nats_server_binary(),
            Role::Other => {
                self.pods[pod].not_started = Some(format!(
                    "{}: {command:?} is not a program of the fleet",
                    w.object.id()
                ));
                PathBuf::from(command.first().cloned().unwrap_or_default())
            }
        };
        let mut container = LocalContainer {
            name: name.clone(),
            role,
            program,
            args: command.into_iter().skip(1).collect(),
            env,
            config: None,
            log: pod_dir.join(format!("{name}.log")),
            child: None,
            mounts: paths.clone(),
        };
        if matches!(role, Role::Gateway | Role::Worker) {
            let args: Vec<&str> = container.args.iter().map(String::as_str).collect();
            let local = config_in(&args).map(PathBuf::from);
            if let Some(local) = local {
                container.config = fs::read_to_string(&local)
                    .ok()
                    .and_then(|t| Config::parse(&t).ok());
                let out = Command::new(&container.program)
                    .args(["check", "--config"])
                    .arg(&local)
                    .env_clear()
                    .envs(container.env.iter().map(|(k, v)| (k, v)))
                    .output()
                    .unwrap();
                if !out.status.success() {
                    let file = config_file(objects, w, c)
                        .map(|f| f.describe())
                        .unwrap_or_default();
                    self.start_problems.push(w.object.problem(
                        format!("{at}.args"),
                        format!(
                            "`rewardfleet check` refuses {file}:\n{}",
                            String::from_utf8_lossy(&out.stderr)
                        ),
                    ));
                    self.pods[pod].not_started = Some(format!(
                        "{}: its configuration does not pass `rewardfleet check`",
                        w.object.id()
                    ));
                }
            }
            let cuda = container
                .config
                .as_ref()
                .is_some_and(|c| c.model.iter().any(|m| m.device.is_cuda()));
            if role == Role::Worker && cuda && self.pods[pod].not_started.is_none() {
                let why = format!(
                    "{}: not started, its model asks for CUDA and this machine has no GPU; \
                    `rewardfleet check` passed on its configuration, and its KEDA consumer \
                    is checked against the name the binary gives it",
                    w.object.id()
                );
                self.notes.push(why.clone());
                self.pods[pod].not_started = Some(why);
            }
        }
        container
    }

    /// Waits until every container of pod `i` passes its readiness probe (else its startup or
    /// liveness probe; else until its ports listen).
    async fn wait_ready(&mut self, objects: &[Object], i: usize) {
        let w = workloads(objects)
            .into_iter()
            .find(|w| w.name() == self.pods[i].workload)
            .unwrap();
        let containers = w.containers();
        let deadline = Instant::now() + READY_TIMEOUT;
        for (k, c) in containers.iter().enumerate() {
            // As the kubelet: the startup probe first, then the readiness probe (a container
            // with neither is ready once its ports listen).
            let probes: Vec<&Value> = ["startupProbe", "readinessProbe"]
                .iter()
                .map(|p| &c[*p])
                .filter(|p| p.is_object())
                .collect();
            let mut passed = 0;
            let mut restarts = 0;
            loop {
                let pod = &mut self.pods[i];
                if let Some(status) = pod.containers[k]
                    .child
                    .as_mut()
                    .and_then(|ch| ch.try_wait().unwrap())
                {
                    // As the kubelet does (restartPolicy Always), a few times: a process may
                    // start before what it needs is ready (a NATS cluster still electing leaders).
                    assert!(
                        restarts < MAX_RESTARTS,
                        "{}/{} exited ({status}) {} times before it was ready; its log:\n{}",
                        pod.name,
                        pod.containers[k].name,
                        restarts + 1,
                        pod.containers[k].log_tail()
                    );
                    restarts += 1;
                    passed = 0;
                    let note = format!(
                        "{}/{}: exited ({status}) before it was \
                        ready, restarted as the kubelet would",
                        pod.name, pod.containers[k].name
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.pods[i].containers[k].spawn();
                    self.notes.push(note);
                    continue;
                }
                let ready = match probes.get(passed) {
                    Some(p) => {
                        if run_probe(p, &containers, &pod.ports).await.is_ok() {
                            passed += 1;
                        }
                        passed == probes.len()
                    }
                    None => pod
                        .ports
                        .values()
                        .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()),
                };
                if ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}/{} was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    pod.name,
                    pod.containers[k].name,
                    pod.containers[k].log_tail()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    fn pods_of<'s>(&'s self, workload: &'s str) -> impl Iterator<Item = &'s LocalPod> + 's {
        self.pods.iter().filter(move |p| p.workload == workload)
    }

    fn local_port(&self, end: &Endpoint) -> Option<u16> {
        self.pods
            .iter()
            .find(|p| p.name == end.pod)?
            .ports
            .get(&end.container_port)
            .copied()
    }

    /// What the running processes contradict in `objects` (the objects they were started from,
    /// or changed copies of them): probes that do not pass, Service ports that nothing listens
    /// on, KEDA triggers that name a stream or consumer the server does not have; and what went
    /// wrong while starting.
    pub async fn problems(&self, objects: &[Object]) -> Vec<Problem> {
        let mut problems = self.start_problems.clone();
        for w in workloads(objects) {
            let containers = w.containers();
            for pod in self.pods_of(w.name()).filter(|p| p.not_started.is_none()) {
                for (i, c) in containers.iter().enumerate() {
                    for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
                        if !c[kind].is_object() {
                            continue;
                        }
                        if let Err((field, message)) =
                            run_probe(&c[kind], &containers, &pod.ports).await
                        {
                            problems.push(w.object.problem(
                                format!("spec.template.spec.containers[{i}].{kind}.{field}"),
                                format!("{message} (pod {})", pod.name),
                            ));
                        }
                    }
                }
            }
        }
        for svc in objects.iter().filter(|o| o.kind() == "Service") {
            for (k, port) in array(&svc.value["spec"]["ports"]).into_iter().enumerate() {
                let target = if port["targetPort"].is_null() {
                    &port["port"]
                } else {
                    &port["targetPort"]
                };
                for w in selected(objects, &svc.value["spec"]["selector"]) {
                    let Some(number) = port_number(target, &w.containers()) else {
                        continue;
                    };
                    for pod in self.pods_of(w.name()).filter(|p| p.not_started.is_none()) {
                        let listens = pod.ports.get(&number).is_some_and(|p| {
                            std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()
                        });
                        if !listens {
                            problems.push(svc.problem(
                                format!("spec.ports[{k}].targetPort"),
                                format!(
                                    "{target} is port {number} of pod \
                                    {}, and nothing listens there",
                                    pod.name
                                ),
                            ));
                        }
                    }
                }
            }
        }
        for so in objects.iter().filter(|o| o.kind() == "ScaledObject") {
            let target = str_of(&so.value["spec"]["scaleTargetRef"]["name"]);
            let runs = self.pods_of(target).any(|p| p.not_started.is_none());
            for (j, trigger) in array(&so.value["spec"]["triggers"]).into_iter().enumerate() {
                if trigger["type"] != "nats-jetstream" {
                    continue;
                }
                let md = &trigger["metadata"];
                if runs {
                    if let Err((key, message)) = self.keda_lag(objects, md) {
                        problems.push(
                            so.problem(format!("spec.triggers[{j}].metadata.{key}"), message),
                        );
                    }
                } else if let Some(problem) = self.consumer_named_by_the_binary(so, j, md).await {
                    problems.push(problem);
                }
            }
        }
        problems
    }

    /// For a pool whose workers cannot run here: the trigger's consumer against the name the
    /// binary's queue gives the pool's consumer, connected to the local NATS with the workers'
    /// own configuration.
    async fn consumer_named_by_the_binary(
        &self,
        so: &Object,
        j: usize,
        md: &Value,
    ) -> Option<Problem> {
        let target = str_of(&so.value["spec"]["scaleTargetRef"]["name"]);
        let c = self
            .pods_of(target)
            .flat_map(|p| &p.containers)
            .find(|c| c.role == Role::Worker)?;
        let config = c.config.as_ref()?;
        let nats = config.nats.as_ref()?;
        let token = nats
            .token_env
            .as_ref()
            .and_then(|var| c.env.iter().find(|(k, _)| k == var))
            .map(|(_, v)| v.clone());
        let options = JetStreamOptions {
            token,
            client_name: Some("rewardfleet-deploy-test".into()),
        };
        let queue = JetStreamQueue::connect_with(nats, &config.worker, options)
            .await
            .expect("the local NATS takes the worker's configuration");
        let expected = queue.consumer_name(&config.worker.pool);
        (md["consumer"] != expected.as_str()).then(|| {
            so.problem(
                format!("spec.triggers[{j}].metadata.consumer"),
                format!(
                    "{}, but the workers of pool {} pull from consumer {expected}",
                    md["consumer"], config.worker.pool
                ),
            )
        })
    }

    /// The lag KEDA's nats-jetstream scaler would read for a trigger: from the monitoring
    /// endpoint it names, `/jsz?acc=<account>&consumers=true&config=true`, the consumer's
    /// `num_pending + num_ack_pending`; in a cluster, from the server that leads the consumer,
    /// which KEDA finds by name under the endpoint's host (`<server_name>.<host>`).
    ///
    /// # Errors
    /// The trigger's key at fault and why.
    pub fn keda_lag(&self, objects: &[Object], md: &Value) -> Result<u64, (&'static str, String)> {
        let endpoint = str_of(&md["natsServerMonitoringEndpoint"]);
        let (host, port) = endpoint
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or((
                "natsServerMonitoringEndpoint",
                format!("{endpoint:?} is not host:port"),
            ))?;
        let account = str_of(&md["account"]);
        let stream_name = str_of(&md["stream"]);
        let consumer_name = str_of(&md["consumer"]);
        let jsz = |host: &str| -> Result<Value, (&'static str, String)> {
            let end =
                resolve(objects, host, port).map_err(|e| ("natsServerMonitoringEndpoint", e))?;
            let local = self.local_port(&end).ok_or((
                "natsServerMonitoringEndpoint",
                format!("{host}:{port}: nothing listens there"),
            ))?;
            let (status, body) = http_get(
                local,
                &format!("/jsz?acc={account}&consumers=true&config=true"),
            )
            .ok_or((
                "natsServerMonitoringEndpoint",
                format!("{host}:{port}: nothing answers"),
            ))?;
            if status != 200 {
                return Err((
                    "natsServerMonitoringEndpoint",
                    format!("{host}:{port}/jsz answered {status}"),
                ));
            }
            serde_json::from_str(&body).map_err(|e| {
                (
                    "natsServerMonitoringEndpoint",
                    format!("{host}:{port}/jsz: {e}"),
                )
            })
        };
        let consumer_in = |jsz: &Value| -> Result<Value, (&'static str, String)> {
            let stream = array(&jsz["account_details"])
                .into_iter()
                .filter(|a| a["name"] == account)
                .flat_map(|a| array(&a["stream_detail"]))
                .find(|s| s["name"] == stream_name)
                .ok_or((
                    "stream",
                    format!("account {account} has no stream {stream_name} on {endpoint}"),
                ))?;
            let names: Vec<&str> = array(&stream["consumer_detail"])
                .into_iter()
                .map(|c| str_of(&c["name"]))
                .collect();
            array(&stream["consumer_detail"])
                .into_iter()
                .find(|c| c["name"] == consumer_name)
                .cloned()
                .ok_or(("consumer", format!(
                    "stream {stream_name} has no consumer {consumer_name} (it has {names:?}); KEDA \
                    would take the stream's last sequence ({}) for the lag, which never falls",
                    stream["state"]["last_seq"]
                )))
        };
        let first = jsz(host)?;
        let mut consumer = consumer_in(&first)?;
        if first["meta_cluster"]["cluster_size"].as_u64().unwrap_or(0) > 1 {
            let leader = str_of(&consumer["cluster"]["leader"]).to_owned();
            consumer = consumer_in(&jsz(&format!("{leader}.{host}"))?)?;
        }
        Ok(consumer["num_pending"].as_u64().unwrap_or(0)
            + consumer["num_ack_pending"].as_u64().unwrap_or(0))
    }

    /// For each KEDA-scaled pool whose workers run here: stops them (SIGTERM; they must exit 0
    /// within the grace period), scores a batch through the pool's gateway, and expects the lag
    /// KEDA reads to rise; starts them again and expects it to fall to 0 and every reward to be OK.
    pub async fn lag_rises_and_falls(&mut self, objects: &[Object]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for so in objects.iter().filter(|o| o.kind() == "ScaledObject") {
            let target = str_of(&so.value["spec"]["scaleTargetRef"]["name"]).to_owned();
            let Some((j, trigger)) = array(&so.value["spec"]["triggers"])
                .into_iter()
                .enumerate()
                .find(|(_, t)| t["type"] == "nats-jetstream")
            else {
                continue;
            };
            let md = &trigger["metadata"];
            let workers: Vec<usize> = (0..self.pods.len())
                .filter(|&i| self.pods[i].workload == target && self.pods[i].not_started.is_none())
                .collect();
            let Some(pool) = workers
                .first()
                .and_then(|&i| {
                    self.pods[i]
                        .containers
                        .iter()
                        .find_map(|c| c.config.as_ref())
                })
                .map(|c| c.worker.pool.clone())
            else {
                continue;
            };
            let gateway = self
                .pods
                .iter()
                .filter(|p| p.not_started.is_none())
                .find_map(|p| {
                    let c = p.containers.iter().find(|c| c.role == Role::Gateway)?;
                    let config = c.config.as_ref()?;
                    (config.worker.pool == pool).then_some(config.gateway.listen.clone())
                });
            let Some(listen) = gateway else {
                problems.push(so.problem(
                    "spec.scaleTargetRef.name",
                    format!("no gateway publishes to pool {pool}: its lag would never rise"),
                ));
                continue;
            };
            let Some(deployment) = find(objects, "Deployment", &target) else {
                continue;
            };
            // Workers drain on SIGTERM within the grace period.
            for &i in &workers {
                let grace = Duration::from_secs(self.pods[i].grace);
                for c in &mut self.pods[i].containers {
                    c.signal("TERM");
                    match c.wait(grace) {
                        Some(s) if s.success() => {}
                        Some(s) => problems.push(deployment.problem(
                            "spec.template.spec.containers",
                            format!(
                                "{} exited with {s} on SIGTERM; its log:\n{}",
                                c.name,
                                c.log_tail()
                            ),
                        )),
                        None => problems.push(deployment.problem(
                            "spec.template.spec.terminationGracePeriodSeconds",
                            format!("{} did not exit within {grace:?} of SIGTERM", c.name),
                        )),
                    }
                }
            }
            let lag = |fleet: &Self| {
                fleet
                    .keda_lag(objects, md)
                    .map_err(|(k, m)| so.problem(format!("spec.triggers[{j}].metadata.{k}"), m))
            };
            let before = match lag(self) {
                Ok(l) => l,
                Err(p) => {
                    problems.push(p);
                    continue;
                }
            };
            // The configuration as written here: the gateway listens on its local port.
            let port: u16 = listen
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap();
            let batch = tokio::spawn(async move {
                let mut client =
                    RewardServiceClient::connect(format!("http://127.0.0.1:{port}")).await?;
                let rewards = client
                    .score_batch(ScoreBatchRequest {
                        profile: String::new(),
                        candidates: candidates(),
                    })
                    .await?
                    .into_inner()
                    .rewards;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(rewards)
            });
            let mut peak = before;
            let risen = Instant::now() + Duration::from_secs(30);
            while peak <= before && Instant::now() < risen {
                tokio::time::sleep(Duration::from_millis(200)).await;
                peak = lag(self).unwrap_or(peak);
            }
            if peak <= before {
                problems.push(so.problem(
                    format!("spec.triggers[{j}].metadata.consumer"),
                    format!(
                        "the lag stayed {peak} while jobs were queued \
                        for pool {pool} with no worker running"
                    ),
                ));
            }
            for &i in &workers {
                for c in &mut self.pods[i].containers {
                    c.spawn();
                }
                self.wait_ready(objects, i).await;
            }
            let fallen = Instant::now() + Duration::from_secs(90);
            let mut now = peak;
            while now > 0 && Instant::now() < fallen {
                tokio::time::sleep(Duration::from_millis(200)).await;
                now = lag(self).unwrap_or(now);
            }
            if now > 0 {
                problems.push(so.problem(
                    format!("spec.triggers[{j}].metadata.consumer"),
                    format!(
                        "the lag was still {now} 90 s after pool {pool}'s workers started again"
                    ),
                ));
            }
            match tokio::time::timeout(Duration::from_secs(90), batch).await {
                Ok(Ok(Ok(rewards))) => {
                    let bad: Vec<String> = rewards
                        .iter()
                        .filter(|r| r.status != reward::Status::Ok as i32)
                        .map(|r| format!("{}: {} {:?}", r.candidate_id, r.error, r.flags))
                        .collect();
                    if !bad.is_empty() || rewards.len() != candidates().len() {
                        problems.push(so.problem(
                            "spec.scaleTargetRef.name",
                            format!(
                                "pool {pool} scored {} of {} candidates OK: {bad:?}",
                                rewards.len() - bad.len(),
                                candidates().len()
                            ),
                        ));
                    }
                }
                other => problems.push(so.problem(
                    "spec.scaleTargetRef.name",
                    format!("the batch for pool {pool} did not complete: {other:?}"),
                )),
            }
            self.notes.push(format!(
                "pool {pool}: KEDA's lag went {before} → {peak} with \
                its workers stopped, and back to {now} once they ran"
            ));
        }
        problems
    }

    /// Stops every process as Kubernetes would (the preStop hook if any, then SIGTERM) in the
    /// reverse order of start, and expects each to exit 0 within its pod's grace period.
    pub fn stop(mut self, objects: &[Object]) -> Vec<Problem> {
        let mut problems = Vec::new();
        for pod in self.pods.iter_mut().rev() {
            let Some(w) = workloads(objects)
                .into_iter()
                .find(|w| w.name() == pod.workload)
            else {
                continue;
            };
            let grace = Duration::from_secs(pod.grace);
            for (i, c) in pod.containers.iter_mut().enumerate() {
                if c.child.is_none() {
                    continue;
                }
                let spec = w.containers()[i];
                let hook: Vec<String> = array(&spec["lifecycle"]["preStop"]["exec"]["command"])
                    .into_iter()
                    .map(|v| str_of(v).to_owned())
                    .collect();
                if let Some(program) = hook.first() {
                    let program = if program.ends_with("nats-server") {
                        nats_server_binary()
                    } else {
                        PathBuf::from(program)
                    };
                    let args: Vec<String> = hook[1..]
                        .iter()
                        .map(|a| rewrite_paths(a, &c.mounts))
                        .collect();
                    let ran = Command::new(&program)
                        .args(&args)
                        .envs(c.env.iter().map(|(k, v)| (k, v)))
                        .output();
                    if !ran.as_ref().is_ok_and(|o| o.status.success()) {
                        problems.push(w.object.problem(
                            format!(
                                "spec.template.spec.containers[{i}].lifecycle.preStop.exec.command"
                            ),
                            format!("{hook:?} failed: {ran:?}"),
                        ));
                    }
                }
                c.signal("TERM");
                match c.wait(grace) {
                    Some(s) if s.success() => {}
                    // nats-server's exit code depends on whether SIGTERM or the end of lame duck
                    // mode stops it first; Kubernetes only needs it gone within the grace period.
                    // The fleet's processes must drain and exit 0.
                    Some(_) if c.role == Role::Nats => {}
                    Some(s) => problems.push(w.object.problem(
                        format!("spec.template.spec.containers[{i}]"),
                        format!(
                            "{} of pod {} exited with {s} on SIGTERM; its log:\n{}",
                            c.name,
                            pod.name,
                            c.log_tail()
                        ),
                    )),
                    None => problems.push(w.object.problem(
                        "spec.template.spec.terminationGracePeriodSeconds",
                        format!(
                            "{} of pod {} did not exit within {grace:?}",
                            c.name, pod.name
                        ),
                    )),
                }
            }
        }
        problems
    }
}

/// A made-up value for key `key` of Secret `name`: the same in every container that reads it.
fn secret_value(name: &str, key: &str) -> String {
    format!("test-{name}-{key}")
}

/// Candidates every profile of the manifests can score: a short question with its reference
/// answer, in two groups of four.
pub fn candidates() -> Vec<Candidate> {
    let responses = [
        "4",
        "The answer is 4.",
        "5",
        "It is four, 4.",
        "2 + 2 = 4",
        "3",
        "four",
        "4!",
    ];
    responses
        .iter()
        .enumerate()
        .map(|(i, r)| Candidate {
            id: format!("deploy-{i}"),
            group_id: format!("g{}", i / 4),
            prompt: vec![ChatMessage {
                role: "user".into(),
                content: "What is 2 + 2?".into(),
            }],
            response: (*r).into(),
            reference: Some("4".into()),
            labels: HashMap::new(),
        })
        .collect()
}

/// Runs a probe of a container against the pod's local ports.
///
/// # Errors
/// The probe's field at fault (`httpGet.port`, …) and what happened.
pub async fn run_probe(
    probe: &Value,
    containers: &[&Value],
    ports: &HashMap<u16, u16>,
) -> Result<(), (String, String)> {
    let local = |handler: &str| -> Result<(u16, u16), (String, String)> {
        let field = format!("{handler}.port");
        let number = port_number(&probe[handler]["port"], containers).ok_or((
            field.clone(),
            format!("{} names no port of the container", probe[handler]["port"]),
        ))?;
        let local = ports.get(&number).copied().ok_or((
            field,
            format!(
                "nothing listens on port {number}: no container of \
                the pod declares it, so no configuration binds it"
            ),
        ))?;
        Ok((number, local))
    };
    if probe["httpGet"].is_object() {
        let (number, local) = local("httpGet")?;
        let path = probe["httpGet"]["path"].as_str().unwrap_or("/");
        return match super::http_status(&format!("127.0.0.1:{local}"), path) {
            None => Err((
                "httpGet.port".into(),
                format!("nothing listens on port {number}"),
            )),
            Some(code) if (200..400).contains(&code) => Ok(()),
            Some(code) => Err((
                "httpGet.path".into(),
                format!("GET {path} on port {number} answered {code}"),
            )),
        };
    }
    if probe["grpc"].is_object() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        let (number, local) = local("grpc")?;
        let service = probe["grpc"]["service"].as_str().unwrap_or("").to_owned();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{local}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| {
                (
                    "grpc.port".to_owned(),
                    format!("nothing listens on port {number}: {e}"),
                )
            })?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .map_err(|e| {
                (
                    "grpc.service".to_owned(),
                    format!("gRPC health of {service:?} on port {number}: {e}"),
                )
            })?
            .into_inner()
            .status;
        return if status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err((
                "grpc.service".into(),
                format!("gRPC health of {service:?} on port {number} is {status}, not SERVING"),
            ))
        };
    }
    if probe["tcpSocket"].is_object() {
        let (number, local) = local("tcpSocket")?;
        return std::net::TcpStream::connect(("127.0.0.1", local))
            .map(|_| ())
            .map_err(|e| {
                (
                    "tcpSocket.port".into(),
                    format!("nothing listens on port {number}: {e}"),
                )
            });
    }
    Err((
        "exec".into(),
        "only httpGet, grpc and tcpSocket probes run here".into(),
    ))
}

/// A file of a pod as it must read here: Service and pod names resolved to local ports,
/// `0.0.0.0:<port>` and nats-server's `port: <port>` lines moved to the local stand-ins of the
/// container ports, judges pointed at the fake judge, mount paths to their folders.
fn rewrite(
    text: &str,
    objects: &[Object],
    ports: &HashMap<u16, u16>,
    ports_of: &HashMap<String, HashMap<u16, u16>>,
    mounts: &[(String, PathBuf)],
    judge_url: &str,
) -> String {
    let mut text = text.to_owned();
    // Judges are outside the fleet: the fake one stands in for them.
    if let Ok(config) = Config::parse(&text) {
        for judge in &config.judge {
            text = text.replace(
                &format!("\"{}\"", judge.base_url),
                &format!("\"{judge_url}\""),
            );
        }
    }
    for (range, host, port) in urls(&text).into_iter().rev() {
        if host == "127.0.0.1" {
            continue;
        }
        if let Ok(end) = resolve(objects, &host, port)
            && let Some(local) = ports_of
                .get(&end.pod)
                .and_then(|p| p.get(&end.container_port))
        {
            text.replace_range(range, &format!("127.0.0.1:{local}"));
        }
    }
    for any in ["0.0.0.0:", "[::]:"] {
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(any) {
            out += &rest[..i];
            let after = &rest[i + any.len()..];
            let digits = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            match after[..digits]
                .parse::<u16>()
                .ok()
                .and_then(|p| ports.get(&p))
            {
                Some(local) => out += &format!("127.0.0.1:{local}"),
                None => out += &format!("127.0.0.1:{}", local_port()),
            }
            rest = &after[digits..];
        }
        out += rest;
        text = out;
    }
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            for key in ["port", "http_port", "http", "monitor_port", "https_port"] {
                if let Some(rest) = trimmed.strip_prefix(key)
                    && let Some(value) = rest
                        .trim_start()
                        .strip_prefix(':')
                        .or_else(|| rest.trim_start().strip_prefix('='))
                    && let Ok(port) = value.trim().parse::<u16>()
                    && let Some(local) = ports.get(&port)
                {
                    let indent = &line[..line.len() - trimmed.len()];
                    return format!("{indent}{key}: {local}");
                }
            }
            line.to_owned()
        })
        .collect();
    let text = lines.join("\n") + if text.ends_with('\n') { "\n" } else { "" };
    rewrite_paths(&text, mounts)
}

/// Mount paths replaced by their local folders wherever a path starts with one (the longest that
/// fits), in one pass: a folder put in is never rewritten again.
fn rewrite_paths(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        let starts = i == 0 || text[..i].ends_with(|c: char| " \"'=:[,\n\t".contains(c));
        let mount = mounts
            .iter()
            .filter(|(m, _)| {
                text[i..].starts_with(m.as_str())
                    && text[i + m.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| c == '/' || " \"',]\n\t".contains(c))
            })
            .max_by_key(|(m, _)| m.len());
        match mount {
            Some((m, local)) if starts => {
                out += &local.display().to_string();
                i += m.len();
            }
            _ => {
                let c = text[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// A copy of `objects` with object `kind/name` changed by `change`.
pub fn mutate(
    objects: &[Object],
    kind: &str,
    name: &str,
    change: impl FnOnce(&mut Value),
) -> Vec<Object> {
    let mut copy = objects.to_vec();
    let o = copy
        .iter_mut()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"));
    change(&mut o.value);
    copy
}

/// The models volume as deploy/README.md fills it: all-MiniLM-L6-v2 exported by
/// scripts/make_test_models.py in `minilm/`; in `rm/`, the GPU pool's scalar reward model, for
/// which the tiny test model stands in (its workers are only checked here, never started).
pub fn models_volume(dir: &Path) -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let minilm = rewardfleet_testkit::test_models("minilm", &[], cache);
    let tiny = rewardfleet_testkit::test_models("tiny", &[], cache);
    let models = dir.join("models");
    fs::create_dir_all(models.join("rm")).unwrap();
    std::os::unix::fs::symlink(&minilm, models.join("minilm")).unwrap();
    std::os::unix::fs::symlink(tiny.join("scalar.pt"), models.join("rm/model.pt")).unwrap();
    std::os::unix::fs::symlink(
        tiny.join("tokenizer.json"),
        models.join("rm/tokenizer.json"),
    )
    .unwrap();
    models
}
