//! The command line of the real binary: usage errors, --help, --version, and a runtime error.

use std::net::UdpSocket;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_reverse-udp-tunnel");

/// Run the binary; it must exit by itself within 5 s (a wrongly accepted command line would run forever).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("REVERSE_UDP_TUNNEL_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} still running after 5 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn usage_errors_exit_2_with_one_line_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "no arguments"),
        (&["-l", "0"], "port 0"),
        (&["-l", "65536"], "above 65535"),
        (
            &["-l", "127.0.0.1:1234", "--bogus"],
            "unknown option --bogus",
        ),
        (
            &["-l", "127.0.0.1:1234", "-s", "127.0.0.1:5"],
            "cannot be combined",
        ),
        (&["-s", "127.0.0.1:5"], "-s needs -o"),
        (
            &["-l", "127.0.0.1:1234", "--keepaliveInterval", "0"],
            "--keepaliveInterval 0",
        ),
        (
            &[
                "-s",
                "127.0.0.1:5",
                "-o",
                "127.0.0.1:6",
                "--connectionTimeout",
                "0",
            ],
            "--connectionTimeout 0",
        ),
        (&["-l", "127.0.0.1:1234", "-n", "-1"], "-n -1"),
        (&["-s", "[::1:5", "-o", "127.0.0.1:6"], "missing ']'"),
        (&["-s", "127.0.0.1:5", "-o", "::1]:6"], "brackets"),
        (
            &["-l", "127.0.0.1:1234", "-k", "a", "--keyFile", "/dev/null"],
            "not both",
        ),
        // Options of the other side, in either spelling.
        (
            &["-l", "127.0.0.1:1234", "--connectionTimeout", "5"],
            "--connectionTimeout is an inside agent option",
        ),
        (
            &["-l", "127.0.0.1:1234", "--spares=5"],
            "--spares is an inside agent option",
        ),
        (
            &["-l", "127.0.0.1:1234", "--connection-timeout", "5"],
            "--connectionTimeout is an inside agent option",
        ),
        // kebab-case aliases reach the same checks; other spellings get a hint.
        (
            &["-l", "127.0.0.1:1234", "--log-level", "9"],
            "--logLevel 9: must be from 0 to 3",
        ),
        (
            &["-l", "127.0.0.1:1234", "--keepalive-interval=0"],
            "--keepaliveInterval 0",
        ),
        (
            &["-l", "127.0.0.1:1234", "--keyfile", "/dev/null"],
            "did you mean --keyFile?",
        ),
        (
            &["-l", "127.0.0.1:1234", "--status_interval", "5"],
            "did you mean --statusInterval?",
        ),
        (&["-l", "127.0.0.1:1234", "--name", "a b"], "--name \"a b\""),
        (
            &["-l", "127.0.0.1:1234", "--name", "x\u{1b}[2J"],
            "--name \"x\\u{1b}[2J\"",
        ),
        (
            &["-l", "127.0.0.1:1234", "--name", &"n".repeat(33)],
            "1 to 32 printable",
        ),
    ];
    for (args, problem) in cases {
        let out = run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
        assert!(
            err.contains(problem),
            "{args:?}: {err:?} does not name {problem:?}"
        );
        assert!(err.contains("--help"), "{args:?}: no hint: {err:?}");
        let lower = err.to_lowercase();
        assert!(
            !lower.contains("panicked") && !lower.contains("backtrace"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: wrote to stdout");
    }
}

#[test]
fn help_lists_every_option() {
    for flag in ["--help", "-h"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        let help = text(&out.stdout);
        for option in [
            "-s HOST:PORT",
            "-o HOST:PORT",
            "-l [ADDR:]PORT",
            "-n NUMBER",
            "-k SECRET",
            "--keyFile PATH",
            "--spares",
            "--keepaliveInterval SECONDS",
            "--connectionTimeout SECONDS",
            "--statusInterval SECONDS",
            "--logLevel LEVEL",
            "--name NAME",
            "--syslog",
            "kebab-case",
            "--help",
            "--version",
            "REVERSE_UDP_TUNNEL_KEY",
        ] {
            assert!(
                help.contains(option),
                "{flag} does not list {option}:\n{help}"
            );
        }
    }
}

#[test]
fn version_prints_name_and_version() {
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            text(&out.stdout),
            format!("reverse-udp-tunnel {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn relay_on_a_port_in_use_exits_1_saying_so() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let taken6 = UdpSocket::bind("[::]:0").unwrap(); // dual stack: the port on every address
    let port6 = taken6.local_addr().unwrap().port();
    for (listen, shown) in [
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
        (port6.to_string(), format!("port {port6}")),
    ] {
        let out = run(&["-l", &listen]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "-l {listen}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("[ERROR]")).collect();
        assert_eq!(errors.len(), 1, "-l {listen}: {err}");
        assert!(
            errors[0].contains(&format!("cannot listen on {shown}"))
                && errors[0].contains("in use"),
            "-l {listen}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
