//! The homes file of `--homes FILE`: one home a line, `NAME KEYFILE WIREGUARD_PUBLIC_KEY [TUNNELS]`.
//!
//! ```text
//! # name    key file                        server public key (wg pubkey)                 tunnels
//! home      /etc/reverse-udp-tunnel/home    xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=  20
//! parents   /etc/reverse-udp-tunnel/parents HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=  10
//! ```
//!
//! Fields are separated by spaces or tabs; `#` starts a comment, to the end of the line. NAME: 1 to 32
//! printable ASCII characters. KEYFILE: as `--keyFile` (the key is its first line); a relative path is taken
//! from FILE's folder. TUNNELS: the home's `-n` (default: the relay's). Names, keys and server keys are each
//! unique: two homes with one key could not tell their agents apart, two with one server key their clients.
//! Every problem is one line, `FILE:LINE: what`, read at start (exit status 2) and on SIGHUP (logged; the
//! running homes stay).

use crate::wire::wireguard::PublicKey;
use crate::wire::Key;
use std::path::Path;

/// One line of the homes file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeSpec {
    pub name: String,
    /// The shared secret of the home's inside agent.
    pub key: Vec<u8>,
    /// The public key of the home's WireGuard server: its new clients' initiations carry its mac1.
    pub server: PublicKey,
    /// The home's -n.
    pub max_tunnels: usize,
}

/// The most homes one file may list: each has its own table, and a new client's initiation costs one BLAKE2s
/// per home (docs/BENCHMARKS.md).
pub const MAX_HOMES: usize = 256;

/// The homes of FILE, and warnings (key files others can read). `max_tunnels`: the relay's -n, each home's
/// default.
pub fn read(path: &str, max_tunnels: usize) -> Result<(Vec<HomeSpec>, Vec<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--homes {path}: {e}"))?;
    let dir = Path::new(path).parent().unwrap_or(Path::new("."));
    let mut warnings = Vec::new();
    let homes = parse(path, &text, max_tunnels, &mut |file| {
        let full = dir.join(file);
        let shown = full.display().to_string();
        let (key, mode) = super::read_key_file(&shown).map_err(|e| {
            e.strip_prefix("--keyFile ")
                .map(|r| format!("key file {r}"))
                .unwrap_or(e)
        })?;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "permissions {:04o} for {shown} are too open: anyone but its owner can read the key (chmod 600 {shown})",
                mode & 0o7777
            ));
        }
        Ok(key)
    })?;
    Ok((homes, warnings))
}

/// The homes in `text` (the contents of `path`); `key_of` reads a key file named in it.
pub fn parse(
    path: &str,
    text: &str,
    max_tunnels: usize,
    key_of: &mut dyn FnMut(&str) -> Result<Vec<u8>, String>,
) -> Result<Vec<HomeSpec>, String> {
    let mut homes: Vec<(usize, HomeSpec)> = Vec::new();
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = i + 1;
        let fail = |what: String| format!("{path}:{at}: {what}");
        let line = line.split('#').next().unwrap_or_default();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, key_file, server, tunnels) = match fields[..] {
            [] => continue,
            [n, k, s] => (n, k, s, None),
            [n, k, s, t] => (n, k, s, Some(t)),
            _ => {
                return Err(fail(format!(
                    "{} fields; a home is NAME KEYFILE WIREGUARD_PUBLIC_KEY [TUNNELS]",
                    fields.len()
                )))
            }
        };
        super::check_name(name).map_err(|_| {
            fail(format!(
                "home name {name:?}: use 1 to {} printable ASCII characters",
                super::MAX_NAME_LEN
            ))
        })?;
        let server: PublicKey = server
            .parse()
            .map_err(|e| fail(format!("server public key {server}: {e}")))?;
        let max_tunnels = match tunnels {
            None => max_tunnels,
            Some(t) => match t.parse::<usize>() {
                Ok(n) if (1..=100_000).contains(&n) => n,
                _ => return Err(fail(format!("tunnels {t}: use a number from 1 to 100000"))),
            },
        };
        let key = key_of(key_file).map_err(&fail)?;
        let same = |what: &str, other: &(usize, HomeSpec)| {
            fail(format!(
                "home {name} has the same {what} as home {} (line {})",
                other.1.name, other.0
            ))
        };
        if let Some(o) = homes.iter().find(|(_, h)| h.name == name) {
            return Err(fail(format!("home {name} is already on line {}", o.0)));
        }
        let id = Key::new(&key).id();
        if let Some(i) = ids.iter().position(|&o| o == id) {
            return Err(same("key", &homes[i]));
        }
        if let Some(o) = homes.iter().find(|(_, h)| h.server == server) {
            return Err(same("server public key", o));
        }
        if homes.len() == MAX_HOMES {
            return Err(fail(format!("more than {MAX_HOMES} homes")));
        }
        ids.push(id);
        homes.push((
            at,
            HomeSpec {
                name: name.to_string(),
                key,
                server,
                max_tunnels,
            },
        ));
    }
    if homes.is_empty() {
        return Err(format!(
            "{path}: no homes in it (one a line: NAME KEYFILE WIREGUARD_PUBLIC_KEY [TUNNELS])"
        ));
    }
    Ok(homes.into_iter().map(|(_, h)| h).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const B: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn keys(file: &str) -> Result<Vec<u8>, String> {
        match file {
            "missing" => Err("key file missing: No such file or directory (os error 2)".into()),
            f => Ok(format!("key of {}", f.trim_start_matches("dup")).into_bytes()),
        }
    }

    fn parsed(text: &str) -> Result<Vec<HomeSpec>, String> {
        parse("homes", text, 10, &mut keys)
    }

    #[test]
    fn the_example_parses_with_comments_blank_lines_and_tabs() {
        let text = format!(
            "# name key file server tunnels\n\nhome\t/etc/h {A}  20 # mine\n  parents /etc/p {B}\n"
        );
        let h = parsed(&text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].name.as_str(), h[0].max_tunnels), ("home", 20));
        assert_eq!(h[0].key, b"key of /etc/h");
        assert_eq!(h[0].server, A.parse().unwrap());
        assert_eq!((h[1].name.as_str(), h[1].max_tunnels), ("parents", 10));
    }

    #[test]
    fn every_problem_is_one_line_naming_file_and_line() {
        for (text, says) in [
            ("", "homes: no homes in it"),
            ("# only a comment\n", "homes: no homes in it"),
            ("a k\n", "homes:1: 2 fields"),
            (&format!("a k {A} 1 x\n"), "homes:1: 5 fields"),
            (&format!("\na k {A} 0\n"), "homes:2: tunnels 0"),
            (&format!("a k {A} ten\n"), "homes:1: tunnels ten"),
            ("a k notakey\n", "homes:1: server public key notakey"),
            (&format!("{} k {A}\n", "n".repeat(33)), "homes:1: home name"),
            (&format!("a missing {A}\n"), "homes:1: key file missing"),
            (
                &format!("a k {A}\na k2 {B}\n"),
                "homes:2: home a is already on line 1",
            ),
            (
                &format!("a k {A}\nb dupk {B}\n"),
                "homes:2: home b has the same key as home a (line 1)",
            ),
            (
                &format!("a k {A}\nb k2 {A}\n"),
                "homes:2: home b has the same server public key as home a (line 1)",
            ),
        ] {
            let e = parsed(text).unwrap_err();
            assert!(e.starts_with(says), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
