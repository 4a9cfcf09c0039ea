//! nginx in a snapshot: the files a running master's configuration was read from, kept
//! as text, and read again on loading by the same loader and extractor as a live run
//! (through [`ReplayFs`], which answers from the recorded files and globs).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::format::NginxRec;
use crate::collect::nginx::fs::{fnmatch, ConfigFs, RootedFs};
use crate::collect::nginx::{self, load};
use crate::model::nginx::{ConfigOrigin, NginxInstance, NginxVersion};

/// A [`ConfigFs`] that reads through another and writes down what it gave.
struct RecordingFs<'a> {
    inner: &'a dyn ConfigFs,
    files: RefCell<BTreeMap<String, String>>,
    globs: RefCell<BTreeMap<String, Vec<String>>>,
}

impl ConfigFs for RecordingFs<'_> {
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let bytes = self.inner.read(path, limit)?;
        self.files.borrow_mut().insert(
            path.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        );
        Ok(bytes)
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        let found = self.inner.glob(pattern)?;
        self.globs.borrow_mut().insert(
            pattern.display().to_string(),
            found.iter().map(|p| p.display().to_string()).collect(),
        );
        Ok(found)
    }

    fn host_path(&self, path: &Path) -> Option<PathBuf> {
        self.inner.host_path(path)
    }
}

/// Answers from a recording.
pub struct ReplayFs<'a> {
    rec: &'a NginxRec,
}

impl ConfigFs for ReplayFs<'_> {
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let text = self
            .rec
            .files
            .get(&path.display().to_string())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the snapshot"))?;
        if text.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than the {limit} bytes read per file"),
            ));
        }
        Ok(text.as_bytes().to_vec())
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        if let Some(found) = self.rec.globs.get(&pattern.display().to_string()) {
            return Ok(found.iter().map(PathBuf::from).collect());
        }
        // A glob the recording did not make: match the recorded files.
        let want: Vec<&[u8]> = pattern
            .to_str()
            .unwrap_or("")
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::as_bytes)
            .collect();
        let mut out: Vec<PathBuf> = self
            .rec
            .files
            .keys()
            .filter(|p| {
                let parts: Vec<&[u8]> = p
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .map(str::as_bytes)
                    .collect();
                parts.len() == want.len() && want.iter().zip(&parts).all(|(w, n)| fnmatch(w, n))
            })
            .map(PathBuf::from)
            .collect();
        out.sort();
        Ok(out)
    }

    fn host_path(&self, path: &Path) -> Option<PathBuf> {
        if self.rec.root == "/" {
            return None;
        }
        let mut host = PathBuf::from(&self.rec.root);
        host.extend(path.components().filter(|c| {
            !matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Prefix(_)
            )
        }));
        Some(host)
    }
}

fn origin_name(o: ConfigOrigin) -> &'static str {
    match o {
        ConfigOrigin::CommandLine => "command_line",
        ConfigOrigin::CompiledIn => "compiled_in",
        ConfigOrigin::Given => "given",
        ConfigOrigin::Guessed => "guessed",
    }
}

fn origin_of(s: &str) -> ConfigOrigin {
    match s {
        "command_line" => ConfigOrigin::CommandLine,
        "compiled_in" => ConfigOrigin::CompiledIn,
        "given" => ConfigOrigin::Given,
        _ => ConfigOrigin::Guessed,
    }
}

/// The record of a running instance: its configuration read once more, through a
/// recorder, from where the live run read it (`proc_root` for its command line).
pub fn record(proc_root: &Path, inst: &NginxInstance) -> NginxRec {
    let argv: Vec<String> = inst
        .master_pid
        .map(|pid| crate::collect::nginx::read_argv(&proc_root.join(pid.to_string())))
        .unwrap_or_default();
    let globals = nginx::parse_command_line(&argv).globals;
    let mut rec = NginxRec {
        master_pid: inst.master_pid,
        worker_pids: inst.worker_pids.clone(),
        netns: inst.netns,
        binary: inst.binary.clone(),
        version: inst.version.as_ref().map(|v| v.banner.clone()),
        root: inst.root.clone(),
        config_file: inst.config_file.clone(),
        origin: origin_name(inst.origin).to_string(),
        globals: globals.clone(),
        error: inst.error.clone(),
        files: BTreeMap::new(),
        globs: BTreeMap::new(),
    };
    if inst.error.is_none() {
        let rooted = RootedFs::new(&inst.root);
        let fs = RecordingFs {
            inner: &rooted,
            files: RefCell::new(BTreeMap::new()),
            globs: RefCell::new(BTreeMap::new()),
        };
        if let Err(e) = load::load(&fs, Path::new(&inst.config_file), globals.as_deref()) {
            rec.error = Some(e.to_string());
        }
        rec.files = fs.files.into_inner();
        rec.globs = fs.globs.into_inner();
    }
    rec
}

/// The instance a record describes, its configuration parsed again from the texts.
pub fn replay_instance(rec: &NginxRec) -> NginxInstance {
    let mut inst = NginxInstance {
        master_pid: rec.master_pid,
        worker_pids: rec.worker_pids.clone(),
        netns: rec.netns,
        binary: rec.binary.clone(),
        version: rec.version.as_deref().and_then(NginxVersion::parse),
        root: rec.root.clone(),
        config_file: rec.config_file.clone(),
        origin: origin_of(&rec.origin),
        config: None,
        error: rec.error.clone(),
    };
    if inst.error.is_none() {
        let fs = ReplayFs { rec };
        let path = PathBuf::from(&rec.config_file);
        nginx::read_config(&mut inst, &fs, &path, rec.globals.as_deref());
    }
    inst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_is_parsed_again_from_its_recorded_files() {
        let dir = std::env::temp_dir().join(format!("tcpdoctor-nginx-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("conf.d")).expect("dir");
        let main = dir.join("nginx.conf");
        std::fs::write(
            &main,
            "events { worker_connections 512; }\nhttp { include conf.d/*.conf; }\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("conf.d/app.conf"),
            "upstream backend { server 127.0.0.1:8080; }\nserver { location / { proxy_pass http://backend; } }\n",
        )
        .expect("write");
        let mut live = NginxInstance {
            master_pid: None,
            worker_pids: Vec::new(),
            netns: None,
            binary: None,
            version: NginxVersion::parse("nginx/1.22.1"),
            root: "/".into(),
            config_file: main.display().to_string(),
            origin: ConfigOrigin::Given,
            config: None,
            error: None,
        };
        nginx::read_config(&mut live, &RootedFs::new("/"), &main, None);
        assert!(live.config.is_some(), "{:?}", live.error);
        let rec = record(Path::new("/nonexistent"), &live);
        assert_eq!(rec.files.len(), 2, "{:?}", rec.files.keys());
        let _ = std::fs::remove_dir_all(&dir);
        // The files are gone: the replay reads the recording only.
        let back = replay_instance(&rec);
        assert_eq!(back, live);
    }
}
