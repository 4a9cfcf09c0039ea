//! The host's configuration as a snapshot records it (part of format version 1, added
//! without a version bump: older readers ignore these keys, and files without them
//! load as "not read"): what the sysctl files apply at boot and where the open-files
//! limits of busy processes are set, each with its file, line and the line's text, so
//! `check --from` gives the same findings and the same patches as the live run.
//!
//! Like [`format`](super::format), these types are the file's schema, kept apart from
//! the model; the conversions are here. Fields added later must default.

use serde::{Deserialize, Serialize};

use crate::model::nginx::SourceRef;
use crate::model::persisted::{
    LiveValue, NofileOrigin, NofilePair, NofileSource, OverriddenLine, ParentFacts,
    PersistedSysctl, PersistedSysctls, UnitFiles,
};
use crate::model::Limit;

/// A line of a configuration file, with its text (a fix quotes and patches it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRec {
    pub file: String,
    pub line: u32,
    #[serde(default)]
    pub text: String,
}

impl LineRec {
    fn from_model(s: &SourceRef) -> LineRec {
        LineRec {
            file: s.file.clone(),
            line: s.line,
            text: s.text.clone(),
        }
    }

    fn to_model(&self) -> SourceRef {
        SourceRef {
            file: self.file.clone(),
            line: self.line,
            text: self.text.clone(),
        }
    }
}

/// What the sysctl files set ([`PersistedSysctls`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedRec {
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub hidden: Vec<(String, String)>,
    #[serde(default)]
    pub settings: Vec<SettingRec>,
    #[serde(default)]
    pub skipped: u64,
    #[serde(default)]
    pub skipped_examples: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingRec {
    pub key: String,
    pub value: String,
    pub at: LineRec,
    #[serde(default)]
    pub ignore_errors: bool,
    #[serde(default)]
    pub glob: Option<String>,
    #[serde(default)]
    pub overridden: Vec<ValueAtRec>,
    /// The live value when recorded; `None`: the key is missing on that kernel.
    #[serde(default)]
    pub live: Option<String>,
    /// Set when the key existed but could not be read: why.
    #[serde(default)]
    pub unreadable: Option<String>,
    #[serde(default)]
    pub procps_at: Option<ValueAtRec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueAtRec {
    pub value: String,
    pub at: LineRec,
}

impl ValueAtRec {
    fn from_model(o: &OverriddenLine) -> ValueAtRec {
        ValueAtRec {
            value: o.value.clone(),
            at: LineRec::from_model(&o.at),
        }
    }

    fn to_model(&self) -> OverriddenLine {
        OverriddenLine {
            value: self.value.clone(),
            at: self.at.to_model(),
        }
    }
}

impl PersistedRec {
    pub fn from_model(p: &PersistedSysctls) -> PersistedRec {
        PersistedRec {
            files: p.files.clone(),
            hidden: p.hidden.clone(),
            settings: p
                .settings
                .iter()
                .map(|s| {
                    let (live, unreadable) = match &s.live {
                        LiveValue::Value(v) => (Some(v.clone()), None),
                        LiveValue::Missing => (None, None),
                        LiveValue::Unreadable(why) => (None, Some(why.clone())),
                    };
                    SettingRec {
                        key: s.key.clone(),
                        value: s.value.clone(),
                        at: LineRec::from_model(&s.at),
                        ignore_errors: s.ignore_errors,
                        glob: s.glob.clone(),
                        overridden: s.overridden.iter().map(ValueAtRec::from_model).collect(),
                        live,
                        unreadable,
                        procps_at: s.procps_at.as_ref().map(ValueAtRec::from_model),
                    }
                })
                .collect(),
            skipped: p.skipped,
            skipped_examples: p.skipped_examples.clone(),
        }
    }

    pub fn to_model(&self) -> PersistedSysctls {
        PersistedSysctls {
            files: self.files.clone(),
            hidden: self.hidden.clone(),
            settings: self
                .settings
                .iter()
                .map(|s| PersistedSysctl {
                    key: s.key.clone(),
                    value: s.value.clone(),
                    at: s.at.to_model(),
                    ignore_errors: s.ignore_errors,
                    glob: s.glob.clone(),
                    overridden: s.overridden.iter().map(ValueAtRec::to_model).collect(),
                    live: match (&s.live, &s.unreadable) {
                        (Some(v), _) => LiveValue::Value(v.clone()),
                        (None, Some(why)) => LiveValue::Unreadable(why.clone()),
                        (None, None) => LiveValue::Missing,
                    },
                    procps_at: s.procps_at.as_ref().map(ValueAtRec::to_model),
                })
                .collect(),
            skipped: self.skipped,
            skipped_examples: self.skipped_examples.clone(),
        }
    }
}

/// A soft and hard limit; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NofilePairRec {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

impl NofilePairRec {
    fn from_model(p: &NofilePair) -> NofilePairRec {
        NofilePairRec {
            soft: p.soft.value(),
            hard: p.hard.value(),
        }
    }

    fn to_model(self) -> NofilePair {
        let limit = |v: Option<u64>| v.map_or(Limit::Unlimited, Limit::Value);
        NofilePair {
            soft: limit(self.soft),
            hard: limit(self.hard),
        }
    }
}

/// Where one process's open-files limit is set ([`NofileOrigin`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NofileOriginRec {
    pub pid: u32,
    /// [`NofileSource::name`]; a name this tcpdoctor does not know reads as unknown.
    pub source: String,
    #[serde(default)]
    pub configured: Option<NofilePairRec>,
    #[serde(default)]
    pub matches: Option<bool>,
    #[serde(default)]
    pub at: Option<LineRec>,
    #[serde(default)]
    pub overridden: Vec<LineRec>,
    #[serde(default)]
    pub unit: Option<UnitRec>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub parent: Option<ParentRec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRec {
    pub name: String,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub dropins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRec {
    pub pid: u32,
    pub comm: String,
    #[serde(default)]
    pub nofile: Option<NofilePairRec>,
    #[serde(default)]
    pub shell: bool,
}

fn source_of(name: &str) -> NofileSource {
    [
        NofileSource::Unit,
        NofileSource::ManagerDefault,
        NofileSource::SystemdDefault,
        NofileSource::PamLimits,
        NofileSource::PamUnset,
        NofileSource::ContainerRuntime,
        NofileSource::ParentShell,
    ]
    .into_iter()
    .find(|s| s.name() == name)
    .unwrap_or(NofileSource::Unknown)
}

impl NofileOriginRec {
    pub fn from_model(pid: u32, o: &NofileOrigin) -> NofileOriginRec {
        NofileOriginRec {
            pid,
            source: o.source.name().to_string(),
            configured: o.configured.as_ref().map(NofilePairRec::from_model),
            matches: o.matches,
            at: o.at.as_ref().map(LineRec::from_model),
            overridden: o.overridden.iter().map(LineRec::from_model).collect(),
            unit: o.unit.as_ref().map(|u| UnitRec {
                name: u.name.clone(),
                file: u.file.clone(),
                dropins: u.dropins.clone(),
            }),
            user: o.user.clone(),
            container: o.container.clone(),
            parent: o.parent.as_ref().map(|p| ParentRec {
                pid: p.pid,
                comm: p.comm.clone(),
                nofile: p.nofile.as_ref().map(NofilePairRec::from_model),
                shell: p.shell,
            }),
        }
    }

    pub fn to_model(&self) -> NofileOrigin {
        NofileOrigin {
            source: source_of(&self.source),
            configured: self.configured.map(NofilePairRec::to_model),
            matches: self.matches,
            at: self.at.as_ref().map(LineRec::to_model),
            overridden: self.overridden.iter().map(LineRec::to_model).collect(),
            unit: self.unit.as_ref().map(|u| UnitFiles {
                name: u.name.clone(),
                file: u.file.clone(),
                dropins: u.dropins.clone(),
            }),
            user: self.user.clone(),
            container: self.container.clone(),
            parent: self.parent.as_ref().map(|p| ParentFacts {
                pid: p.pid,
                comm: p.comm.clone(),
                nofile: p.nofile.map(NofilePairRec::to_model),
                shell: p.shell,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(file: &str, line: u32, text: &str) -> SourceRef {
        SourceRef {
            file: file.into(),
            line,
            text: text.into(),
        }
    }

    #[test]
    fn persisted_sysctls_come_back_as_they_went_in() {
        let p = PersistedSysctls {
            files: vec![
                "/etc/sysctl.d/10-tune.conf".into(),
                "/etc/sysctl.conf".into(),
            ],
            hidden: vec![(
                "/usr/lib/sysctl.d/10-tune.conf".into(),
                "/etc/sysctl.d/10-tune.conf".into(),
            )],
            settings: vec![
                PersistedSysctl {
                    key: "net.ipv4.tcp_fin_timeout".into(),
                    value: "10".into(),
                    at: line("/etc/sysctl.conf", 7, "net.ipv4.tcp_fin_timeout = 10"),
                    ignore_errors: false,
                    glob: None,
                    overridden: vec![OverriddenLine {
                        value: "30".into(),
                        at: line(
                            "/etc/sysctl.d/10-tune.conf",
                            2,
                            "net.ipv4.tcp_fin_timeout=30",
                        ),
                    }],
                    live: LiveValue::Value("60".into()),
                    procps_at: None,
                },
                PersistedSysctl {
                    key: "net.ipv4.tcp_tw_recycle".into(),
                    value: "1".into(),
                    at: line("/etc/sysctl.conf", 9, "-net.ipv4.tcp_tw_recycle=1"),
                    ignore_errors: true,
                    glob: None,
                    overridden: vec![],
                    live: LiveValue::Missing,
                    procps_at: None,
                },
                PersistedSysctl {
                    key: "net.ipv4.route.flush".into(),
                    value: "1".into(),
                    at: line("/etc/sysctl.conf", 11, "net.ipv4.route.flush=1"),
                    ignore_errors: false,
                    glob: None,
                    overridden: vec![],
                    live: LiveValue::Unreadable("permission denied".into()),
                    procps_at: None,
                },
            ],
            skipped: 1,
            skipped_examples: vec!["/etc/sysctl.conf:3: no '='".into()],
        };
        let json = serde_json::to_string(&PersistedRec::from_model(&p)).expect("json");
        let back: PersistedRec = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.to_model(), p);
    }

    #[test]
    fn nofile_origins_come_back_and_unknown_sources_read_as_unknown() {
        let o = NofileOrigin {
            source: NofileSource::Unit,
            configured: Some(NofilePair {
                soft: Limit::Value(1024),
                hard: Limit::Unlimited,
            }),
            matches: Some(true),
            at: Some(line(
                "/etc/systemd/system/api.service",
                9,
                "LimitNOFILE=1024:infinity",
            )),
            overridden: vec![line(
                "/usr/lib/systemd/system/api.service",
                12,
                "LimitNOFILE=512",
            )],
            unit: Some(UnitFiles {
                name: "api.service".into(),
                file: Some("/usr/lib/systemd/system/api.service".into()),
                dropins: vec!["/etc/systemd/system/api.service.d/limits.conf".into()],
            }),
            user: None,
            container: None,
            parent: Some(ParentFacts {
                pid: 1,
                comm: "systemd".into(),
                nofile: None,
                shell: false,
            }),
        };
        let json = serde_json::to_string(&NofileOriginRec::from_model(42, &o)).expect("json");
        let back: NofileOriginRec = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.pid, 42);
        assert_eq!(back.to_model(), o);
        let newer = json.replace("\"unit\",", "\"some_future_source\",");
        let back: NofileOriginRec = serde_json::from_str(&newer).expect("parse");
        assert_eq!(back.to_model().source, NofileSource::Unknown);
    }
}
