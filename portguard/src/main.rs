//! `portguard`: the command line. Parsing here, each verb in `commands/`, the exit codes in
//! `portguard::exit`.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    portguard::output::set_quiet(cli.quiet);
    // `portguard stats | head` should end quietly when head does, as other tools do. The
    // loader and the rollback guard keep Rust's default (SIGPIPE ignored): a client leaving a
    // socket or pipe must not kill them.
    if !matches!(cli.command, cli::Command::Attach { .. } | cli::Command::RollbackGuard { .. }) {
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
            portguard::exit::Exit::of_error(&error).into()
        }
    }
}
