//! The `sluice` binary: see `sluice --help` and DESIGN.md §4.
use std::process::ExitCode;

/// mimalloc: the proxy allocates and frees small buffers per message on
/// every worker thread, where glibc's malloc spent a tenth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sluice::cli::main()
}
