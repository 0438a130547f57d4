#!/usr/bin/env bash
# Install what nodeforge's tests and demo need on a fresh Debian/Ubuntu machine, and nothing
# the machine already has. Every generated file is checked by the program that consumes it,
# so those programs are test dependencies:
#   containerd            `containerd config dump` and a real daemon for rendered config.toml
#   runc, containernetworking-plugins   real pods for the guest agent's CRI stages
#   systemd               `systemd-analyze verify` for units and drop-ins
#   cloud-init            `cloud-init schema` for user-data
#   dosfstools, mtools    `fsck.fat` and `mcopy` for the seed image (blkid is in util-linux)
#   xorriso               `nodeforge seed --format iso` writes the ISO seed with it; tests read it back
#   cpio                  GNU cpio reads the overlay cpio
#   dpkg-dev / apt        `apt-get download` + `dpkg-deb -x` build the offline stand-in release
#                         (amd64, and arm64 through `dpkg --add-architecture arm64`)
#   python3               serves the stand-in mirror over HTTP in `make demo`, and the replace
#                         demo's registry (fixtures/registry/serve-registry.py)
#   curl, jq, skopeo      fixtures/registry/check-registry.sh reads that registry as clients do
#   qemu-system-x86       test-vm boots guests (the fake guest in its tests, node images)
#   qemu-utils            qemu-img: `nodeforge image` (convert) and test-vm's per-run COW layer
#   util-linux            setpriv --pdeathsig: QEMU dies with a SIGKILLed test-vm
#   debootstrap           fixtures/base/build-base.sh builds the test-node base root tree
#   e2fsprogs             `nodeforge image` (mkfs.ext4 -d, debugfs); e2fsck checks the disk
#   gcc, pkg-config, libseccomp-dev (amd64, arm64), gcc-aarch64-linux-gnu, libc6-dev-arm64-cross
#                         fixtures/upstream/build-upstream.sh builds runc with cgo and a static
#                         libseccomp, natively and cross for arm64; the rest of the upstream
#                         programs are pure Go (Go 1.26 comes with the build machines)
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
want() { # want COMMAND PACKAGE
  have_cmd "$1" || need+=("$2")
}
want containerd containerd
want ctr containerd
want runc runc
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
want systemd-analyze systemd
want cloud-init cloud-init
want fsck.fat dosfstools
want mcopy mtools
want xorriso xorriso
want cpio cpio
want blkid util-linux
want python3 python3
want gzip gzip
want curl curl
want jq jq
want skopeo skopeo
want sha256sum coreutils
want cc gcc
want pkg-config pkg-config
want aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
# The cross compiler's C library headers: only a Recommends of gcc-aarch64-linux-gnu, which
# --no-install-recommends leaves out (cgo then fails with "bits/wordsize.h: No such file").
[ -f /usr/aarch64-linux-gnu/include/stdio.h ] || need+=(libc6-dev-arm64-cross)
[ -f /usr/lib/x86_64-linux-gnu/libseccomp.a ] || need+=(libseccomp-dev)
want qemu-system-x86_64 qemu-system-x86
want qemu-img qemu-utils
want setpriv util-linux
want debootstrap debootstrap
want mkfs.ext4 e2fsprogs
want debugfs e2fsprogs

# The build-only arm64 node programs (fixtures/upstream/build-upstream.sh) link runc against
# Debian's arm64 libseccomp: apt must know the architecture. Adding it is idempotent and
# installs nothing; it costs one `apt-get update` (~3 s here) the first time.
refresh=
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "install-deps: adding the arm64 architecture for the arm64 stand-in" >&2
  dpkg --add-architecture arm64
  refresh=1
fi
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*binary-arm64_Packages*' 2>/dev/null | head -n 1)" ]; then
  refresh=1
fi

# The fixtures `apt-get download` the current Debian packages, and a superseded version is
# gone from the mirror: refresh package lists older than six hours (or missing).
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -360 2>/dev/null | head -n 1)" ]; then
  refresh=1
fi
if [ -n "$refresh" ]; then
  echo "install-deps: refreshing apt package lists" >&2
  apt-get update -qq
fi

[ -f /usr/lib/aarch64-linux-gnu/libseccomp.a ] || need+=(libseccomp-dev:arm64)

if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "install-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# cloud-init skips validation silently without jsonschema; make sure it can validate.
if ! python3 -c 'import jsonschema' 2>/dev/null && [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import jsonschema' 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends python3-jsonschema >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
  echo "install-deps: go not found: the fixtures build Kubernetes, etcd, containerd, runc, the CNI" >&2
  echo "install-deps: plugins and crictl from their Go modules and need Go >= 1.25 on PATH" >&2
  exit 1
fi

# A stopped package manager leaves no running daemons behind: Debian's containerd package may
# start containerd.service where systemd runs; tests start their own instances instead.
echo "install-deps: ok" >&2
