//! Lookups in tcpdoctor's JSON documents (docs/json.md): findings by rule and
//! namespace, a namespace by its `ip netns` name, endpoints as sockfarm prints them.

use std::collections::BTreeSet;

use serde_json::Value;

/// The findings of rule `rule`.
pub fn findings<'a>(v: &'a Value, rule: &str) -> Vec<&'a Value> {
    v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["rule_id"] == rule)
        .collect()
}

/// The findings of rule `rule` about the namespace with inode `inode`.
pub fn findings_in_netns<'a>(v: &'a Value, inode: &Value, rule: &str) -> Vec<&'a Value> {
    findings(v, rule)
        .into_iter()
        .filter(|f| {
            f["namespaces"]
                .as_array()
                .is_some_and(|ns| ns.iter().any(|n| n["inode"] == *inode))
        })
        .collect()
}

/// The entry of `namespaces` for an `ip netns` name.
pub fn namespace<'a>(v: &'a Value, ip_netns_name: &str) -> &'a Value {
    v["namespaces"]
        .as_array()
        .expect("namespaces array")
        .iter()
        .find(|n| {
            n["ip_netns"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == ip_netns_name))
        })
        .unwrap_or_else(|| {
            panic!(
                "namespace {ip_netns_name} missing from {:#}",
                v["namespaces"]
            )
        })
}

/// `127.0.0.1:80` / `[::1]:80` from a JSON endpoint, as sockfarm prints endpoints.
pub fn endpoint(e: &Value) -> String {
    let a = e["address"].as_str().expect("address");
    let p = &e["port"];
    if a.contains(':') {
        format!("[{a}]:{p}")
    } else {
        format!("{a}:{p}")
    }
}

/// (local, remote) of every socket in a `sockets --json` document.
pub fn socket_pairs(v: &Value) -> BTreeSet<(String, String)> {
    v["sockets"]
        .as_array()
        .expect("sockets array")
        .iter()
        .map(|s| (endpoint(&s["local"]), endpoint(&s["remote"])))
        .collect()
}
