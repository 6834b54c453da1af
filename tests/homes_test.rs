//! `--homes`: several homes behind one relay port, with the real binary on loopback. Clients whose initiations
//! carry home A's mac1 reach only A's service, B's only B's, and their transport data follows; an initiation for
//! neither reaches neither. SIGHUP adds and removes homes while a client of a home that stays keeps being
//! served without a loss.

mod common;

use common::*;
use rut::wire::wireguard::{self, PublicKey, INITIATION_LEN};
use std::path::PathBuf;
use std::time::Duration;

const KEY_A: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const KEY_C: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

/// A handshake initiation with a valid mac1 for `server`; `n` makes it unique.
fn initiation(server: &str, n: u32) -> [u8; INITIATION_LEN] {
    let mut m = [0u8; INITIATION_LEN];
    m[0] = 1;
    m[4..8].copy_from_slice(&n.to_le_bytes());
    m[8..12].copy_from_slice(&n.to_be_bytes());
    let pk: PublicKey = server.parse().unwrap();
    wireguard::client_macs(&pk, &mut m, None);
    m
}

/// WireGuard-shaped transport data (type 4).
fn transport(n: u32) -> Vec<u8> {
    let mut m = vec![0u8; 48];
    m[0] = 4;
    m[8..12].copy_from_slice(&n.to_be_bytes());
    m
}

/// A folder with a key file per home and the homes file.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("rut-homes-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (name, secret) in [
            ("a", "key-of-home-a-0123456789"),
            ("b", "key-of-home-b-0123456789"),
            ("c", "key-of-home-c-0123456789"),
        ] {
            let p = d.join(name);
            std::fs::write(&p, format!("{secret}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Dir(d)
    }

    /// Write the homes file (key files by relative path, from its folder).
    fn homes(&self, lines: &[&str]) -> String {
        let p = self.0.join("homes");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p.display().to_string()
    }

    fn key(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Send `first` and then transport data until an echo of the transport data comes back.
fn served(c: &Client, first: &[u8]) -> bool {
    c.send(first);
    (0..40).any(|n| {
        c.ask(&transport(n), Duration::from_millis(100))
            .is_some_and(|r| r == transport(n))
    })
}

#[test]
fn each_client_reaches_the_home_whose_server_key_its_initiation_is_for() {
    let dir = Dir::new("route");
    let file = dir.homes(&[
        "# name key server tunnels",
        &format!("a a {KEY_A} 4"),
        &format!("b b {KEY_B}"),
    ]);
    let (relay, addr) = relay(
        "127.0.0.1",
        &["--homes", &file, "-n", "4", "--keepaliveInterval", "1"],
    );
    let (svc_a, svc_b) = (Echo::v4(), Echo::v4());
    let _in_a = inside(
        svc_a.addr,
        addr,
        &[
            "--keyFile",
            &dir.key("a"),
            "-n",
            "4",
            "--keepaliveInterval",
            "1",
        ],
    );
    let _in_b = inside(
        svc_b.addr,
        addr,
        &[
            "--keyFile",
            &dir.key("b"),
            "-n",
            "4",
            "--keepaliveInterval",
            "1",
        ],
    );
    relay.wait_for_log("home a: spare tunnel", SOON);
    relay.wait_for_log("home b: spare tunnel", SOON);
    assert!(!relay.log().contains("no key"), "every home has its key");

    let c1 = Client::new(addr);
    assert!(served(&c1, &initiation(KEY_A, 1)), "A's client served");
    let c2 = Client::new(addr);
    assert!(served(&c2, &initiation(KEY_B, 2)), "B's client served");
    let c3 = Client::new(addr);
    assert!(
        served(&c3, &initiation(KEY_A, 3)),
        "A's second client served"
    );
    assert_eq!(svc_a.peers().len(), 2, "two clients of A, each its tunnel");
    assert_eq!(svc_b.peers().len(), 1, "one client of B");
    assert!(svc_a.peers().is_disjoint(&svc_b.peers()));

    // Transport data keeps following each client's own home.
    for n in 0..20 {
        for c in [&c1, &c2, &c3] {
            assert_eq!(c.ask(&transport(n), SOON), Some(transport(n)));
        }
    }
    assert_eq!(
        (svc_a.peers().len(), svc_b.peers().len()),
        (2, 1),
        "no datagram crossed homes"
    );

    // An initiation for neither home, and garbage, reach neither.
    let c4 = Client::new(addr);
    assert!(!served(&c4, &initiation(KEY_C, 4)));
    assert_eq!((svc_a.peers().len(), svc_b.peers().len()), (2, 1));
    let mut relay = relay;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(relay.pid(), libc::SIGUSR1) };
    // The relay's own line counts what no home took; each home's line its own tunnels.
    relay.wait_for_line("status: homes=2", SOON, |l| {
        status_field(l, "badmac1") == 1 && status_field(l, "notinit") >= 40
    });
    relay.wait_for_line("home a: status:", SOON, |l| status_field(l, "active") == 2);
    relay.wait_for_line("home b: status:", SOON, |l| status_field(l, "active") == 1);
    relay.wait_for_log("home a: tunnel", SOON);
    let (status, _) = relay.terminate(libc::SIGTERM);
    assert!(status.success());
}

#[test]
fn sighup_adds_and_removes_homes_while_a_remaining_client_loses_nothing() {
    let dir = Dir::new("reload");
    let ka = ["--keepaliveInterval", "1"];
    let file = dir.homes(&[&format!("a a {KEY_A}"), &format!("b b {KEY_B}")]);
    let (mut relay, addr) = relay("127.0.0.1", &["--homes", &file, ka[0], ka[1]]);
    let (svc_a, svc_b, svc_c) = (Echo::v4(), Echo::v4(), Echo::v4());
    let in_args = |k: &str| {
        vec![
            "--keyFile".to_string(),
            dir.key(k),
            ka[0].into(),
            ka[1].into(),
        ]
    };
    let args_a = in_args("a");
    let _in_a = inside(
        svc_a.addr,
        addr,
        &args_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let args_b = in_args("b");
    let in_b = inside(
        svc_b.addr,
        addr,
        &args_b.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let args_c = in_args("c");
    let in_c = inside(
        svc_c.addr,
        addr,
        &args_c.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    relay.wait_for_log("home a: spare tunnel", SOON);
    relay.wait_for_log("home b: spare tunnel", SOON);
    let ca = Client::new(addr);
    assert!(served(&ca, &initiation(KEY_A, 1)));
    let cb = Client::new(addr);
    assert!(served(&cb, &initiation(KEY_B, 2)));

    // Remove b, add c; A's client keeps asking throughout, one datagram at a time, each answered.
    dir.homes(&[&format!("a a {KEY_A}"), &format!("c c {KEY_C} 3")]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(relay.pid(), libc::SIGHUP) };
    let mut n = 100;
    let mut asked = 0;
    let until = std::time::Instant::now() + SOON;
    while !relay.log().contains("homes reloaded from") && std::time::Instant::now() < until {
        n += 1;
        asked += 1;
        assert_eq!(
            ca.ask(&transport(n), SOON),
            Some(transport(n)),
            "A's client lost datagram {n}"
        );
    }
    let line = relay.wait_for_log("homes reloaded from", SOON);
    assert!(
        line.contains("2 homes (added 1, removed 1, changed 0)"),
        "{line}"
    );
    for _ in 0..20 {
        n += 1;
        asked += 1;
        assert_eq!(
            ca.ask(&transport(n), SOON),
            Some(transport(n)),
            "A's client lost datagram {n}"
        );
    }
    assert!(asked >= 20);
    assert_eq!(svc_a.peers().len(), 1, "A's client kept its tunnel");
    // b's agent was told: its tunnels are dropped, and its messages now name a key no home has.
    in_b.wait_for_log("dropped by the relay", SOON);
    assert!(
        !served(&cb, &transport(0)),
        "B's client, its home removed, is not served"
    );
    relay.wait_for_log("names a key no home has", SOON);
    // c is served.
    relay.wait_for_log("home c: spare tunnel", SOON);
    let cc = Client::new(addr);
    assert!(served(&cc, &initiation(KEY_C, 3)));
    assert_eq!(svc_c.peers().len(), 1);

    // A file that does not parse changes nothing.
    dir.homes(&[&format!("a a {KEY_A}"), "c c notakey"]);
    // SAFETY: as above.
    unsafe { libc::kill(relay.pid(), libc::SIGHUP) };
    relay.wait_for_log("keeping the 2 running homes", SOON);
    assert_eq!(ca.ask(&transport(1), SOON), Some(transport(1)));
    assert_eq!(cc.ask(&transport(1), SOON), Some(transport(1)));
    drop(in_c);
    let (status, _) = relay.terminate(libc::SIGTERM);
    assert!(status.success());
}
