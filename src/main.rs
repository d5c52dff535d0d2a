//! The `weir` binary: everything lives in `weir-node`; this only hands over.
fn main() -> std::process::ExitCode {
    weir_node::cli::main()
}
