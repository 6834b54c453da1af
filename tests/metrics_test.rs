//! `--metrics`: with the real binary on loopback. A known number of datagrams of a known size through the tunnel
//! is counted exactly, each way, on both agents; the text parses under a strict reading of Prometheus' text format
//! 0.0.4; with `--homes` every sample names its home; and a client that sends garbage, holds a thousand
//! connections open or never finishes its request stops neither forwarding nor the next scrape.

mod common;

use common::*;
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One sample: family name and labels (sorted), value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Prometheus text format 0.0.4, strictly: every family has one `# HELP` and one `# TYPE` (counter or gauge)
/// before its samples, and its samples are contiguous; names and label names are well formed; label values are
/// quoted with only `\\`, `\"` and `\n` escaped; values are numbers; no series twice; the text ends in a newline.
/// Also this tool's own rules: every family starts with `reverse_udp_tunnel_`, and counters end in `_total`.
fn parse(text: &str) -> Result<Samples, String> {
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    };
    let label_ok = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            && !n.starts_with("__")
    };
    let mut samples = Samples::new();
    let mut helped = HashSet::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut done = HashSet::new(); // families whose samples have ended
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let at = |e: &str| format!("line {}: {e}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let (kw, name, tail) = (w.next(), w.next().unwrap_or(""), w.next());
            if !name_ok(name) || !name.starts_with("reverse_udp_tunnel_") {
                return Err(at("bad family name"));
            }
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    done.insert(c);
                }
            }
            if done.contains(name) {
                return Err(at("a family's lines are not together"));
            }
            match kw {
                Some("HELP") => {
                    if !helped.insert(name.to_string()) || tail.is_none_or(str::is_empty) {
                        return Err(at("a second or empty HELP"));
                    }
                }
                Some("TYPE") => {
                    let t = tail.unwrap_or("");
                    if !["counter", "gauge"].contains(&t)
                        || typed.insert(name.into(), t.into()).is_some()
                    {
                        return Err(at("a second or unknown TYPE"));
                    }
                    if t == "counter" && !name.ends_with("_total") {
                        return Err(at("a counter not named _total"));
                    }
                }
                _ => return Err(at("a comment that is neither HELP nor TYPE")),
            }
            current = Some(name.to_string());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(at("an empty line or a bare comment"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = value.parse().map_err(|_| at("not a number"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels"))?;
                (n, parse_labels(body).map_err(|e| at(&e))?)
            }
        };
        if !name_ok(name) || labels.iter().any(|(k, _)| !label_ok(k)) {
            return Err(at("bad metric or label name"));
        }
        if current.as_deref() != Some(name) || !helped.contains(name) || !typed.contains_key(name) {
            return Err(at(
                "a sample without its HELP and TYPE just before its family's samples",
            ));
        }
        let mut sorted = labels.clone();
        sorted.sort();
        if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(at("a label twice"));
        }
        if samples.insert((name.to_string(), sorted), value).is_some() {
            return Err(at("a series twice"));
        }
    }
    if helped.len() != typed.len() {
        return Err("a family with HELP but no TYPE".into());
    }
    Ok(samples)
}

fn parse_labels(body: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next() != Some('"') {
            return Err("a label value not in quotes".into());
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    _ => return Err("a bad escape".into()),
                },
                Some('\n') | None => return Err("an unterminated label value".into()),
                Some(c) => value.push(c),
            }
        }
        out.push((name, value));
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(_) => return Err("labels not separated by commas".into()),
        }
    }
    Ok(out)
}

fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    s.get(&(format!("reverse_udp_tunnel_{name}"), l)).copied()
}

/// GET `path` from `at`: status code and body.
fn http_get(at: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&at, SOON).ok()?;
    s.set_read_timeout(Some(SOON)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.get(9..12)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

fn scrape(at: SocketAddr) -> Samples {
    let (code, body) = http_get(at, "/metrics").expect("a scrape");
    assert_eq!(code, 200, "{body}");
    parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// Where an agent serves its metrics, from its log.
fn metrics_at(agent: &Agent) -> SocketAddr {
    let line = agent.wait_for_log("metrics at http://", SOON);
    let a = line
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .trim();
    a.parse().unwrap()
}

#[test]
fn the_parser_refuses_what_the_format_does_not_allow() {
    let ok = "# HELP reverse_udp_tunnel_x_total X.\n# TYPE reverse_udp_tunnel_x_total counter\nreverse_udp_tunnel_x_total{a=\"\\\"\\n\"} 1\n";
    assert!(parse(ok).is_ok());
    for bad in [
        "reverse_udp_tunnel_x_total 1\n",
        "# HELP reverse_udp_tunnel_x_total X.\n# TYPE reverse_udp_tunnel_x_total counter\nreverse_udp_tunnel_x_total 1",
        "# HELP reverse_udp_tunnel_x X.\n# TYPE reverse_udp_tunnel_x counter\nreverse_udp_tunnel_x 1\n",
        "# HELP reverse_udp_tunnel_x_total X.\n# TYPE reverse_udp_tunnel_x_total counter\nreverse_udp_tunnel_x_total{a=\"\\t\"} 1\n",
        "# HELP reverse_udp_tunnel_x_total X.\n# TYPE reverse_udp_tunnel_x_total counter\nreverse_udp_tunnel_x_total 1\nreverse_udp_tunnel_x_total 2\n",
        "# HELP reverse_udp_tunnel_x_total X.\n# TYPE reverse_udp_tunnel_x_total counter\nreverse_udp_tunnel_x_total one\n",
        "# HELP reverse_udp_tunnel_a X.\n# TYPE reverse_udp_tunnel_a gauge\n# HELP reverse_udp_tunnel_b Y.\n# TYPE reverse_udp_tunnel_b gauge\nreverse_udp_tunnel_a 1\n",
        "# HELP x X.\n# TYPE x gauge\nx 1\n",
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn both_agents_count_exactly_what_crossed_the_tunnel_each_way() {
    const N: usize = 150;
    const SIZE: usize = 321;
    let ka = [
        "--keepaliveInterval",
        "1",
        "-k",
        KEY,
        "--metrics",
        "127.0.0.1:0",
    ];
    let (relay, addr) = relay("127.0.0.1", &ka);
    let echo = Echo::v4();
    let inside = inside(echo.addr, addr, &ka);
    let (rm, im) = (metrics_at(&relay), metrics_at(&inside));
    relay.wait_for_log("spare tunnel", SOON);
    let before = scrape(rm);
    assert_eq!(
        get(&before, "datagrams_total", &[("direction", "in")]),
        Some(0.0)
    );
    let c = Client::new(addr);
    for i in 0..N {
        let mut d = vec![(i % 251) as u8; SIZE];
        d[..8].copy_from_slice(&(i as u64).to_be_bytes());
        assert_eq!(c.ask(&d, SOON), Some(d), "datagram {i} echoed");
    }
    // Every echo came back, so both agents forwarded all of them each way. The relay counts a datagram before it
    // sends it; a tunnel thread publishes its counts just after its batch's send, so a scrape may, rarely, come
    // between the two: wait (bounded) until the counts are there, then they must be exact, never more.
    for (who, at) in [("relay", rm), ("inside", im)] {
        let full =
            |s: &Samples| get(s, "datagrams_total", &[("direction", "out")]) >= Some(N as f64);
        let s = wait_until(SOON, || Some(scrape(at)).filter(full)).unwrap_or_else(|| scrape(at));
        for dir in ["in", "out"] {
            assert_eq!(
                get(&s, "datagrams_total", &[("direction", dir)]),
                Some(N as f64),
                "{who} {dir}"
            );
            assert_eq!(
                get(&s, "bytes_total", &[("direction", dir)]),
                Some((N * SIZE) as f64),
                "{who} {dir}"
            );
        }
        assert_eq!(
            get(&s, "tunnels", &[("state", "active")]),
            Some(1.0),
            "{who}"
        );
        assert_eq!(
            get(&s, "dropped_total", &[("reason", "badauth")]),
            Some(0.0),
            "{who}"
        );
        assert_eq!(
            get(&s, "build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
            Some(1.0)
        );
        let start = get(&s, "start_time_seconds", &[]).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now && start > now - 60.0,
            "{who}: started {start}, now {now}"
        );
    }
    assert_eq!(http_get(rm, "/").map(|r| r.0), Some(404));
    assert_eq!(http_get(im, "/metrics/x").map(|r| r.0), Some(404));
    assert!(get(&scrape(rm), "admission_total", &[("verdict", "reclaimed")]).is_some());
}

#[test]
fn with_homes_every_sample_names_its_home() {
    let dir = std::env::temp_dir().join(format!("rut-metrics-homes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("a");
    std::fs::write(&key, "the key of home a, long enough\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = dir.join("homes");
    std::fs::write(
        &file,
        "a a HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw= 3\n",
    )
    .unwrap();
    let (relay, _) = relay(
        "127.0.0.1",
        &[
            "--homes",
            file.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let s = scrape(metrics_at(&relay));
    let _ = std::fs::remove_dir_all(&dir);
    for (name, labels) in s.keys() {
        if name.ends_with("build_info") || name.ends_with("start_time_seconds") {
            continue;
        }
        let home = labels
            .iter()
            .find(|(k, _)| k == "home")
            .map(|(_, v)| v.as_str());
        assert!(matches!(home, Some("a") | Some("")), "{name} {labels:?}");
    }
    assert_eq!(
        get(&s, "tunnels", &[("home", "a"), ("state", "spare")]),
        Some(0.0)
    );
    assert_eq!(
        get(
            &s,
            "admission_total",
            &[("home", ""), ("verdict", "badmac1")]
        ),
        Some(0.0)
    );
    assert_eq!(
        get(
            &s,
            "admission_total",
            &[("home", "a"), ("verdict", "cookies")]
        ),
        Some(0.0)
    );
}

#[test]
fn garbage_a_thousand_connections_and_an_unfinished_request_stop_neither_forwarding_nor_scrapes() {
    raise_fd_limit();
    let args = [
        "--keepaliveInterval",
        "1",
        "-k",
        KEY,
        "--metrics",
        "127.0.0.1:0",
    ];
    let (relay, addr) = relay("127.0.0.1", &args);
    let echo = Echo::v4();
    let _inside = inside(echo.addr, addr, &["--keepaliveInterval", "1", "-k", KEY]);
    let rm = metrics_at(&relay);
    relay.wait_for_log("spare tunnel", SOON);
    let c = Client::new(addr);
    c.assert_served(b"first");
    // Garbage, binary and oversized, on separate connections.
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        &[0xffu8; 10_000][..],
        b"GET\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(rm).unwrap();
        let _ = s.write_all(junk);
    }
    // A request that never ends, and a thousand connections held open without a byte.
    let mut slow = TcpStream::connect(rm).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    let mut held = Vec::new();
    for _ in 0..1000 {
        if let Ok(s) = TcpStream::connect_timeout(&rm, Duration::from_millis(200)) {
            held.push(s);
        }
    }
    assert!(held.len() >= 900, "only {} connections opened", held.len());
    // Forwarding goes on, datagram after datagram, and a scrape is answered at once, while all that is open.
    for i in 0..50u32 {
        let d = format!("ping {i}").into_bytes();
        assert_eq!(c.ask(&d, SOON), Some(d));
    }
    let t = Instant::now();
    let s = scrape(rm);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the scrape took {:?}",
        t.elapsed()
    );
    assert_eq!(
        get(&s, "datagrams_total", &[("direction", "in")]),
        Some(51.0)
    );
    drop(held);
    drop(slow);
    // Thirty scrapes at once are all answered (a text rendered less than 250 ms ago is served again, so they do
    // not queue behind each other's renders). Thirty: below the 32 connections the endpoint keeps open, so none is
    // closed for room before its request arrives, however the threads are scheduled.
    let t = Instant::now();
    let answered = std::thread::scope(|sc| {
        let all: Vec<_> = (0..30)
            .map(|_| sc.spawn(|| http_get(rm, "/metrics").map(|r| r.0)))
            .collect();
        all.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|c| *c == Some(200))
            .count()
    });
    assert_eq!(answered, 30, "after {:?}", t.elapsed());
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < 4096.min(r.rlim_max) {
            r.rlim_cur = 4096.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
