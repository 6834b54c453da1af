use rut::cli::{self, Command};
use simplelog::{ConfigBuilder, LevelFilter, WriteLogger};
use std::process::exit;

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let cfg = match cli::parse(&args, std::env::var_os(cli::KEY_ENV)) {
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
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
    let level = [
        LevelFilter::Error,
        LevelFilter::Warn,
        LevelFilter::Info,
        LevelFilter::Debug,
    ][cfg.log_level as usize];
    let log_cfg = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    let _ = WriteLogger::init(level, log_cfg, std::io::stderr());
    if let Err(e) = rut::run(cfg) {
        log::error!("{e}");
        exit(1);
    }
}
