//! xdpnet: the CNI plugin binary (in /opt/cni/bin). Reads the CNI_* environment and the network
//! configuration on stdin, forwards the request to xdpnetd, prints the result or a CNI error
//! object, and exits 0 or 1. Never panics on any input.

#![forbid(unsafe_code)]

use std::io::Read;
use std::time::Duration;

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(1 << 20).read_to_end(&mut stdin);
    let (out, code) = match read {
        Ok(_) => xdpnet_cni::run(|k| std::env::var(k).ok(), &stdin, Duration::from_secs(30)),
        Err(e) => (
            Some(
                xdpnet_cni::CniError::new(xdpnet_cni::code::IO, "reading stdin", e.to_string())
                    .to_json(xdpnet_cni::LATEST),
            ),
            1,
        ),
    };
    if let Some(v) = out {
        println!("{v}");
    }
    std::process::exit(code);
}
