use std::path::{Path, PathBuf};
use tcpdoctor::collect::nginx::{extract, fs::RootedFs, load, parse};
fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out)
        } else {
            out.push(p)
        }
    }
}
fn main() {
    for dir in std::env::args().skip(1) {
        let mut files = Vec::new();
        walk(Path::new(&dir), &mut files);
        files.sort();
        let (mut ok, mut bad, mut wl, mut wbad) = (0, 0, 0, 0);
        for f in &files {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            let is_conf = name.ends_with(".conf")
                || name == "mime.types"
                || name.ends_with("_params")
                || name.starts_with("nginx.conf")
                || name.ends_with(".nginx")
                || f.to_string_lossy().contains("/nginx/") && !name.contains('.');
            if !is_conf {
                continue;
            }
            let bytes = std::fs::read(f).unwrap();
            match parse::parse(&bytes, 0) {
                Ok(_) => ok += 1,
                Err(e) => {
                    bad += 1;
                    println!("PARSE-FAIL {}:{}: {}", f.display(), e.line, e.message);
                }
            }
            if name == "nginx.conf" {
                wl += 1;
                match load::load(&RootedFs::new("/"), f, None) {
                    Ok(c) => {
                        let x = extract::extract(&c);
                        println!(
                            "LOAD-OK {} files={} servers={} upstreams={} proxied={}",
                            f.display(),
                            c.files.len(),
                            x.servers.len(),
                            x.upstreams.len(),
                            x.proxied().count()
                        );
                    }
                    Err(e) => {
                        wbad += 1;
                        println!("LOAD-FAIL {e}");
                    }
                }
            }
        }
        println!("== {dir}: {ok} parsed, {bad} failed; whole configs: {wl} tried, {wbad} failed");
    }
}
