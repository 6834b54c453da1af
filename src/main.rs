use rut::cli::{self, Command};
use std::process::exit;

fn main() {
    // Before anything else, so that an early SIGUSR1 or SIGHUP waits for the signal thread instead of killing us.
    rut::sys::signal::block();
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let (cfg, warnings) = match cli::parse(&args, std::env::var_os(cli::KEY_ENV)) {
        Ok(Command::Run(cfg, warnings)) => (cfg, warnings),
        Ok(Command::Help) => {
            print!("{}", cli::usage());
            return;
        }
        Ok(Command::Version) => {
            println!("reverse-udp-tunnel {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Err(problem) => {
            eprintln!("reverse-udp-tunnel: {problem} (see --help)");
            exit(2);
        }
    };
    rut::sys::logging::init(cfg.log_level, cfg.name.as_deref(), cfg.syslog);
    for warning in warnings {
        log::warn!("{warning}");
    }
    if let Err(e) = rut::run(cfg) {
        log::error!("{e}");
        exit(1);
    }
}
