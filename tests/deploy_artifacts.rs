//! Structure checks of the deployment artifacts (product §10), read as the tools read them.
//!
//! These tests hold the artifacts to the properties the deployments rely on, statically and in
//! seconds: the ECS task definition (`packaging/ecs/task-definition.json`), the EKS manifests
//! (`packaging/eks/*.yaml`), the image (`packaging/Dockerfile`) and the daemon settings baked into
//! it (`packaging/container/delegated-auth.yaml`), and the systemd unit with its tmpfiles.d entry.
//! They also cross-check the artifacts against each other: the uid the image runs as, the socket
//! directory every side mounts, and the key file the Agent reads. `scripts/check-deploy` then runs
//! them for real (the packages under a booted systemd, the image under podman as the task
//! definition runs it); no cluster can be had, so the EKS manifests are validated there and their
//! pod played by `scripts/check-kube-play`.
//! Field-name typos are caught separately by `scripts/check-deploy` (botocore's ECS model,
//! `kubernetes-validate --strict`, hadolint, `systemd-analyze verify`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The product's default socket path (§2.2); every deployment must serve it there.
const DEFAULT_SOCKET: &str = "/var/run/datadog/delegated-auth.sock";
/// The binary's path inside the image and in the packages.
const BINARY: &str = "/usr/bin/datadog-delegated-auth";
/// ECS container names the guides refer to.
const SIDECAR: &str = "datadog-delegated-auth";
const AGENT: &str = "datadog-agent";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_file(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml<T: for<'de> Deserialize<'de>>(relative: &str) -> T {
    serde_saphyr::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} does not parse as expected: {e}"))
}

/// Parent directory of a socket or file path, as a string.
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
}

/// True when `path` lies inside `dir` (or is `dir`).
fn is_under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// The numeric uid of a `user` value such as `65532`, `65532:65532` or `0`.
fn uid_of(user: &str) -> u32 {
    user.split(':')
        .next()
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("user {user:?} is not numeric uid[:gid]"))
}

/// The file a `ENC[file@/path]` handle (the Agent's bundled secret helper) points at.
fn enc_file_path(value: &str) -> Option<&str> {
    value.strip_prefix("ENC[file@")?.strip_suffix(']')
}

// ---------------------------------------------------------------------------------------------
// Daemon settings baked into the image (product §2.2), shared by the ECS and EKS checks.

#[derive(Deserialize)]
struct Settings {
    socket: SocketSettings,
    #[serde(default)]
    sinks: Vec<SinkSettings>,
}

#[derive(Deserialize)]
struct SocketSettings {
    path: String,
}

#[derive(Deserialize)]
struct SinkSettings {
    instance: String,
    path: String,
}

/// The sink that writes the `api_key` instance, which the Agent reads as `DD_API_KEY`.
fn api_key_sink(settings: &Settings, origin: &str) -> String {
    settings
        .sinks
        .iter()
        .find(|s| s.instance == "api_key")
        .map(|s| s.path.clone())
        .unwrap_or_else(|| panic!("{origin}: no sink for instance api_key"))
}

// ---------------------------------------------------------------------------------------------
// ECS

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskDefinition {
    task_role_arn: Option<String>,
    #[serde(default)]
    volumes: Vec<EcsVolume>,
    container_definitions: Vec<EcsContainer>,
}

#[derive(Deserialize)]
struct EcsVolume {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EcsContainer {
    name: String,
    essential: Option<bool>,
    user: Option<String>,
    readonly_root_filesystem: Option<bool>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    environment: Vec<EcsEnv>,
    #[serde(default)]
    mount_points: Vec<EcsMount>,
    #[serde(default)]
    depends_on: Vec<EcsDependency>,
    health_check: Option<EcsHealthCheck>,
    linux_parameters: Option<EcsLinuxParameters>,
    memory: Option<u32>,
    memory_reservation: Option<u32>,
}

#[derive(Deserialize)]
struct EcsEnv {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EcsMount {
    source_volume: String,
    container_path: String,
    read_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EcsDependency {
    container_name: String,
    condition: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EcsHealthCheck {
    command: Vec<String>,
    start_period: Option<u32>,
}

#[derive(Deserialize)]
struct EcsLinuxParameters {
    capabilities: Option<EcsCapabilities>,
}

#[derive(Deserialize)]
struct EcsCapabilities {
    #[serde(default)]
    drop: Vec<String>,
}

impl TaskDefinition {
    fn load() -> Self {
        serde_json::from_str(&read("packaging/ecs/task-definition.json"))
            .unwrap_or_else(|e| panic!("packaging/ecs/task-definition.json: {e}"))
    }

    fn container(&self, name: &str) -> &EcsContainer {
        self.container_definitions
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("task definition has no container named {name}"))
    }
}

impl EcsContainer {
    fn env(&self, name: &str) -> Option<&str> {
        self.environment
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value.as_str())
    }

    /// The mount that holds `path`, if any.
    fn mount_for(&self, path: &str) -> Option<&EcsMount> {
        self.mount_points
            .iter()
            .find(|m| is_under(path, &m.container_path))
    }
}

#[test]
fn ecs_task_uses_a_task_role() {
    let task = TaskDefinition::load();
    let role = task
        .task_role_arn
        .as_deref()
        .expect("taskRoleArn must be set: the sidecar proves the task role's identity");
    let (prefix, rest) = role
        .split_once(":role/")
        .unwrap_or_else(|| panic!("taskRoleArn {role:?} is not an IAM role ARN"));
    let account = prefix
        .strip_prefix("arn:aws:iam::")
        .unwrap_or_else(|| panic!("taskRoleArn {role:?} is not an IAM role ARN"));
    assert!(
        account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()),
        "taskRoleArn account {account:?} is not 12 digits"
    );
    assert!(!rest.is_empty(), "taskRoleArn has no role name");
}

#[test]
fn ecs_agent_and_sidecar_share_the_socket_volume() {
    let task = TaskDefinition::load();
    let settings: Settings = yaml("packaging/container/delegated-auth.yaml");
    assert_eq!(
        settings.socket.path, DEFAULT_SOCKET,
        "the image must serve the default socket path, which the Agent-side tools assume"
    );
    let declared: BTreeSet<&str> = task.volumes.iter().map(|v| v.name.as_str()).collect();

    let sidecar_mount = task
        .container(SIDECAR)
        .mount_for(&settings.socket.path)
        .expect("the sidecar mounts no volume at its socket directory");
    let agent_mount = task
        .container(AGENT)
        .mount_for(&settings.socket.path)
        .expect("the Agent mounts no volume at the sidecar's socket directory");

    assert_eq!(sidecar_mount.source_volume, agent_mount.source_volume);
    assert_eq!(sidecar_mount.container_path, agent_mount.container_path);
    assert!(
        declared.contains(sidecar_mount.source_volume.as_str()),
        "volume {} is not declared in volumes",
        sidecar_mount.source_volume
    );
    assert_ne!(
        sidecar_mount.read_only,
        Some(true),
        "the sidecar must be able to create its socket"
    );
    assert_ne!(
        agent_mount.read_only,
        Some(true),
        "the Agent keeps its own sockets in the same directory"
    );
}

#[test]
fn ecs_agent_starts_after_the_sidecar_is_healthy() {
    let task = TaskDefinition::load();
    let agent = task.container(AGENT);
    assert!(
        agent
            .depends_on
            .iter()
            .any(|d| d.container_name == SIDECAR && d.condition == "HEALTHY"),
        "the Agent must dependsOn {SIDECAR} with condition HEALTHY"
    );
    assert_eq!(
        agent.essential,
        Some(true),
        "the Agent is the task's purpose"
    );

    // Every dependency names a container of this task with a condition ECS knows, and the graph
    // has no cycle (ECS rejects both at registration time, late in a deploy).
    let names: BTreeSet<&str> = task
        .container_definitions
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in &task.container_definitions {
        for d in &c.depends_on {
            assert!(
                names.contains(d.container_name.as_str()),
                "{} depends on unknown container {}",
                c.name,
                d.container_name
            );
            assert!(
                ["START", "COMPLETE", "SUCCESS", "HEALTHY"].contains(&d.condition.as_str()),
                "{} has unknown dependsOn condition {}",
                c.name,
                d.condition
            );
            if d.condition == "HEALTHY" {
                assert!(
                    task.container(&d.container_name).health_check.is_some(),
                    "{} waits for {} to be HEALTHY, which has no healthCheck",
                    c.name,
                    d.container_name
                );
            }
            edges
                .entry(c.name.as_str())
                .or_default()
                .push(d.container_name.as_str());
        }
    }
    for start in &names {
        let mut stack = vec![*start];
        let mut seen = BTreeSet::new();
        while let Some(node) = stack.pop() {
            for next in edges.get(node).into_iter().flatten() {
                assert_ne!(next, start, "dependsOn cycle through {start}");
                if seen.insert(*next) {
                    stack.push(next);
                }
            }
        }
    }
}

#[test]
fn ecs_sidecar_health_check_runs_the_binary() {
    let task = TaskDefinition::load();
    let check = task
        .container(SIDECAR)
        .health_check
        .as_ref()
        .expect("the sidecar needs a healthCheck for the Agent's HEALTHY dependency");
    assert_eq!(
        check.command,
        ["CMD", BINARY, "health", "--ready"],
        "exec form (the image has no shell), readiness: the Agent starts once a key can be served"
    );
    assert!(
        check.start_period.unwrap_or(0) >= 10,
        "startPeriod must cover the startup grace (10 s by default)"
    );
}

#[test]
fn ecs_sidecar_is_locked_down() {
    let task = TaskDefinition::load();
    let sidecar = task.container(SIDECAR);
    let user = sidecar.user.as_deref().expect("the sidecar must set user");
    assert_ne!(uid_of(user), 0, "the sidecar must not run as root");
    assert_eq!(
        uid_of(user),
        dockerfile_uid(),
        "task user and image USER differ"
    );
    assert_eq!(sidecar.readonly_root_filesystem, Some(true));
    let drop = &sidecar
        .linux_parameters
        .as_ref()
        .and_then(|l| l.capabilities.as_ref())
        .expect("the sidecar must drop capabilities")
        .drop;
    assert!(drop.iter().any(|c| c == "ALL"), "drop ALL capabilities");
    let (reservation, limit) = (
        sidecar
            .memory_reservation
            .expect("memoryReservation is unset"),
        sidecar.memory.expect("memory (hard limit) is unset"),
    );
    assert!(
        reservation <= limit,
        "memoryReservation {reservation} > memory {limit}"
    );
    let measured = MeasuredMemory::load();
    measured.check(
        "ECS sidecar",
        u64::from(reservation) << 20,
        u64::from(limit) << 20,
    );
}

/// The daemon's memory as the last full benchmark run measured it (`docs/bench.json`, written
/// by `scripts/bench`): the deployment sizes must follow it, not guesses.
struct MeasuredMemory {
    idle: u64,
    peak: u64,
}

impl MeasuredMemory {
    /// Headroom of a request or reservation over the idle RSS.
    const REQUEST_HEADROOM: f64 = 1.25;
    /// Headroom of a hard limit over the peak with 1,000 connected clients.
    const LIMIT_HEADROOM: f64 = 2.0;

    fn load() -> Self {
        let bench: serde_json::Value = serde_json::from_str(&read("docs/bench.json"))
            .unwrap_or_else(|e| panic!("docs/bench.json does not parse: {e}"));
        let kib = |name: &str| {
            bench["memory_kib"][name]
                .as_u64()
                .unwrap_or_else(|| panic!("docs/bench.json has no memory_kib.{name}"))
                * 1024
        };
        let peak = ["peak", "long_poll_1000", "keepalive_1000", "after"]
            .into_iter()
            .map(kib)
            .max()
            .unwrap_or_default();
        MeasuredMemory {
            idle: kib("idle"),
            peak,
        }
    }

    fn check(&self, what: &str, request: u64, limit: u64) {
        assert!(
            request as f64 >= self.idle as f64 * Self::REQUEST_HEADROOM,
            "{what}: a memory request of {request} B leaves too little over the measured idle \
             RSS of {} B",
            self.idle
        );
        assert!(
            limit as f64 >= self.peak as f64 * Self::LIMIT_HEADROOM,
            "{what}: a memory limit of {limit} B is less than twice the measured peak of {} B \
             with 1,000 clients",
            self.peak
        );
    }
}

#[test]
fn ecs_socket_directory_is_prepared_for_the_sidecar_uid() {
    // An ECS bind volume is created root:root 0755; the sidecar (non-root) could not bind there
    // unless a step before it hands the directory to its uid.
    let task = TaskDefinition::load();
    let sidecar = task.container(SIDECAR);
    let uid = uid_of(sidecar.user.as_deref().expect("sidecar user"));
    let socket_dir = parent(DEFAULT_SOCKET);
    let init_names: Vec<&str> = sidecar
        .depends_on
        .iter()
        .filter(|d| d.condition == "SUCCESS" || d.condition == "COMPLETE")
        .map(|d| d.container_name.as_str())
        .collect();
    let init = init_names
        .iter()
        .map(|n| task.container(n))
        .find(|c| {
            c.command
                .iter()
                .any(|a| a.contains(&format!("chown {uid}:")))
        })
        .unwrap_or_else(|| {
            panic!("no container the sidecar waits for (SUCCESS) chowns the socket dir to {uid}")
        });
    assert_eq!(
        init.essential,
        Some(false),
        "a one-shot step must not be essential"
    );
    assert!(init.command.iter().any(|a| a.contains(socket_dir)));
    let init_mount = init
        .mount_for(DEFAULT_SOCKET)
        .expect("the init step does not mount the socket directory");
    let sidecar_mount = sidecar.mount_for(DEFAULT_SOCKET).expect("sidecar mount");
    assert_eq!(init_mount.source_volume, sidecar_mount.source_volume);
}

#[test]
fn ecs_agent_reads_the_key_the_sidecar_writes() {
    let task = TaskDefinition::load();
    let agent = task.container(AGENT);
    let settings: Settings = yaml("packaging/container/delegated-auth.yaml");
    let sink = api_key_sink(&settings, "packaging/container/delegated-auth.yaml");

    let handle = agent
        .env("DD_API_KEY")
        .expect("the Agent has no DD_API_KEY");
    assert_eq!(
        enc_file_path(handle),
        Some(sink.as_str()),
        "the Agent's DD_API_KEY handle must name the sidecar's api_key sink"
    );
    assert_eq!(
        agent.env("DD_SECRET_BACKEND_COMMAND"),
        Some("/readsecret_multiple_providers.sh"),
        "ENC[file@...] handles are resolved by the Agent image's bundled helper"
    );
    let refresh: u32 = agent
        .env("DD_SECRET_REFRESH_INTERVAL")
        .expect("without DD_SECRET_REFRESH_INTERVAL the Agent never sees a rotated key")
        .parse()
        .expect("DD_SECRET_REFRESH_INTERVAL is seconds");
    assert!(refresh > 0);
    // The sink must be on the shared volume, or the Agent container cannot see it.
    let sidecar_mount = task
        .container(SIDECAR)
        .mount_for(&sink)
        .expect("sink mount");
    let agent_mount = agent
        .mount_for(&sink)
        .expect("the Agent does not mount the sink's directory");
    assert_eq!(sidecar_mount.source_volume, agent_mount.source_volume);
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

#[derive(Deserialize)]
struct Meta {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A pod template's metadata: labels only, no name.
#[derive(Deserialize)]
struct PodMeta {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ServiceAccount {
    kind: String,
    metadata: Meta,
}

#[derive(Deserialize)]
struct ConfigMap {
    metadata: Meta,
    data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct DaemonSet {
    kind: String,
    metadata: Meta,
    spec: DaemonSetSpec,
}

#[derive(Deserialize)]
struct DaemonSetSpec {
    selector: Selector,
    template: PodTemplate,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PodTemplate {
    metadata: PodMeta,
    spec: PodSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    service_account_name: Option<String>,
    security_context: Option<PodSecurityContext>,
    #[serde(default)]
    init_containers: Vec<Container>,
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSecurityContext {
    run_as_non_root: Option<bool>,
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    security_context: Option<SecurityContext>,
    liveness_probe: Option<Probe>,
    readiness_probe: Option<Probe>,
    startup_probe: Option<Probe>,
    resources: Option<Resources>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecurityContext {
    run_as_user: Option<u32>,
    run_as_non_root: Option<bool>,
    allow_privilege_escalation: Option<bool>,
    read_only_root_filesystem: Option<bool>,
    capabilities: Option<Capabilities>,
}

#[derive(Deserialize)]
struct Capabilities {
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    add: Vec<String>,
}

#[derive(Deserialize)]
struct Probe {
    exec: Option<ExecAction>,
}

#[derive(Deserialize)]
struct ExecAction {
    command: Vec<String>,
}

#[derive(Deserialize)]
struct Resources {
    #[serde(default)]
    requests: BTreeMap<String, String>,
    #[serde(default)]
    limits: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
    read_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: String,
    host_path: Option<HostPath>,
    config_map: Option<ConfigMapVolume>,
}

#[derive(Deserialize)]
struct HostPath {
    path: String,
}

#[derive(Deserialize)]
struct ConfigMapVolume {
    name: String,
}

impl PodSpec {
    fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("pod has no container named {name}"))
    }

    /// The host directory mounted in `container` at the mount that holds `path`.
    fn host_dir_for(&self, container: &Container, path: &str) -> Option<(String, String)> {
        let mount = container
            .volume_mounts
            .iter()
            .find(|m| is_under(path, &m.mount_path))?;
        let volume = self.volumes.iter().find(|v| v.name == mount.name)?;
        let host = volume.host_path.as_ref()?;
        Some((
            host.path.trim_end_matches('/').to_owned(),
            mount.mount_path.trim_end_matches('/').to_owned(),
        ))
    }
}

impl Container {
    fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }
}

/// Converts a Kubernetes memory quantity (`16Mi`, `1Gi`, `64M`, plain bytes) to bytes.
fn quantity_bytes(q: &str) -> u64 {
    let units: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("numeric quantity") * factor;
        }
    }
    q.parse()
        .unwrap_or_else(|_| panic!("unsupported quantity {q:?}"))
}

fn sidecar_daemonset() -> DaemonSet {
    yaml("packaging/eks/daemonset.yaml")
}

fn eks_settings() -> Settings {
    let cm: ConfigMap = yaml("packaging/eks/configmap.yaml");
    let text = cm
        .data
        .get("delegated-auth.yaml")
        .expect("the ConfigMap has no delegated-auth.yaml");
    serde_saphyr::from_str(text)
        .unwrap_or_else(|e| panic!("ConfigMap delegated-auth.yaml does not parse: {e}"))
}

#[test]
fn eks_service_account_carries_the_irsa_role() {
    let sa: ServiceAccount = yaml("packaging/eks/serviceaccount.yaml");
    assert_eq!(sa.kind, "ServiceAccount");
    let role = sa
        .metadata
        .annotations
        .get("eks.amazonaws.com/role-arn")
        .expect("IRSA needs the eks.amazonaws.com/role-arn annotation");
    assert!(
        role.starts_with("arn:aws:iam::") && role.contains(":role/"),
        "{role:?} is not an IAM role ARN"
    );
    let ds = sidecar_daemonset();
    assert_eq!(
        ds.spec.template.spec.service_account_name.as_deref(),
        Some(sa.metadata.name.as_str()),
        "the DaemonSet must run under the IRSA service account"
    );
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
}

#[test]
fn eks_daemonset_selects_its_own_pods() {
    let ds = sidecar_daemonset();
    assert_eq!(ds.kind, "DaemonSet");
    assert!(!ds.spec.selector.match_labels.is_empty());
    for (k, v) in &ds.spec.selector.match_labels {
        assert_eq!(
            ds.spec.template.metadata.labels.get(k),
            Some(v),
            "selector label {k} is missing from the pod template"
        );
    }
}

#[test]
fn eks_daemonset_is_non_root_with_a_read_only_root() {
    let ds = sidecar_daemonset();
    let pod = &ds.spec.template.spec;
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    let uid = psc.run_as_user.expect("runAsUser");
    assert_ne!(uid, 0);
    assert_eq!(uid, dockerfile_uid(), "pod runAsUser and image USER differ");
    for c in &pod.containers {
        let sc = c
            .security_context
            .as_ref()
            .unwrap_or_else(|| panic!("container {} has no securityContext", c.name));
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_ne!(sc.run_as_non_root, Some(false), "{}", c.name);
        assert_ne!(sc.run_as_user, Some(0), "{}", c.name);
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert!(
            caps.drop.iter().any(|c| c == "ALL"),
            "{} must drop ALL",
            c.name
        );
        assert!(caps.add.is_empty(), "{} adds capabilities", c.name);
    }
}

#[test]
fn eks_only_the_init_step_runs_as_root_and_it_hands_the_dir_to_the_daemon() {
    let ds = sidecar_daemonset();
    let pod = &ds.spec.template.spec;
    let gid = pod
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_group)
        .expect("runAsGroup");
    let uid = pod
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .expect("runAsUser");
    let socket_dir = parent(DEFAULT_SOCKET);
    let init = pod
        .init_containers
        .iter()
        .find(|c| c.command.iter().any(|a| a.contains(socket_dir)))
        .expect("an init container must prepare the hostPath socket directory");
    let script = init.command.join(" ");
    assert!(
        script.contains(&format!("chgrp {gid} {socket_dir}")),
        "the init step must give gid {gid} the socket directory: {script}"
    );
    assert!(
        script.contains(&format!("chown {uid}:{gid}")),
        "the init step must hand the key directory to {uid}:{gid}: {script}"
    );
    let sc = init
        .security_context
        .as_ref()
        .expect("init securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("init capabilities");
    assert!(caps.drop.iter().any(|c| c == "ALL"));
    let added: BTreeSet<&str> = caps.add.iter().map(String::as_str).collect();
    assert!(
        added.is_subset(&BTreeSet::from(["CHOWN", "FOWNER"])),
        "the init step needs CHOWN and FOWNER only, got {added:?}"
    );
    let init_dir = pod.host_dir_for(init, DEFAULT_SOCKET).expect("init mount");
    let main_dir = pod
        .host_dir_for(pod.container("delegated-auth"), DEFAULT_SOCKET)
        .expect("main mount");
    assert_eq!(
        init_dir, main_dir,
        "init and daemon must see the same host dir"
    );
}

#[test]
fn eks_probes_run_the_health_subcommand() {
    let ds = sidecar_daemonset();
    let c = ds.spec.template.spec.container("delegated-auth");
    let exec = |p: &Option<Probe>, what: &str| -> Vec<String> {
        p.as_ref()
            .and_then(|p| p.exec.as_ref())
            .unwrap_or_else(|| panic!("{what} probe must exec the binary"))
            .command
            .clone()
    };
    assert_eq!(exec(&c.liveness_probe, "liveness"), [BINARY, "health"]);
    assert_eq!(
        exec(&c.readiness_probe, "readiness"),
        [BINARY, "health", "--ready"]
    );
    assert_eq!(exec(&c.startup_probe, "startup"), [BINARY, "health"]);
}

#[test]
fn eks_resources_are_requested_and_bounded() {
    let ds = sidecar_daemonset();
    let pod = &ds.spec.template.spec;
    for c in pod.containers.iter().chain(&pod.init_containers) {
        let r = c
            .resources
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no resources", c.name));
        let request = quantity_bytes(r.requests.get("memory").expect("memory request"));
        let limit = quantity_bytes(r.limits.get("memory").expect("memory limit"));
        assert!(
            request > 0 && request <= limit,
            "{}: {request} > {limit}",
            c.name
        );
        assert!(
            r.requests.contains_key("cpu"),
            "{} has no cpu request",
            c.name
        );
    }
    let daemon = pod
        .containers
        .iter()
        .find(|c| c.name == "delegated-auth")
        .expect("the delegated-auth container");
    let r = daemon.resources.as_ref().expect("resources");
    MeasuredMemory::load().check(
        "EKS delegated-auth container",
        quantity_bytes(&r.requests["memory"]),
        quantity_bytes(&r.limits["memory"]),
    );
}

#[test]
fn eks_socket_hostpath_is_shared_with_the_agent_daemonset() {
    let ds = sidecar_daemonset();
    let pod = &ds.spec.template.spec;
    let settings = eks_settings();
    assert_eq!(settings.socket.path, DEFAULT_SOCKET);
    let (host_dir, mount_dir) = pod
        .host_dir_for(pod.container("delegated-auth"), &settings.socket.path)
        .expect("the socket directory must be a hostPath volume");

    let agent: DaemonSet = yaml("packaging/eks/datadog-agent-example.yaml");
    let agent_pod = &agent.spec.template.spec;
    let agent_container = agent_pod.container("agent");
    let (agent_host_dir, agent_mount_dir) = agent_pod
        .host_dir_for(agent_container, &settings.socket.path)
        .expect("the Agent must mount the socket directory from the host");
    assert_eq!(host_dir, agent_host_dir, "different host directories");
    assert_eq!(
        mount_dir, agent_mount_dir,
        "the Agent must see the socket at the default path"
    );

    // The key sink is in the same shared directory, and the Agent's handle names it.
    let sink = api_key_sink(&settings, "ConfigMap delegated-auth.yaml");
    assert!(
        is_under(&sink, &mount_dir),
        "sink {sink} is not on the hostPath"
    );
    assert_eq!(
        enc_file_path(agent_container.env("DD_API_KEY").expect("Agent DD_API_KEY")),
        Some(sink.as_str())
    );
    assert!(agent_container.env("DD_SECRET_REFRESH_INTERVAL").is_some());
}

#[test]
fn eks_config_map_is_mounted_read_only_where_the_daemon_looks() {
    let ds = sidecar_daemonset();
    let pod = &ds.spec.template.spec;
    let cm: ConfigMap = yaml("packaging/eks/configmap.yaml");
    let volume = pod
        .volumes
        .iter()
        .find(|v| {
            v.config_map
                .as_ref()
                .is_some_and(|c| c.name == cm.metadata.name)
        })
        .expect("the ConfigMap is not a volume of the pod");
    let mount = pod
        .container("delegated-auth")
        .volume_mounts
        .iter()
        .find(|m| m.name == volume.name)
        .expect("the ConfigMap volume is not mounted");
    // Default --config and --settings paths (product §2.1, §2.2).
    assert_eq!(mount.mount_path, "/etc/datadog-agent");
    assert_eq!(mount.read_only, Some(true));
    assert!(cm.data.contains_key("datadog.yaml"));
    assert!(cm.data.contains_key("delegated-auth.yaml"));
    assert_eq!(cm.metadata.namespace, ds.metadata.namespace);
}

// ---------------------------------------------------------------------------------------------
// Image

/// The numeric uid of the image's final `USER` instruction.
fn dockerfile_uid() -> u32 {
    let text = read("packaging/Dockerfile");
    let user = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the Dockerfile sets no USER");
    uid_of(user.trim())
}

#[test]
fn image_runs_non_root_with_a_binary_healthcheck() {
    let text = read("packaging/Dockerfile");
    assert_ne!(dockerfile_uid(), 0, "the image must not run as root");
    // The HEALTHCHECK spans continuation lines; join them before looking.
    let joined = text.replace("\\\n", " ");
    let health = joined
        .lines()
        .find(|l| l.trim_start().starts_with("HEALTHCHECK"))
        .expect("the Dockerfile has no HEALTHCHECK");
    assert!(
        health.contains(&format!(r#"CMD ["{BINARY}", "health", "--ready"]"#)),
        "HEALTHCHECK must exec the binary's health subcommand: {health}"
    );
    assert!(joined.contains(&format!(r#"ENTRYPOINT ["{BINARY}"]"#)));
    assert!(
        joined.contains("packaging/container/delegated-auth.yaml"),
        "the container settings must be baked into the image"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

/// `Key=Value` pairs of a unit or tmpfiles file, comments dropped; repeated keys keep all values.
fn unit_entries(relative: &str) -> Vec<(String, String)> {
    read(relative)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn systemd_unit_is_a_watched_notify_service_that_can_reach_its_socket_dir() {
    let entries = unit_entries("systemd/datadog-delegated-auth.service");
    let get = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("Type"), ["notify"]);
    assert_eq!(get("NotifyAccess"), ["main"]);
    assert_eq!(get("ExecStart"), [format!("{BINARY} run").as_str()]);
    assert_eq!(get("Restart"), ["on-failure"]);
    assert_eq!(get("WatchdogSec").len(), 1, "the daemon feeds a watchdog");
    assert_eq!(get("User"), ["dd-delegated-auth"]);
    assert_eq!(get("SupplementaryGroups"), ["dd-agent"]);
    assert_eq!(get("ProtectSystem"), ["strict"]);
    assert_eq!(get("RestartPreventExitStatus"), ["78"], "78 = bad config");

    // /var/run is /run on every systemd host; ProtectSystem=strict leaves the socket directory
    // writable only if ReadWritePaths names it.
    let socket_dir = parent(DEFAULT_SOCKET).replacen("/var/run", "/run", 1);
    assert!(
        get("ReadWritePaths")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .any(|p| is_under(&socket_dir, p.trim_start_matches('-'))),
        "ReadWritePaths must cover {socket_dir}"
    );
    let families: Vec<&str> = get("RestrictAddressFamilies")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    for needed in ["AF_UNIX", "AF_INET"] {
        assert!(
            families.contains(&needed),
            "{needed} is needed (socket, IMDS/STS)"
        );
    }
    // PrivateUsers= would leave dd-agent unmapped and make the socket chgrp fail.
    assert!(get("PrivateUsers").is_empty());
}

#[test]
fn tmpfiles_entry_creates_the_shared_socket_dir_for_the_agent_group() {
    let text = read("systemd/datadog-delegated-auth.tmpfile");
    let socket_dir = parent(DEFAULT_SOCKET).replacen("/var/run", "/run", 1);
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 5 && f[1] == socket_dir)
        .unwrap_or_else(|| panic!("no tmpfiles entry for {socket_dir}"));
    assert_eq!(line[0], "d");
    let mode = u32::from_str_radix(line[2], 8).expect("octal mode");
    assert_eq!(line[4], "dd-agent", "the Agent's group owns the shared dir");
    assert_ne!(mode & 0o020, 0, "the group must be able to create sockets");
    assert_eq!(mode & 0o002, 0, "not world-writable");
    assert_ne!(
        mode & 0o1000,
        0,
        "sticky: neither side may delete the other's socket"
    );
}
