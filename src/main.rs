use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = stockcast::cli::Cli::parse();
    if matches!(
        cli.command,
        stockcast::cli::Command::Run { .. } | stockcast::cli::Command::Replay { .. }
    ) {
        // Before any thread starts (see the functions' notes).
        stockcast::model::scorer::serial_kernels();
        stockcast::memory::no_transparent_huge_pages();
    }
    stockcast::telemetry::init_tracing(cli.log_json);
    match stockcast::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
