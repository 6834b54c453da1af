//! What `--metrics` serves: Prometheus' text exposition format, version 0.0.4, built from the agents' counters.
//! Pure: the cores add their samples, sys/http.rs serves the text.
//!
//! ```text
//! # HELP reverse_udp_tunnel_datagrams_total Datagrams forwarded: in from clients toward the service, out ...
//! # TYPE reverse_udp_tunnel_datagrams_total counter
//! reverse_udp_tunnel_datagrams_total{direction="in"} 1200
//! reverse_udp_tunnel_datagrams_total{direction="out"} 1200
//! ```
//!
//! Every family is written once, its `# HELP` and `# TYPE` first and then all its samples together (with
//! several homes, every home's), in the order the families were first added. Label values are escaped as the
//! format says (`\\`, `\"`, `\n`).

#![forbid(unsafe_code)]

use std::fmt::Write;

/// Every family's name starts with this.
pub const PREFIX: &str = "reverse_udp_tunnel_";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: String,
}

/// The families of one scrape, as they are added.
#[derive(Default)]
pub struct Metrics {
    families: Vec<Family>,
}

impl Metrics {
    /// One sample of family `name` (without the prefix). `labels`: name and value pairs, in order.
    pub fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: &[(&str, &str)],
        value: &dyn std::fmt::Display,
    ) {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    help,
                    kind,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        let s = &mut self.families[at].samples;
        s.push_str(PREFIX);
        s.push_str(name);
        if !labels.is_empty() {
            s.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => s.push_str("\\\\"),
                        '"' => s.push_str("\\\""),
                        '\n' => s.push_str("\\n"),
                        c => s.push(c),
                    }
                }
                s.push('"');
            }
            s.push('}');
        }
        let _ = writeln!(s, " {value}");
    }

    /// A counter: `value` so far, written as the integer it is (an f64 would round past 2^53).
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        self.add(name, Kind::Counter, help, labels, &value);
    }

    /// A gauge. Integers only, here and in counters: formatting a float would pull Rust's float printing into
    /// the static binaries, and every value here is a count or a whole second.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        self.add(name, Kind::Gauge, help, labels, &value);
    }

    /// The text of the scrape.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {PREFIX}{} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {PREFIX}{} {kind}", f.name);
            out.push_str(&f.samples);
        }
        out
    }
}

/// Datagrams and bytes forwarded each way, for the `datagrams_total` and `bytes_total` families.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// From clients toward the service.
    pub in_datagrams: u64,
    pub in_bytes: u64,
    /// From the service toward clients.
    pub out_datagrams: u64,
    pub out_bytes: u64,
}

impl Traffic {
    pub fn add(&mut self, other: &Traffic) {
        self.in_datagrams += other.in_datagrams;
        self.in_bytes += other.in_bytes;
        self.out_datagrams += other.out_datagrams;
        self.out_bytes += other.out_bytes;
    }

    /// Its samples, with `labels` (a home's) before the direction.
    pub fn write(&self, m: &mut Metrics, labels: &[(&str, &str)]) {
        const D: &str = "Datagrams forwarded: in from clients toward the service, out from the service toward clients.";
        const B: &str = "Bytes (UDP payload) of the datagrams forwarded, each way.";
        for (dir, n, b) in [
            ("in", self.in_datagrams, self.in_bytes),
            ("out", self.out_datagrams, self.out_bytes),
        ] {
            let mut l = labels.to_vec();
            l.push(("direction", dir));
            m.counter("datagrams_total", D, &l, n);
            m.counter("bytes_total", B, &l, b);
        }
    }
}

/// Now, in whole seconds since the Unix epoch (for `start_time_seconds`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The families every agent has: the version, and when the process started (Unix time, seconds).
pub fn process(m: &mut Metrics, start_unix_seconds: u64) {
    m.gauge(
        "build_info",
        "Always 1; the version of the running binary is its label.",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    m.gauge(
        "start_time_seconds",
        "When the process started, in seconds since the Unix epoch.",
        &[],
        start_unix_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_once_with_help_and_type_first() {
        let mut m = Metrics::default();
        m.counter("a_total", "A.", &[("home", "x")], 1);
        m.gauge("b", "B.", &[], 2);
        m.counter("a_total", "A.", &[("home", "y \"q\" \\ \n")], 3);
        assert_eq!(
            m.render(),
            "# HELP reverse_udp_tunnel_a_total A.\n# TYPE reverse_udp_tunnel_a_total counter\n\
             reverse_udp_tunnel_a_total{home=\"x\"} 1\n\
             reverse_udp_tunnel_a_total{home=\"y \\\"q\\\" \\\\ \\n\"} 3\n\
             # HELP reverse_udp_tunnel_b B.\n# TYPE reverse_udp_tunnel_b gauge\nreverse_udp_tunnel_b 2\n"
        );
    }

    #[test]
    fn counters_are_exact_far_beyond_32_bits() {
        let mut m = Metrics::default();
        m.counter("c_total", "C.", &[], (1 << 53) + 1);
        assert!(m
            .render()
            .ends_with("reverse_udp_tunnel_c_total 9007199254740993\n"));
    }
}
