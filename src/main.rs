//! The `weir` binary: everything lives in `weir-node`; this only hands over.
//!
//! It also picks the process's allocator. A proxied request makes a few
//! dozen short-lived allocations (header maps, `Bytes`, futures); glibc's
//! malloc spent about a sixth of weir's CPU on them, mimalloc's per-thread
//! free lists a fraction of that (see `docs/benchmarks.md`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir_node::cli::main()
}
