use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = stockcast::cli::Cli::parse();
    stockcast::telemetry::init_tracing(cli.log_json);
    match stockcast::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
