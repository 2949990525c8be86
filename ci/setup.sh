#!/usr/bin/env bash
# Installs what building and testing mtcpshim needs on Debian 12 (run as root).
# This is README.md's "set up" command; .ci/run runs it on a fresh machine.
# dpkg-dev (dpkg-shlibdeps) and binutils (strip) are for ci/deb.sh, which a test runs.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    libdpdk-dev dpdk-dev \
    clang libclang-dev pkg-config build-essential \
    libxdp-dev libbpf-dev libnuma-dev libbsd-dev libelf-dev zlib1g-dev \
    iproute2 ethtool iputils-ping tcpdump socat util-linux procps \
    redis-server redis-tools python3 python3-redis valgrind tcl strace \
    dpkg-dev binutils python3-matplotlib linux-perf \
    memcached libmemcached-tools nginx-light wrk apache2-utils gunicorn python3-uvloop curl
# Node.js for the libuv server test: the machine's own (20 here), else Debian's.
command -v node >/dev/null || apt-get install -y --no-install-recommends nodejs

# The tap PMD needs /dev/net/tun.
if [ ! -e /dev/net/tun ]; then
    modprobe tun 2>/dev/null || true
fi
# No hugepages are reserved: the stack runs without them (MTCP_HUGEPAGES=auto) and says so.
echo "setup: done ($(pkg-config --modversion libdpdk 2>/dev/null || echo 'DPDK missing'))"
