//! `gateway`: run fngate from a TOML configuration.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(version, about = "fngate: HTTPS function invocation gateway")]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short, default_value = "config/gateway.toml")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Usage log tools.
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
enum UsageCommand {
    /// Sums usage records by function and network.
    Summarize {
        /// Usage log files (rotated ones included).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    // The embedded worker's isolated instances start as this executable:
    // be their keeper, before any thread exists (it forks).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a == sandbox_runtime::isolation::INIT_ARG)
    {
        sandbox_runtime::isolation::init_main(&argv[2..]);
    }
    sandbox_runtime::cli::init_logging();
    let args = Args::parse();
    if let Some(Command::Usage {
        command: UsageCommand::Summarize { files, json },
    }) = &args.command
    {
        return match fngate::metering::summary::summarize(files) {
            Ok(s) => {
                print!("{}", if *json { s.to_json() } else { s.to_table() });
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway usage summarize: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match fngate::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.check {
        println!("configuration ok: {} functions", config.functions.len());
        return std::process::ExitCode::SUCCESS;
    }
    // Shard 0 (see fngate::shards): the gateway starts the other shards itself.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(fngate::run(config, sandbox_runtime::cli::shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
