//! `tcpdoctor serve --netns all` (root): the exporter runs in one private network
//! namespace and labels the sockets, headroom and processes of another one with its
//! name, each against that namespace's own sysctls. Every child and every wait is
//! bounded.

mod common;

use common::netns::Netns;
use common::prom::{promtool_check_metrics, Scrape};
use common::serve::{scrape, Served};
use common::{require_root, TCPDOCTOR};

#[test]
#[ignore = "needs root"]
fn serve_all_namespaces_labels_each_namespace() {
    require_root();
    // The exporter runs in one namespace and reads every namespace on the machine;
    // the sockets are in another.
    let home = Netns::new("servehome");
    let other = Netns::new("serveother");
    // 100 ephemeral ports there: its 6 clients (FIN_WAIT2) hold 6 of them.
    other.sysctl("net.ipv4.ip_local_port_range", "40000 40099");
    let farm = other.spawn_farm(&[
        "--listen",
        "127.0.0.1:5000",
        "--close-wait",
        "6",
        "--hold-secs",
        "300",
    ]);
    let mut cmd = home.command(
        TCPDOCTOR,
        &[
            "--netns",
            "all",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--top",
            "10000",
            "--cache",
            "0",
        ],
    );
    cmd.env("NO_COLOR", "1");
    let mut served = Served::start(cmd);
    let addr = served.addr;
    let body = home.run_inside(move || scrape(addr));
    let s = Scrape::parse(&body);
    for (state, want) in [("close_wait", 6.0), ("fin_wait2", 6.0), ("listen", 1.0)] {
        assert_eq!(
            s.must(
                "tcpdoctor_netns_sockets",
                &[("netns", other.name()), ("state", state)]
            ),
            want,
            "{state}"
        );
    }
    assert!(
        s.must("tcpdoctor_netns_read", &[]) >= 3.0,
        "host, home, other"
    );
    // Against that namespace's own range, not the home namespace's default one.
    let ns = [("netns", other.name())];
    assert_eq!(
        s.must("tcpdoctor_netns_ephemeral_ports_headroom", &ns),
        94.0
    );
    assert_eq!(s.must("tcpdoctor_netns_ephemeral_ports_usable", &ns), 100.0);
    let dest = [
        ("netns", other.name()),
        ("local_ip", "127.0.0.1"),
        ("destination", "127.0.0.1:5000"),
    ];
    assert_eq!(s.must("tcpdoctor_ephemeral_ports_used", &dest), 6.0);
    assert_eq!(s.must("tcpdoctor_ephemeral_ports_usable", &dest), 100.0);
    assert_eq!(s.must("tcpdoctor_ephemeral_ports_headroom", &dest), 94.0);
    // The leak's process is in the per-process series (comm/pid only).
    let wpid = farm.ready.workers[0].pid.to_string();
    assert_eq!(
        s.must(
            "tcpdoctor_process_close_wait_sockets",
            &[("comm", "sockfarm"), ("pid", &wpid)]
        ),
        6.0
    );
    promtool_check_metrics(&body);
    assert!(served.terminate().is_some_and(|st| st.success()));
    drop(farm);
}
