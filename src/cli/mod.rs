//! The command line: the seed README's options, verbatim, plus a few the issues added.
//! Parsing never touches the network, so a daemon started before DNS works still starts.

#![forbid(unsafe_code)]

pub use crate::addr::HostPort;
pub mod homes;
mod options;

pub use homes::HomeSpec;

pub use options::usage;
use options::{dashed, key, normalise, options, Both, Inside, Outside, OPTIONS};
use std::ffi::OsString;
use std::time::Duration;

pub const KEY_ENV: &str = "REVERSE_UDP_TUNNEL_KEY";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Inside {
        service: HostPort,
        relay: HostPort,
    },
    /// `host: None` is a bare `-l PORT`: every address, IPv6 and IPv4.
    Outside {
        host: Option<String>,
        port: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub role: Role,
    pub max_tunnels: usize,
    pub key: Vec<u8>,
    pub spares: usize,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    pub status_interval: Option<Duration>,
    pub log_level: u8,
    /// `--name`: the instance name every log line starts with.
    pub name: Option<String>,
    /// `--syslog`: log to the system log instead of standard error.
    pub syslog: bool,
    /// `--wireguard`: the WireGuard server's public key; the relay then admits only valid handshakes.
    pub wireguard: Option<crate::wire::wireguard::PublicKey>,
    /// `--homes FILE`: the file, and the homes it listed at start.
    pub homes: Option<(String, Vec<HomeSpec>)>,
    /// `--metrics ADDR:PORT`: where to serve Prometheus metrics.
    pub metrics: Option<HostPort>,
}

impl Config {
    /// The settings both sides must share, as said in every control message.
    pub fn shared(&self) -> crate::wire::Shared {
        crate::wire::Shared {
            keepalive: self.keepalive.as_secs().try_into().unwrap_or(u32::MAX),
            max_tunnels: self.max_tunnels.try_into().unwrap_or(u32::MAX),
        }
    }
}

// Made once per process: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// The configuration, and warnings to log once the logger is set up (a short key, an open key file).
    Run(Config, Vec<String>),
    Help,
    Version,
}

/// Parse the arguments (without the program name). `env_key` is REVERSE_UDP_TUNNEL_KEY, if set.
/// The error is one line naming the problem.
pub fn parse(args: &[OsString], env_key: Option<OsString>) -> Result<Command, String> {
    parse_args(args, env_key).map_err(|e| one_line(&e))
}

/// The error quotes what it was given; control characters in it (a newline from a quoting mistake in an init
/// script) are shown escaped, so the message stays one line.
fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn parse_args(args: &[OsString], env_key: Option<OsString>) -> Result<Command, String> {
    if args.is_empty() {
        return Err("no arguments: give -s and -o (inside agent) or -l (outside relay)".into());
    }
    let m = options().parse(normalise(args)?).map_err(|e| match e {
        getopts::Fail::ArgumentMissing(o) => format!("{} needs a value", dashed(&o)),
        getopts::Fail::UnrecognizedOption(o) => format!("unknown option {}", dashed(&o)),
        getopts::Fail::OptionDuplicated(o) => format!("{} given more than once", dashed(&o)),
        getopts::Fail::UnexpectedArgument(o) => format!("{} takes no value", dashed(&o)),
        other => other.to_string(),
    })?;
    if let Some(extra) = m.free.first() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    if m.opt_present("h") {
        return Ok(Command::Help);
    }
    if m.opt_present("V") {
        return Ok(Command::Version);
    }
    let role = match (m.opt_str("s"), m.opt_str("o"), m.opt_str("l")) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err("-l (outside relay) cannot be combined with -s/-o (inside agent)".into())
        }
        (None, None, Some(l)) => {
            let (host, port) = parse_listen(&l).map_err(|e| format!("-l {l}: {e}"))?;
            Role::Outside { host, port }
        }
        (Some(s), Some(o), None) => Role::Inside {
            service: parse_host_port(&s).map_err(|e| format!("-s {s}: {e}"))?,
            relay: parse_host_port(&o).map_err(|e| format!("-o {o}: {e}"))?,
        },
        (Some(_), None, None) => return Err("-s needs -o: the relay's address".into()),
        (None, Some(_), None) => return Err("-o needs -s: the service's address".into()),
        (None, None, None) => {
            return Err("give -s and -o (inside agent) or -l (outside relay)".into())
        }
    };
    check_sides(&m, &role)?;
    let mut warnings = Vec::new();
    let max_tunnels = number(&m, "n", 10, 1, 100_000)?;
    let homes = match m.opt_str("homes") {
        Some(_) if ["k", "keyFile", "wireguard"].iter().any(|o| m.opt_present(o)) || env_key.is_some() => {
            return Err(format!(
                "--homes: each home's key is in its line of the file; do not give -k, --keyFile, --wireguard or \
                 {KEY_ENV} with it"
            ))
        }
        Some(path) => {
            let (homes, w) = homes::read(&path, max_tunnels)?;
            warnings.extend(w);
            Some((path, homes))
        }
        None => None,
    };
    let key = match (m.opt_str("k"), m.opt_str("keyFile"), env_key) {
        (Some(_), Some(_), _) => return Err("give the key with -k or --keyFile, not both".into()),
        (Some(k), None, _) => k.into_bytes(),
        (None, Some(path), _) => {
            let (key, mode) = read_key_file(&path)?;
            // As ssh does: anyone but the owner may read it, then the key is not secret.
            if mode & 0o077 != 0 {
                warnings.push(format!(
                    "permissions {:04o} for {path} are too open: anyone but its owner can read the key (chmod 600 {path})",
                    mode & 0o7777
                ));
            }
            key
        }
        (None, None, Some(env)) => env.into_encoded_bytes(),
        (None, None, None) => Vec::new(),
    };
    if !key.is_empty() && key.len() < MIN_KEY_LEN {
        warnings.push(format!(
            "the key is only {} bytes long: use at least {MIN_KEY_LEN} random bytes (see EXAMPLES in reverse-udp-tunnel(8))",
            key.len()
        ));
    }
    let name = m.opt_str("name");
    if let Some(n) = &name {
        check_name(n)?;
    }
    let spares = number(&m, "spares", 4, 1, 10_000)?;
    let secs =
        |name, default| number(&m, name, default, 1, 86_400).map(|s| Duration::from_secs(s as u64));
    let status = number(&m, "statusInterval", 0, 0, 86_400)?;
    let cfg = Config {
        role,
        max_tunnels,
        key,
        spares,
        keepalive: secs("keepaliveInterval", 25)?,
        idle_timeout: secs("connectionTimeout", 60)?,
        status_interval: (status > 0).then(|| Duration::from_secs(status as u64)),
        log_level: number(&m, "logLevel", 2, 0, 3)? as u8,
        name,
        syslog: m.opt_present("syslog"),
        wireguard: match m.opt_str("wireguard") {
            Some(k) => Some(k.parse().map_err(|e| format!("--wireguard {k}: {e}"))?),
            None => None,
        },
        homes,
        metrics: match m.opt_str("metrics") {
            // Port 0 is allowed here: any free port, which the log then names (for tests).
            Some(t) => Some(
                match t.strip_suffix(":0") {
                    Some(h) => {
                        parse_host_port(&format!("{h}:1")).map(|hp| HostPort { port: 0, ..hp })
                    }
                    None => parse_host_port(&t),
                }
                .map_err(|e| format!("--metrics {t}: {e}"))?,
            ),
            None => None,
        },
    };
    Ok(Command::Run(cfg, warnings))
}

/// Shorter keys are warned about (a key is a password here: guessable offline from one captured keepalive).
pub const MIN_KEY_LEN: usize = 16;
/// Longest `--name`.
pub const MAX_NAME_LEN: usize = 32;

/// An option of the other role is refused, whichever it is.
fn check_sides(m: &getopts::Matches, role: &Role) -> Result<(), String> {
    let (ours, refusal) = match role {
        Role::Inside { .. } => (
            Inside,
            "a relay option: the inside agent (-s/-o) does not take it",
        ),
        Role::Outside { .. } => (
            Outside,
            "an inside agent option: the relay (-l) does not take it",
        ),
    };
    match OPTIONS
        .iter()
        .find(|o| o.side != Both && o.side != ours && m.opt_present(key(o)))
    {
        Some(o) => Err(format!("{} is {refusal}", dashed(key(o)))),
        None => Ok(()),
    }
}

/// Printable, no spaces, short: it goes into every log line and must not break one.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "--name {name:?}: use 1 to {MAX_NAME_LEN} printable ASCII characters, no spaces"
        ));
    }
    Ok(())
}

fn number(
    m: &getopts::Matches,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, String> {
    let flag = dashed(name);
    let Some(text) = m.opt_str(name) else {
        return Ok(default);
    };
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{flag} {text}: not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{flag} {text}: must be from {min} to {max}"));
    }
    Ok(n)
}

/// The key (the file's first line) and the file's permission bits.
fn read_key_file(path: &str) -> Result<(Vec<u8>, u32), String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| format!("--keyFile {path}: {e}");
    // Mode and contents from the same open file.
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let mode = file.metadata().map_err(fail)?.permissions().mode();
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(fail)?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!("--keyFile {path}: the file's first line is empty"));
    }
    Ok((line.to_vec(), mode))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        _ if text.is_empty() => Err("missing port".into()),
        Ok(0) => Err("port 0 is not allowed".into()),
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(_) => Err("port is above 65535".into()),
        Err(_) => Err(format!("port '{text}' is not a number")),
    }
}

/// `host:port`, `1.2.3.4:port` or `[v6]:port`.
pub fn parse_host_port(text: &str) -> Result<HostPort, String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or("missing ']' after the IPv6 address")?;
        let port = after.strip_prefix(':').ok_or("missing ':PORT' after ']'")?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{h}' in brackets is not an IPv6 address"));
        }
        (h, port)
    } else {
        let (h, port) = text.rsplit_once(':').ok_or("missing ':PORT'")?;
        if h.contains(':') {
            return Err("write an IPv6 address in brackets, as [2001:db8::1]:1234".into());
        }
        if h.contains(']') || h.contains('[') {
            return Err("malformed brackets".into());
        }
        (h, port)
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    Ok(HostPort {
        host: host.to_string(),
        port: parse_port(port)?,
    })
}

fn parse_listen(text: &str) -> Result<(Option<String>, u16), String> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((None, parse_port(text)?));
    }
    let hp = parse_host_port(text)?;
    Ok((Some(hp.host), hp.port))
}

#[cfg(test)]
mod tests;
