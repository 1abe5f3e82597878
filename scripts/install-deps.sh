#!/usr/bin/env bash
# Installs the Debian packages kiln's tests run against: a real registry, skopeo and umoci to
# check kiln's output, qemu-user-static and busybox-static for multi-arch builds, uidmap for
# rootless user namespaces, GNU time to measure a kiln process's peak memory, and the
# compressors (xz, bzip2, zstd) that write the tests' archives and hostile corpus. kiln links
# libseccomp (libseccomp-dev) for the seccomp filter of RUN steps, and the sandbox tests build
# their attacker program with gcc -static (libc6-dev); strace counts the syscalls kiln makes
# per extracted or copied file (tests/per_file_work.rs). podman with runc, and podman's seccomp
# profile (golang-github-containers-common), run kiln inside a real container the way a
# Kubernetes pod runs it (tests/pods.rs), and catatonit is the pause process of the pods
# `podman kube play` starts for the Kubernetes recipe (tests/recipes.rs). kiln's own image (scripts/build-image.sh,
# tests/own_image.rs) needs gcc-aarch64-linux-gnu to link the static linux/arm64 binary; the
# script downloads the image's other Debian packages itself. python3-venv holds the SPDX
# validator the attestation tests check kiln's SBOMs with (PyPI's spdx-tools, which Debian
# does not package), installed into target/tools/spdx-tools. openssl makes self-signed registry
# certificates the way users do (tests of `--registry-certificate`); man-db's `man -l` renders
# the pages `kiln man` writes (tests/help.rs). git fetches git build contexts, and its `git
# daemon` serves them in tests/remote_contexts.rs. Idempotent: installed packages
# are left alone, and apt's indexes are only refreshed when something is missing.
#
# It never registers binfmt_misc handlers: kiln registers qemu inside its own user namespace,
# and a host-wide registration would let foreign-arch tests pass without kiln doing its job.
set -euo pipefail

packages=(
	docker-registry
	skopeo
	umoci
	qemu-user-static
	busybox-static
	uidmap
	time
	dpkg-dev
	ca-certificates
	libseccomp-dev
	gcc
	libc6-dev
	xz-utils
	bzip2
	zstd
	strace
	podman
	runc
	golang-github-containers-common
	catatonit
	gcc-aarch64-linux-gnu
	python3-venv
	openssl
	man-db
	git
)

as_root=()
if [[ $(id -u) -ne 0 ]]; then
	if command -v sudo >/dev/null 2>&1; then
		as_root=(sudo)
	else
		echo "install-deps.sh: must run as root (or with sudo installed)" >&2
		exit 1
	fi
fi

missing=()
for package in "${packages[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
	if [[ $status != "install ok installed" ]]; then
		missing+=("$package")
	fi
done

# PyPI's spdx-tools, pinned, in a virtualenv of the checkout (tests/attestations.rs runs its
# bin/pyspdxtools): no system Python's packages are touched.
spdx_tools_version=0.8.5
spdx_tools_dir=$(cd "$(dirname "$0")/.." && pwd)/target/tools/spdx-tools
install_spdx_tools() {
	if [[ -x $spdx_tools_dir/bin/pyspdxtools ]] &&
		"$spdx_tools_dir/bin/pip" show spdx-tools 2>/dev/null | grep -qx "Version: $spdx_tools_version"; then
		return
	fi
	echo "install-deps.sh: installing spdx-tools $spdx_tools_version from PyPI into $spdx_tools_dir"
	python3 -m venv "$spdx_tools_dir"
	"$spdx_tools_dir/bin/pip" install --quiet "spdx-tools==$spdx_tools_version"
	"$spdx_tools_dir/bin/pyspdxtools" --help >/dev/null
}

if [[ ${#missing[@]} -eq 0 ]]; then
	echo "install-deps.sh: all packages already installed: ${packages[*]}"
	install_spdx_tools
	exit 0
fi

binfmt_dir=/proc/sys/fs/binfmt_misc
registered_handlers() {
	if [[ -e $binfmt_dir/register ]]; then
		find "$binfmt_dir" -maxdepth 1 -type f -name 'qemu-*' -printf '%f\n' | sort
	fi
}
handlers_before=$(registered_handlers)

echo "install-deps.sh: installing ${missing[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
# --no-install-recommends keeps out binfmt-support, whose postinst would register qemu.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y -q --no-install-recommends "${missing[@]}"

# On a host where systemd runs, the qemu-user-static install triggers systemd-binfmt, which
# registers every /usr/lib/binfmt.d/qemu-*.conf. Undo exactly the registrations this run added.
handlers_after=$(registered_handlers)
added=$(comm -13 <(echo "$handlers_before") <(echo "$handlers_after") | sed '/^$/d')
for handler in $added; do
	echo "install-deps.sh: unregistering binfmt handler $handler added by the install"
	echo -1 | "${as_root[@]}" tee "$binfmt_dir/$handler" >/dev/null
done
if [[ -n $added ]]; then
	echo "install-deps.sh: note: systemd-binfmt registers them again at boot;" \
		"kiln's foreign-arch tests do not need (and should not rely on) host handlers" >&2
fi

for tool in docker-registry skopeo umoci qemu-aarch64-static busybox newuidmap dpkg-deb gcc aarch64-linux-gnu-gcc xz bzip2 zstd podman runc catatonit; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "install-deps.sh: $tool still missing after install" >&2
		exit 1
	}
done
install_spdx_tools
echo "install-deps.sh: done"
