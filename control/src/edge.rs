//! The binaries' edge: how an error ends a process. One line on stderr, the program's name and
//! the cause chain (`a: b: c`), never a backtrace whatever `RUST_BACKTRACE` says; exit
//! status 1. Used by `xdpnetd` and `xdpnet-bench`.

use std::process::ExitCode;

/// Ends `prog` with `r`'s outcome.
pub fn exit(prog: &str, r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{prog}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
