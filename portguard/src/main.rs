//! `portguard`: the command line. Parsing and exit codes here; each verb in `commands/`.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // `portguard stats | head` should end quietly when head does, as other tools do. The
    // loader keeps Rust's default (SIGPIPE ignored): a client leaving its socket must not kill it.
    if !matches!(cli.command, cli::Command::Attach { .. }) {
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    env_logger::Builder::new()
        .filter_level(match cli.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        })
        .parse_env("PORTGUARD_LOG")
        .format_target(false)
        .init();
    match commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
