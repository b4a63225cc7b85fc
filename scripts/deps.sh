#!/usr/bin/env bash
# Installs the system packages the build, tests and demo need. Idempotent and quiet when
# everything is present. Debian 12, as root (or with sudo).
set -euo pipefail

# Debian packages: iproute2, ethtool, ping and tcpdump for the lab; the libxdp/libbpf build needs the rest.
pkgs=(iproute2 ethtool iputils-ping tcpdump m4 libelf-dev zlib1g-dev pkg-config clang libbpf-dev)
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

for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 || true
done
