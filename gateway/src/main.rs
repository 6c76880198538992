//! The `sluice` binary: see `sluice --help` and DESIGN.md §4.
use std::process::ExitCode;

fn main() -> ExitCode {
    sluice::cli::main()
}
