//! `datadog-delegated-auth`: everything lives in the library; see `cli::main`.

fn main() -> std::process::ExitCode {
    datadog_delegated_auth::cli::main()
}
