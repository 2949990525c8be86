#!/usr/bin/env bash
# Builds the Debian package target/debian/mtcpshim_<version>_<arch>.deb with dpkg-deb:
#   /usr/bin/mtcprun
#   /usr/lib/mtcpshim/libmtcpshim.so     (mtcprun finds it at ../lib/mtcpshim/ from itself)
#   /usr/share/doc/mtcpshim/             README.md, docs/*.md, copyright
# DPDK is linked statically into libmtcpshim.so: the script fails if ldd shows a DPDK library
# or a library it cannot resolve. Depends is computed by dpkg-shlibdeps from the libraries the
# two files need (libc6, and the system libraries DPDK's drivers use: libnuma, libbsd, libbpf,
# libxdp), so it is right for the machine that built the package.
#
#   bash ci/deb.sh             cargo build --release, then package
#   bash ci/deb.sh --no-build  package what target/release already holds (ci/test.sh built it)
# Prints the path of the package on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
case "${1:-}" in
    --no-build) build=0 ;;
    "") ;;
    *) echo "usage: bash ci/deb.sh [--no-build]" >&2; exit 2 ;;
esac
if [ "$build" = 1 ]; then
    cargo build --release -p mtcprun -p mtcpshim
fi

bin=target/release/mtcprun
lib=target/release/libmtcpshim.so
for f in "$bin" "$lib"; do
    [ -f "$f" ] || { echo "deb.sh: $f is missing: run cargo build --release first" >&2; exit 1; }
done

# The workspace version ([workspace.package] in Cargo.toml).
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || { echo "deb.sh: no version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
name="mtcpshim_${version}_${arch}"
out=target/debian
stage="$out/$name"

# Nothing of DPDK may be loaded at run time.
for f in "$bin" "$lib"; do
    deps=$(ldd "$f")
    if grep -E 'librte_|libdpdk|not found' <<<"$deps"; then
        echo "deb.sh: $f needs the libraries above at run time; DPDK must be linked statically" >&2
        exit 1
    fi
done

rm -rf "$stage" "$out/$name.deb"
mkdir -p "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/mtcpshim" \
    "$stage/usr/share/doc/mtcpshim/docs"
install -m 0755 "$bin" "$stage/usr/bin/mtcprun"
install -m 0644 "$lib" "$stage/usr/lib/mtcpshim/libmtcpshim.so"
# Debug information stays in the build tree; the dynamic symbols (the hooks) stay in the library.
strip --strip-unneeded "$stage/usr/bin/mtcprun" "$stage/usr/lib/mtcpshim/libmtcpshim.so"
install -m 0644 README.md "$stage/usr/share/doc/mtcpshim/"
install -m 0644 docs/*.md "$stage/usr/share/doc/mtcpshim/docs/"
cat > "$stage/usr/share/doc/mtcpshim/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: mtcpshim

Files: *
License: MIT OR Apache-2.0
Comment: libmtcpshim.so contains DPDK 22.11 (BSD-3-Clause), linked statically.
EOF

# Depends from the ELF files' needed libraries (dpkg-shlibdeps wants a debian/control beside it).
shl=$(mktemp -d)
trap 'rm -rf "$shl"' EXIT
mkdir -p "$shl/debian"
printf 'Source: mtcpshim\n\nPackage: mtcpshim\nArchitecture: any\n' > "$shl/debian/control"
abs=$(pwd)
depends=$(cd "$shl" && dpkg-shlibdeps -O -e"$abs/$stage/usr/bin/mtcprun" \
    -e"$abs/$stage/usr/lib/mtcpshim/libmtcpshim.so" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
if grep -Eiq 'dpdk|librte' <<<"$depends"; then
    echo "deb.sh: Depends names DPDK ($depends); it must be linked statically" >&2
    exit 1
fi

size=$(du -sk "$stage/usr" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: mtcpshim
Version: $version
Architecture: $arch
Maintainer: mtcpshim developers <mtcpshim@localhost>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Description: kernel-bypass TCP for unmodified Linux servers
 mtcprun runs a program (Redis first) with LD_PRELOAD=libmtcpshim.so: its
 listening sockets on the ports given are served by a user-space TCP/IP
 stack over DPDK (net_tap, af_packet, af_xdp, memif or a NIC) inside the
 process, instead of the kernel. DPDK is linked into the library.
 .
 mtcprun stats PID shows a running stack's live counters.
EOF

dpkg-deb --root-owner-group --build "$stage" "$out/$name.deb" >/dev/null
rm -rf "$stage"
echo "deb.sh: Depends: $depends" >&2
echo "$out/$name.deb"
