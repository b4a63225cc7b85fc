//! xdpnet: the CNI plugin binary.
//!
//! Not implemented yet: every command answers with a CNI error object (code 11, "try again
//! later") so a runtime that finds it installed gets a clear, retryable error.

#![forbid(unsafe_code)]

fn main() {
    let cmd = std::env::var("CNI_COMMAND").unwrap_or_default();
    println!(
        "{{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"xdpnet CNI plugin is not implemented in this build\",\"details\":\"CNI_COMMAND={}\"}}",
        cmd.escape_default()
    );
    std::process::exit(1);
}
