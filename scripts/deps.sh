#!/usr/bin/env bash
# Installs the system packages the build, tests and demo need. Idempotent and quiet when
# everything is present. Debian 12, as root (or with sudo).
set -euo pipefail

# Debian packages: iproute2, ethtool, ping, tcpdump and iperf3 (TCP rows of compare, demo) for the lab; m4 .. libbpf-dev for the
# libbpf build; the CNI tests' real clients: golang-go + golang-github-appc-cni-dev (libcni
# driver), containernetworking-plugins + iptables (portmap, bandwidth, loopback), containerd +
# runc + busybox-static (CRI pods); procps + util-linux (sysctl, ps, taskset, chrt) for the
# kernel-path comparison (its iptables too); nftables for xdpnetd's egress masquerade.
pkgs=(iproute2 ethtool iputils-ping tcpdump iperf3 m4 libelf-dev zlib1g-dev pkg-config clang libbpf-dev
  golang-go golang-github-appc-cni-dev containernetworking-plugins iptables containerd runc
  busybox-static procps util-linux nftables)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The CRI client of the containerd test (v1 gRPC stubs; pulls grpcio and protobuf).
python3 -c "import cri_api, grpc" 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check container-runtime-interface-api >/dev/null

for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 || true
done
