#!/usr/bin/env bash
# Builds kiln's own image with kiln: static kiln binaries for linux/amd64 and linux/arm64, then
# `kiln build --platform linux/amd64,linux/arm64` of images/kiln/Dockerfile, for two target
# stages: `kiln` (FROM scratch: /kiln/kiln, /kiln/executor, CA certificates) and `debug` (the
# same plus busybox, for GitLab jobs).
#
#   scripts/build-image.sh REGISTRY/REPOSITORY [-- KILN_BUILD_FLAGS...]
#       pushes REPOSITORY:latest and :VERSION (the `kiln` stage), :debug and :VERSION-debug
#   scripts/build-image.sh [-- KILN_BUILD_FLAGS...]
#       writes both into the OCI layout target/own-image/oci (tags latest, VERSION, debug,
#       VERSION-debug)
#
# Flags after `--` go to both `kiln build` runs (`--registry-certificate`, `--registry-config`,
# ...); credentials come from `kiln login` or DOCKER_CONFIG as for any kiln push.
#
# The binaries link glibc statically (Rust's `crt-static`), with libseccomp's static library
# from Debian's libseccomp-dev for each architecture (see docs/own-image.md for why not musl).
# Debian packages for the image (libseccomp-dev, busybox-static, ca-certificates) are fetched
# with private apt lists into target/own-image/debs, as kiln-testkit fetches its fixtures:
# dpkg's architectures and the host's apt state stay untouched. Everything else lives under
# target/own-image too; running it again rebuilds only what changed, and the image's digest
# stays the same for the same commit (SOURCE_DATE_EPOCH is the commit's time).
#
# KILN_ROOT (kiln's store) defaults to target/own-image/store.
set -euo pipefail
# The image gets the context's modes: dirs 0755 and files 0644 whatever the caller's umask.
umask 022
cd "$(dirname "$0")/.."

usage() {
	echo "usage: $0 [REGISTRY/REPOSITORY] [-- KILN_BUILD_FLAGS...]" >&2
	exit 2
}
repository=
if [[ $# -gt 0 && $1 != -- ]]; then
	[[ $1 != -* ]] || usage
	repository=$1
	shift
fi
if [[ $# -gt 0 ]]; then
	[[ $1 == -- ]] || usage
	shift
fi
extra_flags=("$@")
if [[ $repository == *@* || ${repository##*/} == *:* ]]; then
	echo "build-image.sh: give a repository without a tag or digest; the tags are latest, VERSION, debug and VERSION-debug" >&2
	exit 2
fi

out=$PWD/target/own-image
debs=$out/debs
export KILN_ROOT=${KILN_ROOT:-$out/store}
mkdir -p "$out" "$debs"
# One run at a time per checkout: runs share the context, the debs and cargo's target dir
# (tests that use the image may start the script side by side).
exec 9>"$out/.lock"
flock 9

# Debian architecture -> (Rust target, GNU triplet: the multiarch dir and the gcc prefix).
declare -A rust_target=([amd64]=x86_64-unknown-linux-gnu [arm64]=aarch64-unknown-linux-gnu)
declare -A gnu_triplet=([amd64]=x86_64-linux-gnu [arm64]=aarch64-linux-gnu)
arches=(amd64 arm64)
# install-deps.sh installs the arm64 cross compiler, for an amd64 host.
if [[ $(uname -m) != x86_64 ]]; then
	echo "build-image.sh: runs on an amd64 (x86_64) Debian host, not $(uname -m)" >&2
	exit 1
fi
host_arch=amd64

scripts/install-deps.sh

for arch in "${arches[@]}"; do
	target=${rust_target[$arch]}
	if ! rustup target list --installed | grep -qx "$target"; then
		rustup target add "$target"
	fi
done

# fetch_debs ARCH PACKAGE...: the .deb of each package in $debs/ARCH, downloaded when missing.
fetch_debs() {
	local arch=$1
	shift
	local dir=$debs/$arch missing=() package
	for package in "$@"; do
		compgen -G "$dir/${package}_*.deb" >/dev/null || missing+=("$package")
	done
	[[ ${#missing[@]} -gt 0 ]] || return 0
	local work
	work=$(mktemp -d "$out/.apt-XXXXXX")
	mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/download" "$dir"
	local options=(
		"-oAPT::Architecture=$arch" "-oAPT::Architectures=$arch"
		"-oDir::State::Lists=$work/lists" "-oDir::Cache=$work/cache"
	)
	# A failing extra source (an unreachable third-party repository) makes `update` fail
	# although Debian's indexes arrived; the download decides.
	apt-get "${options[@]}" -q update >"$work/update.log" 2>&1 || true
	if ! (cd "$work/download" && apt-get "${options[@]}" -q download "${missing[@]}"); then
		cat "$work/update.log" >&2
		exit 1
	fi
	mv "$work/download"/*.deb "$dir/"
	rm -rf "$work"
}

# unpack ARCH PACKAGE DIR: the files of a fetched package, in DIR (made afresh).
unpack() {
	local debfile
	debfile=$(compgen -G "$debs/$1/${2}_*.deb" | head -n1)
	rm -rf "$3"
	mkdir -p "$3"
	dpkg-deb -x "$debfile" "$3"
}

echo "== Debian packages for the image"
fetch_debs amd64 ca-certificates
for arch in "${arches[@]}"; do
	fetch_debs "$arch" libseccomp-dev busybox-static
	unpack "$arch" libseccomp-dev "$out/libseccomp/$arch"
done

echo "== static kiln for ${arches[*]}"
targets=()
for arch in "${arches[@]}"; do
	target=${rust_target[$arch]}
	triplet=${gnu_triplet[$arch]}
	var=${target^^}
	var=${var//-/_}
	# gcc links (the native one is also installed under its triplet's name); libseccomp.a is
	# bundled into the libseccomp-sys rlib from this directory.
	export "CARGO_TARGET_${var}_LINKER=$triplet-gcc"
	export "CARGO_TARGET_${var}_RUSTFLAGS=-C target-feature=+crt-static -L native=$out/libseccomp/$arch/usr/lib/$triplet"
	# zstd-sys and lzma-sys compile C with the cc crate.
	export "CC_${target//-/_}=$triplet-gcc"
	export "AR_${target//-/_}=$triplet-ar"
	targets+=(--target "$target")
done
# Run from a test, the test's package variables would reach ring's build script, which
# watches CARGO_PKG_* and CARGO_MANIFEST_*, and every change of caller would rebuild it all.
unset "${!CARGO_PKG_@}" "${!CARGO_MANIFEST_@}" CARGO_CRATE_NAME CARGO_PRIMARY_PACKAGE
# The release profile keeps debug info for profiling; an image wants it out, symbols in.
CARGO_TARGET_DIR=$out/cargo LIBSECCOMP_LINK_TYPE=static \
	CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
	cargo build --locked --release -p kiln --bin kiln "${targets[@]}"

echo "== build context: target/own-image/context"
context=$out/context
rm -rf "$context"
mkdir -p "$context/rootfs/etc/ssl/certs" "$context/rootfs/tmp"
chmod 1777 "$context/rootfs/tmp"
unpack amd64 ca-certificates "$out/ca-certificates"
# What update-ca-certificates writes from the package alone: every Mozilla certificate, in
# order, each ending in a newline; no local additions of this host.
LC_ALL=C find "$out/ca-certificates/usr/share/ca-certificates/mozilla" -name '*.crt' -print0 |
	LC_ALL=C sort -z | xargs -0 sed -e '$a\' >"$context/rootfs/etc/ssl/certs/ca-certificates.crt"
for arch in "${arches[@]}"; do
	dist=$context/dist/linux/$arch
	mkdir -p "$dist/kiln/.docker" "$dist/debug/busybox" "$dist/debug/bin"
	cp "$out/cargo/${rust_target[$arch]}/release/kiln" "$dist/kiln/kiln"
	# kiln called `executor` is `kiln executor`; the symlink keeps that name in argv[0].
	ln -s kiln "$dist/kiln/executor"
	unpack "$arch" busybox-static "$out/busybox/$arch"
	cp "$out/busybox/$arch/bin/busybox" "$dist/debug/busybox/busybox"
	ln -s /busybox/busybox "$dist/debug/bin/sh"
done
# Debian builds busybox-static with one configuration for every architecture, so the build
# host's busybox lists the applets of all of them.
applets=$("$context/dist/linux/$host_arch/debug/busybox/busybox" --list)
for arch in "${arches[@]}"; do
	for applet in $applets; do
		[[ $applet == busybox ]] || ln -s busybox "$context/dist/linux/$arch/debug/busybox/$applet"
	done
done

kiln=$context/dist/linux/$host_arch/kiln/kiln
version=$("$kiln" --version)
version=${version#kiln }
# `kiln 0.1.0 (commit abc, date)`: the tag takes the version alone.
version=${version%% *}
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
# build STAGE TAG... : builds one target stage for both platforms and pushes or writes it.
build() {
	local stage=$1
	shift
	local tags=() output=(--push) tag
	if [[ -n $repository ]]; then
		for tag in "$@"; do tags+=(-t "$repository:$tag"); done
	else
		for tag in "$@"; do tags+=(-t "kiln:$tag"); done
		output=(-o "type=oci,dest=$out/oci,tar=false")
	fi
	echo "== kiln build --target $stage: ${tags[*]}"
	SOURCE_DATE_EPOCH=$epoch "$kiln" build --progress=plain \
		--platform "$(printf 'linux/%s,' "${arches[@]}" | sed 's/,$//')" \
		-f images/kiln/Dockerfile --target "$stage" --build-arg "KILN_VERSION=$version" \
		"${tags[@]}" "${output[@]}" "${extra_flags[@]}" "$context"
}
build kiln latest "$version"
build debug debug "$version-debug"
