//! Compiles the XDP program (`bpf/xdpnet.bpf.c`) with clang into an object the crate embeds.

use std::path::PathBuf;

fn main() {
    let src = "bpf/xdpnet.bpf.c";
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("xdpnet.bpf.o");
    libbpf_cargo::SkeletonBuilder::new()
        .source(src)
        .obj(&out)
        .clang_args(["-O2", "-Wall", "-Werror", "-I/usr/include/x86_64-linux-gnu"])
        .build()
        .unwrap_or_else(|e| {
            panic!("compiling {src} failed (needs clang and libbpf-dev: make deps): {e:#}")
        });
    println!("cargo:rerun-if-changed={src}");
}
