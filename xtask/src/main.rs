//! `cargo xtask …`: the developer entry points (DESIGN.md §2, §3).
//!
//! - `setup`: installs the toolchain and packages DESIGN.md §3 lists,
//!   idempotently, and mounts bpffs;
//! - `build`: builds the `sluice` binary (the eBPF object is embedded by
//!   `gateway/build.rs`);
//! - `test`: runs every test, the end-to-end ones included (root);
//! - `demo`: runs a real agent request through Sluice and prints what
//!   happened (root).
//!
//! Later subcommands (`bench`, `install`, `dist`) slot in next to these.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod build;
mod demo;
mod setup;
mod sh;
mod test;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Sluice developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, nightly, bpf-linker), mount bpffs
    Setup,
    /// Build the `sluice` binary
    Build {
        /// Build with the release profile
        #[arg(long)]
        release: bool,
    },
    /// Run every test: unit tests and the end-to-end suite (as root)
    Test {
        /// Extra arguments passed to the test binaries, e.g. a test name filter
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show a real curl request flowing agent -> eBPF -> Sluice -> HTTPS upstream (as root)
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => setup::check().and_then(|()| build::run(release).map(drop)),
        Task::Test { args } => test::run(&args),
        Task::Demo => demo::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
