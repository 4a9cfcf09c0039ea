//! Who owns a network namespace: the container (and Kubernetes pod) its processes run in,
//! as recognised from their cgroup path by `collect::cgroup`.
//!
//! Plain data and a short human label; nothing here reads the OS.

use serde::Serialize;

/// The container engine whose cgroup naming matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    /// containerd through its CRI plugin (Kubernetes).
    Containerd,
    /// CRI-O (Kubernetes).
    Crio,
    Podman,
    /// systemd-nspawn, or anything else registered with systemd-machined as a container.
    Nspawn,
    /// LXC / LXD (liblxc).
    Lxc,
}

impl Runtime {
    /// Lower-case name, the same word the JSON uses.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Podman => "podman",
            Runtime::Nspawn => "nspawn",
            Runtime::Lxc => "lxc",
        }
    }

    /// Whether `Container::id` is a 64-hex container id (shortened for display) rather
    /// than a machine or container name (shown whole).
    fn has_hex_id(self) -> bool {
        !matches!(self, Runtime::Nspawn | Runtime::Lxc)
    }
}

/// A container recognised from a cgroup path, optionally enriched with names read from
/// the runtime's on-disk state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub runtime: Runtime,
    /// Full container id as the cgroup path spells it (64 hex digits); for nspawn and LXC
    /// the machine / container name, unescaped.
    pub id: String,
    /// Container name when known: the Docker or Podman name, or the Kubernetes container
    /// name.
    pub name: Option<String>,
    /// The Kubernetes pod the container belongs to.
    pub pod: Option<Pod>,
}

/// A Kubernetes pod, known at least by its UID (which the cgroup path carries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    /// With dashes, as `kubectl get pod -o yaml` prints it (the systemd cgroup driver
    /// writes underscores; they are converted back).
    pub uid: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// How many characters of a hex container id `docker ps` shows.
const SHORT_ID_LEN: usize = 12;
/// How much of a pod UID identifies it for a human: the first group of a UUID and its dash.
const SHORT_UID_LEN: usize = 9;

fn prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl Container {
    /// Short human label: `pod default/web-7d9f (nginx)`, `pod 3f2a1b4c-…`,
    /// `docker redis`, `docker 4f9e2c1a0b3d`, `podman db`, `nspawn build01`.
    pub fn display(&self) -> String {
        if let Some(pod) = &self.pod {
            let mut label = match (&pod.namespace, &pod.name) {
                (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
                (None, Some(name)) => format!("pod {name}"),
                _ if pod.uid.chars().count() > SHORT_UID_LEN => {
                    format!("pod {}…", prefix(&pod.uid, SHORT_UID_LEN))
                }
                _ => format!("pod {}", pod.uid),
            };
            if let Some(name) = &self.name {
                label.push_str(&format!(" ({name})"));
            }
            return label;
        }
        let who = match &self.name {
            Some(name) => name.as_str(),
            None if self.runtime.has_hex_id() => prefix(&self.id, SHORT_ID_LEN),
            None => self.id.as_str(),
        };
        format!("{} {who}", self.runtime.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f9e2c1a0b3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

    fn plain(runtime: Runtime, id: &str, name: Option<&str>) -> Container {
        Container {
            runtime,
            id: id.to_string(),
            name: name.map(str::to_string),
            pod: None,
        }
    }

    fn pod(uid: &str, ns: Option<&str>, name: Option<&str>) -> Option<Pod> {
        Some(Pod {
            uid: uid.to_string(),
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
        })
    }

    #[test]
    fn display_named_and_unnamed_engines() {
        assert_eq!(
            plain(Runtime::Docker, ID, Some("redis")).display(),
            "docker redis"
        );
        assert_eq!(
            plain(Runtime::Docker, ID, None).display(),
            "docker 4f9e2c1a0b3d"
        );
        assert_eq!(
            plain(Runtime::Podman, ID, Some("db")).display(),
            "podman db"
        );
        assert_eq!(
            plain(Runtime::Containerd, ID, None).display(),
            "containerd 4f9e2c1a0b3d"
        );
        assert_eq!(
            plain(Runtime::Crio, ID, None).display(),
            "crio 4f9e2c1a0b3d"
        );
        // Machine names are shown whole, never cut to 12.
        assert_eq!(
            plain(Runtime::Nspawn, "build01-long-machine-name", None).display(),
            "nspawn build01-long-machine-name"
        );
        assert_eq!(plain(Runtime::Lxc, "web", None).display(), "lxc web");
    }

    #[test]
    fn display_pods() {
        let uid = "3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b";
        let mut c = plain(Runtime::Containerd, ID, Some("nginx"));
        c.pod = pod(uid, Some("default"), Some("web-7d9f"));
        assert_eq!(c.display(), "pod default/web-7d9f (nginx)");
        c.name = None;
        assert_eq!(c.display(), "pod default/web-7d9f");
        c.pod = pod(uid, None, None);
        assert_eq!(c.display(), "pod 3f2a1b4c-…");
        c.name = Some("nginx".into());
        assert_eq!(c.display(), "pod 3f2a1b4c-… (nginx)");
        c.pod = pod("short", None, None);
        assert_eq!(c.display(), "pod short (nginx)");
    }

    #[test]
    fn runtime_serialises_lowercase() {
        let c = plain(Runtime::Crio, ID, None);
        let v = serde_json::to_value(&c).expect("serialise");
        assert_eq!(v["runtime"], "crio");
        assert_eq!(v["pod"], serde_json::Value::Null);
        for r in [
            Runtime::Docker,
            Runtime::Containerd,
            Runtime::Crio,
            Runtime::Podman,
            Runtime::Nspawn,
            Runtime::Lxc,
        ] {
            assert_eq!(serde_json::to_value(r).expect("serialise"), r.name());
        }
    }
}
