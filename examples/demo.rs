//! `make demo`: a relay, an inside agent, a UDP echo service and three clients, all on loopback.
//! Usage: demo PATH-TO-reverse-udp-tunnel

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start an agent; its log lines, prefixed with `name`, go to the returned channel.
fn start(bin: &str, name: &'static str, args: &[&str]) -> (Agent, mpsc::Receiver<String>) {
    let mut child = Command::new(bin)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(format!("  [{name}] {line}"));
        }
    });
    (Agent(child), rx)
}

fn show(logs: &mpsc::Receiver<String>, only: &str) {
    while let Ok(line) = logs.try_recv() {
        if line.contains(only) {
            println!("{line}");
        }
    }
}

fn main() {
    let bin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/reverse-udp-tunnel".into());
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let service = echo.local_addr().unwrap().to_string();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let relay_addr = format!("127.0.0.1:{port}");
    println!("echo service on {service}; relay on {relay_addr}\n");
    let common = [
        "-k",
        "demo-secret",
        "--keepaliveInterval",
        "2",
        "--statusInterval",
        "1",
    ];
    let (_relay, relay_log) = start(
        &bin,
        "relay ",
        &[&["-l", &relay_addr][..], &common].concat(),
    );
    let (_inside, inside_log) = start(
        &bin,
        "inside",
        &[
            &["-s", &service, "-o", &relay_addr, "--spares", "2"][..],
            &common,
        ]
        .concat(),
    );
    thread::sleep(Duration::from_millis(500));
    show(&relay_log, "");
    show(&inside_log, "");

    println!("\nthree clients send through the relay:");
    let clients: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for round in 1..=2 {
        for (i, c) in clients.iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let msg = format!("hello #{round} from client {i}");
            c.send_to(msg.as_bytes(), &relay_addr).unwrap();
            let mut buf = [0u8; 1500];
            match c.recv(&mut buf) {
                Ok(n) => println!(
                    "  client {i} ({}) sent {msg:?}, got back {:?}",
                    c.local_addr().unwrap(),
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) => println!("  client {i}: no answer ({e})"),
            }
        }
    }
    thread::sleep(Duration::from_millis(1200));
    println!("\nthe relay's tunnel table (client -> tunnel at the inside agent's public address):");
    show(&relay_log, "");
    println!("\nthe inside agent:");
    show(&inside_log, "");
    println!("\nstopping everything.");
}
