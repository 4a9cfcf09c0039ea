//! Names the container (and Kubernetes pod) a process runs in, from its cgroup path in
//! `/proc/PID/cgroup`, then fills in human names from container-runtime state on disk.
//!
//! Recognition ([`parse_proc_cgroup`], [`container_from_path`]) is pure string work.
//! [`enrich`] and [`identify`] read files, and never fail: anything missing, unreadable,
//! oversized or malformed leaves a field `None`. Nothing here talks to a runtime's API
//! socket or changes state.
//!
//! Where each path shape comes from (paraphrased from the sources; ids in tests are
//! made up):
//! - runc, systemd cgroup driver (runc `docs/systemd.md`): an OCI `cgroupsPath` of the
//!   form `slice:prefix:name` becomes the transient unit `<prefix>-<name>.scope` inside
//!   `slice`, and a slice name's dashes spell its nesting (`a-b.slice` lives in
//!   `a.slice`). Every `<engine>-<id>.scope` below is this rule applied.
//! - Docker (moby `cmd/dockerd/daemon_systemd_unix.go`, `newCgroupParent`): the systemd
//!   driver passes `system.slice:docker:<id>` -> `/system.slice/docker-<id>.scope`; the
//!   cgroupfs driver uses the parent `docker` -> `/docker/<id>`. Docker-in-Docker nests the
//!   same shape, so the innermost match wins.
//! - Kubernetes (kubelet `pkg/kubelet/cm/cgroup_manager_linux.go`, `CgroupName.ToSystemd`
//!   and `ToCgroupfs`): the pod cgroup is `{kubepods, <qos>, pod<uid>}`; Guaranteed pods
//!   have no QoS level. The systemd driver turns dashes inside a part into underscores
//!   and joins parts with dashes: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid_with_underscores>.slice`; cgroupfs keeps them as
//!   directories: `/kubepods/burstable/pod<uid>`. Static pods have a 32-hex config hash
//!   as UID instead of a UUID.
//! - containerd CRI plugin (`getCgroupsPath`): under a `.slice` parent the container gets
//!   `<slice>:cri-containerd:<id>` -> `cri-containerd-<id>.scope`; otherwise
//!   `<parent>/<id>`, a bare id in the pod directory. Dockershim and cri-dockerd put bare
//!   Docker ids in the same place, so a bare id under a pod is taken as containerd until
//!   [`enrich`] finds Docker state for it.
//! - CRI-O (`internal/config/cgmgr/systemd_linux.go`, `cgroupfs_linux.go`): containers
//!   get `<parent>:crio:<id>` -> `crio-<id>.scope` (cgroupfs: `<parent>/crio-<id>`); its
//!   monitor conmon runs in `crio-conmon-<id>.scope`, which is not the container. With
//!   crun the processes sit one level deeper, in a `container` child.
//! - Podman (libpod `getOCICgroupPath`, `libpod/define` defaults): systemd manager passes
//!   `<base of parent>:libpod:<id>` -> `libpod-<id>.scope`, parent `machine.slice` when
//!   rootful and the user's `user.slice` when rootless; cgroupfs uses
//!   `/libpod_parent/libpod-<id>`. conmon gets `libpod-conmon-<id>.scope`. Containers
//!   running systemd put their processes in a `container` child of the scope.
//! - systemd-nspawn / machined (systemd `src/machine/machine.c`, `machine_start_scope`;
//!   `units/systemd-nspawn@.service.in`): a registered machine gets
//!   `machine-<escaped name>.scope` in `machine.slice`; started as the template service
//!   (`--keep-unit`) it stays in `machine.slice/systemd-nspawn@<escaped name>.service`.
//!   Unit-name escaping writes `-` and other bytes as `\xNN`.
//! - libvirt (`src/util/virsystemd.c`, `virSystemdMakeScopeName`) registers its guests
//!   with machined too: `machine-qemu\x2d<n>\x2d<name>.scope` are VMs, not containers;
//!   `machine-lxc\x2d<n>\x2d<name>.scope` are libvirt LXC containers.
//! - LXC / LXD (liblxc `src/lxc/cgroups/cgroup.h`): the container's cgroup is
//!   `lxc.payload.<name>`, its monitor's `lxc.monitor.<name>`; LXC 3 and older used
//!   `lxc/<name>` (the `lxc/%n` pattern).
//! - `/proc/PID/cgroup` itself (cgroups(7); kernel `proc_cgroup_show`): one line per
//!   hierarchy, `hierarchy-ID:controller-list:path`; the v2 line is `0::path`; paths are
//!   relative to the reader's cgroup namespace, and a v2 path gets ` (deleted)` appended
//!   once the cgroup is removed while the task is still around.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::model::{text, Container, Pod, Runtime};

/// `/proc/PID/cgroup` is one short line per hierarchy; anything longer is not it.
const PROC_CGROUP_MAX: u64 = 64 * 1024;
/// Docker's `config.v2.json` is a few KiB; labels and env rarely push it past 100 KiB.
const DOCKER_CONFIG_MAX: u64 = 4 * 1024 * 1024;
/// containers/storage keeps every container of a store in one JSON array.
const PODMAN_STORE_MAX: u64 = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------
// /proc/PID/cgroup

/// The cgroup paths of a `/proc/PID/cgroup` text worth trying, best first: on a cgroup v2
/// host the `0::` line; on v1 or hybrid hosts the `name=systemd` line, then the pids,
/// cpu and memory controllers, then the v2 line. Within that order a path other than
/// `/` comes before `/`. Malformed lines are skipped.
///
/// A hybrid host can disagree between lines: a runtime that did not join the v2
/// hierarchy leaves `0::` pointing at its daemon's service while the v1 lines name the
/// container, and the reverse happens when only the v2 hierarchy was delegated.
pub fn cgroup_paths(text: &str) -> Vec<&str> {
    let lines: Vec<(u32, &str, &str)> = text.lines().filter_map(parse_line).collect();
    let v1 = lines.iter().any(|&(hierarchy, _, _)| hierarchy != 0);
    let rank = |&(hierarchy, controllers, _): &(u32, &str, &str)| -> Option<u8> {
        if hierarchy == 0 {
            return Some(if v1 { 4 } else { 0 });
        }
        let has = |want: &str| controllers.split(',').any(|c| c == want);
        if has("name=systemd") {
            Some(0)
        } else if has("pids") {
            Some(1)
        } else if has("cpu") {
            Some(2)
        } else if has("memory") {
            Some(3)
        } else {
            None
        }
    };
    let mut ranked: Vec<(bool, u8, &str)> = lines
        .iter()
        .filter_map(|line| rank(line).map(|r| (line.2 == "/", r, line.2)))
        .collect();
    // Stable: equal ranks keep file order.
    ranked.sort_by_key(|&(is_root, r, _)| (is_root, r));
    let mut paths: Vec<&str> = Vec::with_capacity(ranked.len());
    for (_, _, path) in ranked {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

/// One `hierarchy-ID:controller-list:path` line, or `None` if it is not one.
fn parse_line(line: &str) -> Option<(u32, &str, &str)> {
    let mut fields = line.splitn(3, ':');
    let hierarchy: u32 = fields.next()?.trim().parse().ok()?;
    let controllers = fields.next()?;
    let path = fields.next()?;
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    // The v2 line never lists controllers; a v1 line always does.
    if (hierarchy == 0) != controllers.is_empty() || !path.starts_with('/') {
        return None;
    }
    Some((hierarchy, controllers, path))
}

/// From the text of `/proc/PID/cgroup`, the one cgroup path to use (the first of
/// [`cgroup_paths`]). `None` for an empty or entirely malformed text.
pub fn parse_proc_cgroup(text: &str) -> Option<String> {
    cgroup_paths(text).first().map(|p| p.to_string())
}

// ---------------------------------------------------------------------------
// Path recognition

/// What one path component says about the processes below it.
#[derive(Debug, PartialEq, Eq)]
enum Component {
    /// The container's own cgroup.
    Container(Runtime, String),
    /// A runtime's monitor (conmon, lxc monitor): not a container, and nothing below it is.
    Monitor,
    Other,
}

/// Recognises the container a cgroup path belongs to, from the innermost component
/// outward (so Docker-in-Docker names the inner container, and a process in a child
/// cgroup of a container, such as systemd's own tree inside it, still names it).
/// The host (`/`, `/init.scope`, services, user sessions) gives `None`.
pub fn container_from_path(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for i in (0..parts.len()).rev() {
        match classify(&parts[..i], parts[i]) {
            Component::Container(runtime, id) => {
                let pod = parts[..i]
                    .iter()
                    .enumerate()
                    .rev()
                    .find_map(|(j, part)| pod_uid(&parts[..j], part))
                    .map(|uid| Pod {
                        uid,
                        namespace: None,
                        name: None,
                    });
                return Some(Container {
                    runtime,
                    id,
                    name: None,
                    pod,
                });
            }
            Component::Monitor => return None,
            Component::Other => {}
        }
    }
    None
}

/// Classifies `part`, whose ancestors are `above` (outermost first).
fn classify(above: &[&str], part: &str) -> Component {
    // `<engine>-<id>.scope` (systemd driver) or `<engine>-<id>` (cgroupfs driver).
    const ENGINES: [(&str, Runtime); 4] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ];
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in ENGINES {
        if let Some(rest) = stem.strip_prefix(prefix) {
            if rest.starts_with("conmon-") {
                return Component::Monitor;
            }
            if is_container_id(rest) {
                return Component::Container(runtime, rest.to_string());
            }
            return Component::Other;
        }
    }

    if is_container_id(part) {
        let parent = above.last().copied().unwrap_or("");
        if parent == "docker" {
            return Component::Container(Runtime::Docker, part.to_string());
        }
        if pod_uid(&above[..above.len().saturating_sub(1)], parent).is_some() {
            return Component::Container(Runtime::Containerd, part.to_string());
        }
        return Component::Other;
    }

    if let Some(escaped) = part
        .strip_prefix("machine-")
        .and_then(|s| s.strip_suffix(".scope"))
    {
        return match unescape_unit_name(escaped) {
            Some(name) => machine(name),
            None => Component::Other,
        };
    }
    if let Some(escaped) = part
        .strip_prefix("systemd-nspawn@")
        .and_then(|s| s.strip_suffix(".service"))
    {
        return match unescape_unit_name(escaped) {
            Some(name) => Component::Container(Runtime::Nspawn, name),
            None => Component::Other,
        };
    }

    if let Some(name) = part.strip_prefix("lxc.payload.") {
        if !name.is_empty() {
            return Component::Container(Runtime::Lxc, name.to_string());
        }
    }
    if part.starts_with("lxc.monitor.") || part == "lxc.monitor" {
        return Component::Monitor;
    }
    // LXC 3 and older: a top-level `lxc` directory with one child per container.
    if above == ["lxc"] {
        return Component::Container(Runtime::Lxc, part.to_string());
    }
    Component::Other
}

/// A machined machine scope: libvirt guests are told apart by their driver prefix.
fn machine(name: String) -> Component {
    if name.starts_with("qemu-") {
        // A libvirt/QEMU virtual machine: its processes are host processes.
        return Component::Other;
    }
    if let Some(rest) = name.strip_prefix("lxc-") {
        // libvirt LXC: `lxc-<domain id>-<name>`.
        if let Some((n, ct)) = rest.split_once('-') {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !ct.is_empty() {
                return Component::Container(Runtime::Lxc, ct.to_string());
            }
        }
    }
    Component::Container(Runtime::Nspawn, name)
}

/// The pod UID (dashed) if `part` is a Kubernetes pod cgroup, whose ancestors are `above`.
fn pod_uid(above: &[&str], part: &str) -> Option<String> {
    // systemd driver: `kubepods[-<qos>]-pod<uid_with_underscores>.slice`, possibly with
    // a cgroup-root prefix (`kubelet-kubepods-...`).
    if let Some(stem) = part.strip_suffix(".slice") {
        let (head, uid) = stem.rsplit_once("-pod")?;
        if !head.contains("kubepods") {
            return None;
        }
        let uid = uid.replace('_', "-");
        return is_pod_uid(&uid).then_some(uid);
    }
    // cgroupfs driver: `.../kubepods/[<qos>/]pod<uid>`.
    let uid = part.strip_prefix("pod")?;
    let under_kubepods = above.iter().any(|p| p.starts_with("kubepods"));
    (under_kubepods && is_pod_uid(uid)).then(|| uid.to_string())
}

/// A pod UID: a dashed UUID, or the 32-hex config hash static pods get.
fn is_pod_uid(uid: &str) -> bool {
    let hex = uid.bytes().filter(u8::is_ascii_hexdigit).count();
    let dashes = uid.bytes().filter(|&b| b == b'-').count();
    hex == 32 && hex + dashes == uid.len() && (dashes == 0 || dashes == 4)
}

/// A full container id as Docker, containerd, CRI-O and Podman write it: 64 lower-case hex
/// digits. Short or upper-case ids never appear in cgroup paths.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Undoes systemd unit-name escaping (`\x2d` -> `-`). `None` if the result is empty or
/// not UTF-8.
fn unescape_unit_name(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(&[b'x', hi, lo]) = b.get(i + 1..i + 4) {
                let digit = |c: u8| (c as char).to_digit(16);
                if let (Some(h), Some(l)) = (digit(hi), digit(lo)) {
                    // Two hex digits make at most 0xff.
                    out.push((h * 16 + l) as u8);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------
// Enrichment from runtime state on disk

/// Where container runtimes keep the state [`enrich`] reads names from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeRoots {
    /// Docker's data root (`/var/lib/docker`): `containers/<id>/config.v2.json`.
    pub docker: PathBuf,
    /// kubelet's pod log directory (`/var/log/pods`): `<namespace>_<pod>_<uid>/`. The
    /// sibling `containers` directory (`/var/log/containers`, where kubelet links
    /// `<pod>_<namespace>_<container>-<id>.log`) is read too.
    pub pods_log: PathBuf,
    /// containers/storage roots (graph root and run root) holding
    /// `<driver>-containers/containers.json` and `volatile-containers.json`. Rootless
    /// Podman keeps its store in the user's home; add it here to name those containers.
    pub podman: Vec<PathBuf>,
}

impl RuntimeRoots {
    /// The default locations on this host.
    pub fn host() -> RuntimeRoots {
        RuntimeRoots::under(Path::new("/"))
    }

    /// The default locations below `root`: a captured host or a fixture tree.
    pub fn under(root: &Path) -> RuntimeRoots {
        RuntimeRoots {
            docker: root.join("var/lib/docker"),
            pods_log: root.join("var/log/pods"),
            podman: vec![
                root.join("var/lib/containers/storage"),
                root.join("run/containers/storage"),
            ],
        }
    }
}

/// Fills `container.name` and the pod's namespace and name from runtime state under
/// `roots`, where readable. Best effort: never fails, never overwrites a known value.
/// May correct the runtime: a bare id under a pod (containerd or Docker, see the module
/// notes) becomes [`Runtime::Docker`] when Docker holds a container with that id.
pub fn enrich(container: &mut Container, roots: &RuntimeRoots) {
    // nspawn and LXC ids are already names. For the others every path below is built
    // from the id, so only a well-formed one may be used.
    if !is_container_id(&container.id) {
        return;
    }
    match container.runtime {
        Runtime::Docker | Runtime::Containerd => enrich_docker(container, roots),
        Runtime::Podman => enrich_podman(container, roots),
        _ => {}
    }
    if container.pod.is_some() {
        enrich_kubernetes(container, roots);
    }
}

/// Docker: `config.v2.json` carries the name (with a leading `/`) and, for containers
/// made by dockershim / cri-dockerd, kubelet's `io.kubernetes.*` labels.
fn enrich_docker(c: &mut Container, roots: &RuntimeRoots) {
    let path = roots
        .docker
        .join("containers")
        .join(&c.id)
        .join("config.v2.json");
    let Some(config) = read_json::<Value>(&path, DOCKER_CONFIG_MAX) else {
        return;
    };
    if !config.is_object() {
        return;
    }
    c.runtime = Runtime::Docker;
    let labels = config.pointer("/Config/Labels");
    let label = |key: &str| -> Option<String> {
        labels?
            .get(key)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if let Some(uid) = label("io.kubernetes.pod.uid") {
        let pod = c.pod.get_or_insert_with(|| Pod {
            uid: uid.clone(),
            namespace: None,
            name: None,
        });
        if pod.uid == uid {
            fill(&mut pod.namespace, label("io.kubernetes.pod.namespace"));
            fill(&mut pod.name, label("io.kubernetes.pod.name"));
        }
        // The sandbox ("pause") container is named POD; it is the pod, not a container.
        fill(
            &mut c.name,
            label("io.kubernetes.container.name").filter(|n| n != "POD"),
        );
        return;
    }
    let name = config
        .get("Name")
        .and_then(Value::as_str)
        .map(|n| n.trim_start_matches('/'))
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    fill(&mut c.name, name);
}

/// One entry of containers/storage's `containers.json`; other fields are ignored.
#[derive(Deserialize)]
struct StoredContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// Podman: the first of the names containers/storage records for the id.
fn enrich_podman(c: &mut Container, roots: &RuntimeRoots) {
    for root in &roots.podman {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        // One `<driver>-containers` directory per storage driver (overlay, vfs, btrfs...).
        for entry in entries.flatten() {
            let dir_name = entry.file_name();
            if !dir_name.to_string_lossy().ends_with("-containers") {
                continue;
            }
            for file in ["containers.json", "volatile-containers.json"] {
                let path = entry.path().join(file);
                let Some(stored) = read_json::<Vec<StoredContainer>>(&path, PODMAN_STORE_MAX)
                else {
                    continue;
                };
                if let Some(found) = stored.into_iter().find(|s| s.id == c.id) {
                    let name = found.names.into_iter().find(|n| !n.is_empty());
                    fill(&mut c.name, name);
                    return;
                }
            }
        }
    }
}

/// Kubernetes: kubelet names each pod's log directory `<namespace>_<pod>_<uid>` and links
/// each container's log as `<pod>_<namespace>_<container>-<id>.log` in the sibling
/// `containers` directory. Kubernetes names never contain `_`, so the split is exact.
fn enrich_kubernetes(c: &mut Container, roots: &RuntimeRoots) {
    let Some(pod) = c.pod.as_mut() else {
        return;
    };
    if pod.namespace.is_none() || pod.name.is_none() {
        let suffix = format!("_{}", pod.uid);
        if let Some(dir) = find_entry(&roots.pods_log, |n| n.ends_with(&suffix)) {
            if let [ns, name, uid] = dir.split('_').collect::<Vec<_>>()[..] {
                if uid == pod.uid && !ns.is_empty() && !name.is_empty() {
                    fill(&mut pod.namespace, Some(ns.to_string()));
                    fill(&mut pod.name, Some(name.to_string()));
                }
            }
        }
    }
    if c.name.is_some() {
        return;
    }
    let Some(containers_log) = roots.pods_log.parent().map(|p| p.join("containers")) else {
        return;
    };
    let suffix = format!("-{}.log", c.id);
    let Some(link) = find_entry(&containers_log, |n| n.ends_with(&suffix)) else {
        return;
    };
    let Some(stem) = link.strip_suffix(&suffix) else {
        return;
    };
    if let [pod_name, ns, container] = stem.split('_').collect::<Vec<_>>()[..] {
        let agrees =
            |known: &Option<String>, seen: &str| known.as_deref().is_none_or(|k| k == seen);
        if container.is_empty() || !agrees(&pod.namespace, ns) || !agrees(&pod.name, pod_name) {
            return;
        }
        fill(
            &mut pod.namespace,
            Some(ns.to_string()).filter(|s| !s.is_empty()),
        );
        fill(
            &mut pod.name,
            Some(pod_name.to_string()).filter(|s| !s.is_empty()),
        );
        c.name = Some(container.to_string());
    }
}

/// Sets `slot` from `value` unless it is already known.
fn fill(slot: &mut Option<String>, value: Option<String>) {
    if slot.is_none() {
        *slot = value;
    }
}

/// The first entry of `dir` whose (UTF-8) name satisfies `want`.
fn find_entry(dir: &Path, want: impl Fn(&str) -> bool) -> Option<String> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| want(n))
}

/// Reads at most `max` bytes of the regular file `path`; `None` if it cannot be read, is
/// not a regular file or is longer ([`super::bounded::read`]).
fn read_bounded(path: &Path, max: u64) -> Option<Vec<u8>> {
    super::bounded::read(path, max).ok()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, max: u64) -> Option<T> {
    serde_json::from_slice(&read_bounded(path, max)?).ok()
}

/// The container process `pid` runs in, named as far as the runtime state under `roots`
/// allows: reads `proc_root/PID/cgroup`, tries its paths in [`cgroup_paths`] order, and
/// enriches the first one recognised. `None` for host processes, vanished pids and
/// unreadable files.
pub fn identify(proc_root: &Path, pid: u32, roots: &RuntimeRoots) -> Option<Container> {
    let raw = read_bounded(
        &proc_root.join(pid.to_string()).join("cgroup"),
        PROC_CGROUP_MAX,
    )?;
    let text = String::from_utf8_lossy(&raw);
    let mut container = cgroup_paths(&text)
        .into_iter()
        .find_map(container_from_path)?;
    enrich(&mut container, roots);
    sanitize(&mut container);
    Some(container)
}

/// Names that are printed and put in `--netns` hints: no control characters, bounded
/// ([`text::clean`]). The cgroup file and the runtimes' state files are not ours: a
/// replayed capture holds whatever its author wrote.
fn sanitize(c: &mut Container) {
    // nspawn and LXC ids are machine names (up to 255 bytes): keep them whole where
    // they fit, as namespace names are.
    c.id = text::clean(&c.id, text::NETNS_NAME_MAX);
    let short = |s: &mut String| *s = text::clean(s, text::NETNS_NAME_MAX);
    if let Some(n) = c.name.as_mut() {
        short(n);
    }
    if let Some(p) = c.pod.as_mut() {
        short(&mut p.uid);
        if let Some(n) = p.namespace.as_mut() {
            short(n);
        }
        if let Some(n) = p.name.as_mut() {
            short(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text of one `/proc/PID/cgroup` case from `tests/fixtures/cgroup/proc/`.
    macro_rules! case {
        ($name:literal) => {
            include_str!(concat!(
                "../../tests/fixtures/cgroup/proc/",
                $name,
                ".cgroup"
            ))
        };
    }
    /// Bytes of one case from `tests/fixtures/cgroup/malformed/`.
    macro_rules! malformed {
        ($name:literal) => {
            include_bytes!(concat!(
                "../../tests/fixtures/cgroup/malformed/",
                $name,
                ".cgroup"
            ))
        };
    }

    /// The fake host of `tests/fixtures/cgroup/state/`: `proc/` plus runtime state.
    fn state_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup/state")
    }

    /// Recognition of a whole `/proc/PID/cgroup` text as `identify` does it, without I/O.
    fn recognise(text: &str) -> Option<Container> {
        cgroup_paths(text).into_iter().find_map(container_from_path)
    }

    #[track_caller]
    fn fires(text: &str, runtime: Runtime, id: &str, pod_uid: Option<&str>) {
        let c = recognise(text).unwrap_or_else(|| panic!("not recognised: {text:?}"));
        assert_eq!(c.runtime, runtime, "{text:?}");
        assert_eq!(c.id, id, "{text:?}");
        assert_eq!(c.pod.as_ref().map(|p| p.uid.as_str()), pod_uid, "{text:?}");
        assert_eq!(c.name, None, "recognition alone never names: {text:?}");
        if let Some(pod) = &c.pod {
            assert_eq!((&pod.namespace, &pod.name), (&None, &None));
        }
    }

    #[track_caller]
    fn does_not_fire(text: &str) {
        assert_eq!(recognise(text), None, "{text:?}");
    }

    #[test]
    fn docker_formats_fire() {
        fires(
            case!("docker-systemd-v2"),
            Runtime::Docker,
            "661ac0a7cd602ec05a3e6005b7e872b86a53b110ab10c3747ede0c9c34dc3f06",
            None,
        );
        fires(
            case!("docker-cgroupfs-v2"),
            Runtime::Docker,
            "e99238bc928876a7231633764f45ac5b2b53169ac399225b9422a33c2607264a",
            None,
        );
        // Docker-in-Docker: the inner container, not the outer one.
        fires(
            case!("docker-in-docker-v2"),
            Runtime::Docker,
            "d2382942c4480e458cdd4ec2ea2cef11437910028e177f54a4395bbcb0116011",
            None,
        );
        // Removed while the task lingers: the kernel appends " (deleted)".
        fires(
            case!("docker-systemd-v2-deleted"),
            Runtime::Docker,
            "7773283126b0a998fdd2c160f95efcf799fb44981e4f8542d565049da4b91e85",
            None,
        );
    }

    #[test]
    fn docker_on_a_hybrid_host_uses_the_v1_lines() {
        let text = case!("docker-cgroupfs-v1-hybrid");
        // The v2 line still points at containerd's service: runc did not join it.
        assert_eq!(
            parse_proc_cgroup(text).as_deref(),
            Some("/docker/0ad55ba4c86b68c95839ca95cc0f7f3aee85a66ecf06174d53040cdb8c7355d5")
        );
        fires(
            text,
            Runtime::Docker,
            "0ad55ba4c86b68c95839ca95cc0f7f3aee85a66ecf06174d53040cdb8c7355d5",
            None,
        );
    }

    #[test]
    fn kubernetes_containerd_formats_fire() {
        fires(
            case!("k8s-containerd-systemd-burstable"),
            Runtime::Containerd,
            "45547611be1e154bc91418c84d5e7b63f8b19211a0cca541ab04e0c459614a35",
            Some("9214c9c2-fec6-4275-b24f-bbbaf7295449"),
        );
        fires(
            case!("k8s-containerd-systemd-besteffort"),
            Runtime::Containerd,
            "4408229e52759ac16decc0e691c9968231d409c3d5dbdb7a70b85504b79cb21c",
            Some("2b42b444-e8c0-4e6c-b594-56b16f42d37e"),
        );
        // Guaranteed pods sit directly in kubepods.slice, no QoS slice.
        fires(
            case!("k8s-containerd-systemd-guaranteed"),
            Runtime::Containerd,
            "33d7e0b64fc9092b67158c9a540b8a2debb3ae7d7d349a64d003a30d3124d296",
            Some("eb3887de-293c-4c3b-93c3-37ff63980d14"),
        );
        fires(
            case!("k8s-containerd-cgroupfs-burstable"),
            Runtime::Containerd,
            "0e5b62d0a4128f245267813159445b91f890c16e0ad415e00ad1bae8448293ce",
            Some("de1b5360-21a8-447c-afd4-9de19691a333"),
        );
        fires(
            case!("k8s-containerd-cgroupfs-guaranteed"),
            Runtime::Containerd,
            "a111b718c1525408c142a50c20e49026c2e0b989e58884304b409187ba2d71a4",
            Some("cdae7f09-7658-4516-a86b-2d7ba5d8beb2"),
        );
        // Static pods: the UID is a 32-hex config hash, no dashes to restore.
        fires(
            case!("k8s-containerd-systemd-static-pod"),
            Runtime::Containerd,
            "0b3c6f0e4d587475e89006c9f4939de427d4103e38227419c2b017e7a3e89c9f",
            Some("d34dfdc3c910b802fe04c698c54610e3"),
        );
        // kind: kubelet with cgroup root /kubelet, inside a Docker container.
        fires(
            case!("k8s-kind-nested"),
            Runtime::Containerd,
            "8e631c17820181a99d1a7fc6b899b6848988838cd7e02f22a4e51a6b2820e110",
            Some("5dbdbeaf-b518-4045-913d-ff3445944d32"),
        );
    }

    #[test]
    fn kubernetes_crio_formats_fire_and_conmon_does_not() {
        fires(
            case!("k8s-crio-systemd"),
            Runtime::Crio,
            "2b28e5963255f40c68bd0f0cfc7b39d0f02b546c2dfe631de7c0cecd610d034f",
            Some("d8532a6d-267f-4f05-a233-e37dc34913c3"),
        );
        fires(
            case!("k8s-crio-systemd-crun"),
            Runtime::Crio,
            "eac23aac3b9a260135ba0458cf5d816dc88933e1eb1185554beb1aa82e304c01",
            Some("d8532a6d-267f-4f05-a233-e37dc34913c3"),
        );
        fires(
            case!("k8s-crio-cgroupfs"),
            Runtime::Crio,
            "3754e406506d6e1e683627d76cd084c816d0202570a03f1eb20271c3098995f7",
            Some("08441a9b-f746-428e-878f-96803334eb04"),
        );
        does_not_fire(case!("k8s-crio-conmon"));
    }

    #[test]
    fn kubernetes_dockershim_formats_fire() {
        // A bare id in a pod directory reads as containerd until enrich finds Docker state.
        fires(
            case!("k8s-dockershim-cgroupfs-v1"),
            Runtime::Containerd,
            "6511bb221ef3837f10b67c62e369e6e350b2679876ab14b092e203fc293889ef",
            Some("c431b547-fafe-4daf-9b6c-f664897b5c3b"),
        );
        fires(
            case!("k8s-dockershim-systemd-v1"),
            Runtime::Docker,
            "df62f1aff467950ea7f653abb37edb2cd06fb3aa71c0a509df4c41716eb5aa31",
            Some("9bb1f349-683a-4b4c-b6b8-d1007fe37e99"),
        );
    }

    #[test]
    fn podman_formats_fire_and_conmon_does_not() {
        fires(
            case!("podman-rootful-v2"),
            Runtime::Podman,
            "eb62a3542aaae33f5cd43ff3649f945a6c1af1db1a6d9d95ee1ed38fcdf9cb5c",
            None,
        );
        fires(
            case!("podman-systemd-in-container-v2"),
            Runtime::Podman,
            "3ab492242ad56189e6bc3c7a4e572cad2bbbe1e3c74cf346fca1d8834168edce",
            None,
        );
        fires(
            case!("podman-rootless-v2"),
            Runtime::Podman,
            "061d25d249d0eb409c9ad2e4cec87f9a5cdf75a547e65787093afd728d68e4fa",
            None,
        );
        fires(
            case!("podman-cgroupfs-v2"),
            Runtime::Podman,
            "186f12064a57a1867f0256eea483828b707a8acd962b6ee9ae6cb9bf36c06734",
            None,
        );
        does_not_fire(case!("podman-conmon-v2"));
    }

    #[test]
    fn nspawn_and_lxc_formats_fire() {
        fires(case!("nspawn-service-v2"), Runtime::Nspawn, "build01", None);
        fires(
            case!("nspawn-service-inner-unit-v2"),
            Runtime::Nspawn,
            "build01",
            None,
        );
        fires(
            case!("nspawn-machine-scope-escaped-v2"),
            Runtime::Nspawn,
            "build-box-02",
            None,
        );
        fires(case!("libvirt-lxc-v2"), Runtime::Lxc, "webct", None);
        fires(case!("lxc-payload-v2"), Runtime::Lxc, "web01", None);
        fires(case!("lxc-legacy-v1"), Runtime::Lxc, "web01", None);
        does_not_fire(case!("lxc-monitor-v2"));
        // A libvirt VM is registered with machined too, but it is not a container.
        does_not_fire(case!("libvirt-qemu-vm-v2"));
    }

    #[test]
    fn host_paths_do_not_fire() {
        for text in [
            case!("host-root-v2"),
            case!("host-init-v2"),
            case!("host-sshd-v2"),
            case!("host-dockerd-v2"),
            case!("host-user-session-v2"),
            case!("host-user-manager-v2"),
            case!("host-pod-slice-only-v2"),
            case!("host-sshd-v1-hybrid"),
        ] {
            does_not_fire(text);
        }
        for path in [
            "/",
            "",
            "/system.slice",
            "/machine.slice",
            "/kubepods",
            "/docker",
        ] {
            assert_eq!(container_from_path(path), None, "{path:?}");
        }
    }

    #[test]
    fn malformed_inputs_give_none() {
        let cases: [(&str, &[u8]); 12] = [
            ("empty", malformed!("empty")),
            ("garbage", malformed!("garbage")),
            ("truncated-id", malformed!("truncated-id")),
            ("truncated-file", malformed!("truncated-file")),
            ("nonhex-id", malformed!("nonhex-id")),
            ("uppercase-id", malformed!("uppercase-id")),
            ("overlong-id", malformed!("overlong-id")),
            ("empty-id", malformed!("empty-id")),
            ("relative-path", malformed!("relative-path")),
            ("bad-pod-uid", malformed!("bad-pod-uid")),
            ("bare-id-outside-pod", malformed!("bare-id-outside-pod")),
            ("invalid-utf8", malformed!("invalid-utf8")),
        ];
        for (name, bytes) in cases {
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(recognise(&text), None, "{name}");
        }
        // Lines that are not `id:controllers:/path` are skipped, not guessed at.
        assert_eq!(parse_proc_cgroup(""), None);
        assert_eq!(
            parse_proc_cgroup(&String::from_utf8_lossy(malformed!("garbage"))),
            None
        );
        assert_eq!(
            parse_proc_cgroup(&String::from_utf8_lossy(malformed!("relative-path"))),
            None
        );
    }

    #[test]
    fn parse_picks_the_line_to_use() {
        // Pure v2: the only line.
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/sshd.service\n").as_deref(),
            Some("/system.slice/sshd.service")
        );
        assert_eq!(parse_proc_cgroup("0::/\n").as_deref(), Some("/"));
        // v1 without name=systemd: pids, then cpu, then memory.
        assert_eq!(
            parse_proc_cgroup("4:memory:/m\n3:cpu,cpuacct:/c\n2:pids:/p\n").as_deref(),
            Some("/p")
        );
        assert_eq!(
            parse_proc_cgroup("4:memory:/m\n3:cpu,cpuacct:/c\n").as_deref(),
            Some("/c")
        );
        // `cpuset` is not `cpu`.
        assert_eq!(
            parse_proc_cgroup("8:cpuset:/s\n4:memory:/m\n").as_deref(),
            Some("/m")
        );
        // A hybrid host whose v1 lines all say `/` but whose v2 line does not (only the
        // v2 hierarchy was delegated): the informative path wins over the root.
        let text = "9:name=systemd:/\n8:pids:/\n1:cpu:/\n0::/tcpdoctor.slice/docker-661ac0a7cd602ec05a3e6005b7e872b86a53b110ab10c3747ede0c9c34dc3f06.scope\n";
        assert_eq!(
            cgroup_paths(text),
            vec![
                "/tcpdoctor.slice/docker-661ac0a7cd602ec05a3e6005b7e872b86a53b110ab10c3747ede0c9c34dc3f06.scope",
                "/"
            ]
        );
        fires(
            text,
            Runtime::Docker,
            "661ac0a7cd602ec05a3e6005b7e872b86a53b110ab10c3747ede0c9c34dc3f06",
            None,
        );
        // Deleted cgroups lose the marker.
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/x.service (deleted)\n").as_deref(),
            Some("/system.slice/x.service")
        );
    }

    #[test]
    fn unit_name_unescaping() {
        assert_eq!(
            unescape_unit_name(r"build\x2dbox\x2d02").as_deref(),
            Some("build-box-02")
        );
        assert_eq!(unescape_unit_name("plain").as_deref(), Some("plain"));
        // Incomplete or invalid escapes stay as written.
        assert_eq!(unescape_unit_name(r"a\x2").as_deref(), Some(r"a\x2"));
        assert_eq!(unescape_unit_name(r"a\xzz").as_deref(), Some(r"a\xzz"));
        assert_eq!(unescape_unit_name(r"a\").as_deref(), Some(r"a\"));
        assert_eq!(unescape_unit_name(""), None);
        // A lone high byte is not UTF-8.
        assert_eq!(unescape_unit_name(r"\xff"), None);
    }

    #[test]
    fn pod_uid_shapes() {
        assert!(is_pod_uid("9214c9c2-fec6-4275-b24f-bbbaf7295449"));
        assert!(is_pod_uid("d34dfdc3c910b802fe04c698c54610e3"));
        assert!(!is_pod_uid("not-a-uid"));
        assert!(!is_pod_uid("9214c9c2-fec6-4275-b24f-bbbaf72954490"));
        // Truncated, and dashes in the wrong number.
        assert!(!is_pod_uid("9214c9c2-fec6-4275-b24f-"));
        assert!(!is_pod_uid("9214c9c2-fec6-4275-b24f-bbbaf729544-9"));
        assert!(!is_pod_uid(""));
    }

    fn identify_state(pid: u32) -> Option<Container> {
        let root = state_root();
        identify(&root.join("proc"), pid, &RuntimeRoots::under(&root))
    }

    #[test]
    fn identify_names_containers_from_runtime_state() {
        assert_eq!(identify_state(1), None, "init is the host");
        assert_eq!(identify_state(999_999), None, "no such pid");

        let redis = identify_state(2101).expect("docker container");
        assert_eq!(redis.runtime, Runtime::Docker);
        assert_eq!(
            redis.id,
            "921cf263065b832a884b18c419fe103d97b379b03e603e5f7789cfc4fa70298e"
        );
        assert_eq!(redis.display(), "docker redis");

        // Dockershim: a bare id under a cgroupfs pod, corrected to Docker by its state,
        // and named by kubelet's labels rather than the k8s_... Docker name.
        let coredns = identify_state(2202).expect("dockershim container");
        assert_eq!(coredns.runtime, Runtime::Docker);
        assert_eq!(
            coredns.pod,
            Some(Pod {
                uid: "e814febd-78d1-4688-8e6d-fc32ba2ca91f".into(),
                namespace: Some("kube-system".into()),
                name: Some("coredns-5d78c9869d-8xk2p".into()),
            })
        );
        assert_eq!(coredns.name.as_deref(), Some("coredns"));
        assert_eq!(
            coredns.display(),
            "pod kube-system/coredns-5d78c9869d-8xk2p (coredns)"
        );

        let nginx = identify_state(2303).expect("containerd container");
        assert_eq!(nginx.runtime, Runtime::Containerd);
        assert_eq!(nginx.display(), "pod default/web-7d9f8b6c5d-x2x4q (nginx)");
        // The pod's sandbox has no log of its own: pod known, container name not.
        let sandbox = identify_state(2304).expect("sandbox container");
        assert_eq!(
            sandbox.id,
            "7508dd7fbec6492af2d7cd747b070592d0d888a72bdce48667898eb2ecf40cb3"
        );
        assert_eq!(sandbox.name, None);
        assert_eq!(sandbox.display(), "pod default/web-7d9f8b6c5d-x2x4q");

        assert_eq!(identify_state(2404).expect("podman").display(), "podman db");
        // Found in the run root's volatile store.
        assert_eq!(
            identify_state(2405).expect("podman").display(),
            "podman cache"
        );
        assert_eq!(
            identify_state(2505).expect("nspawn").display(),
            "nspawn build-box-02"
        );
        // Half-written config.v2.json, and no state at all: still Docker, unnamed.
        let broken = identify_state(2606).expect("docker");
        assert_eq!((broken.runtime, broken.name), (Runtime::Docker, None));
        assert_eq!(
            identify_state(2607).expect("docker").display(),
            "docker aa2af4676021"
        );
        // A pod the logs do not know: UID only.
        assert_eq!(
            identify_state(2708).expect("crio").display(),
            "pod 6272e8d8-…"
        );
    }

    #[test]
    fn enrich_without_state_changes_nothing() {
        let nowhere = RuntimeRoots::under(Path::new("/nonexistent/tcpdoctor-test"));
        let text = case!("k8s-dockershim-cgroupfs-v1");
        let mut c = recognise(text).expect("recognised");
        let before = c.clone();
        enrich(&mut c, &nowhere);
        assert_eq!(c, before);
    }

    #[test]
    fn enrich_keeps_known_names() {
        let root = state_root();
        let mut c = Container {
            runtime: Runtime::Docker,
            id: "921cf263065b832a884b18c419fe103d97b379b03e603e5f7789cfc4fa70298e".into(),
            name: Some("set-by-caller".into()),
            pod: None,
        };
        enrich(&mut c, &RuntimeRoots::under(&root));
        assert_eq!(c.name.as_deref(), Some("set-by-caller"));
    }

    #[test]
    fn enrich_never_builds_paths_from_bad_ids() {
        let root = state_root();
        let mut c = Container {
            runtime: Runtime::Docker,
            id: "../../../../etc".into(),
            name: None,
            pod: None,
        };
        enrich(&mut c, &RuntimeRoots::under(&root));
        assert_eq!(c.name, None);
    }

    #[test]
    fn reads_are_bounded() {
        let path = state_root().join("var/lib/docker/containers/921cf263065b832a884b18c419fe103d97b379b03e603e5f7789cfc4fa70298e/config.v2.json");
        let len = fs::metadata(&path).expect("fixture").len();
        assert!(read_bounded(&path, len).is_some());
        assert!(read_bounded(&path, len - 1).is_none());
        assert!(read_bounded(Path::new("/nonexistent/tcpdoctor"), 10).is_none());
    }
}
