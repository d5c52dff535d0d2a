//! The `weir` command line.
use std::process::ExitCode;

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
