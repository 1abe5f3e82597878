#!/usr/bin/env bash
# kiln's main job, end to end: start a local registry on loopback, push busybox base images
# built from Debian packages, build examples/hello for linux/amd64 and linux/arm64 with kiln
# (the arm64 RUN step runs under QEMU inside kiln's own user namespace) and push one index,
# then inspect the result with skopeo and umoci. Safe to run again: each run uses a fresh
# temp dir and a free port.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release -q -p kiln -p kiln-testkit --bins

work=$(mktemp -d)
registry_pid=
# The registry dies of the SIGTERM (status 143); that must not become the script's status.
cleanup() {
	if [[ -n $registry_pid ]]; then
		kill "$registry_pid" 2>/dev/null || true
		wait "$registry_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

# A free port on 127.0.0.1: one nothing answers on.
port=
for _ in $(seq 50); do
	candidate=$((20000 + RANDOM % 30000))
	if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
		port=$candidate
		break
	fi
done
[[ -n $port ]] || { echo "demo.sh: no free port found" >&2; exit 1; }
registry=127.0.0.1:$port

cat >"$work/registry.yml" <<YAML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: $registry}
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
	sleep 0.1
done

echo "== base images: busybox for amd64, arm64, arm/v7, ppc64le, s390x -> $registry"
target/release/kiln-fixtures push "$registry" busybox

echo "== kiln build --platform linux/amd64,linux/arm64 examples/hello -> $registry/hello:1"
KILN_ROOT="$work/kiln" target/release/kiln build --progress=plain \
	--platform linux/amd64,linux/arm64 \
	--build-arg "REGISTRY=$registry" \
	-t "$registry/hello:1" --push examples/hello

echo "== skopeo inspect --raw docker://$registry/hello:1 (the index)"
skopeo inspect --raw --tls-verify=false "docker://$registry/hello:1"
echo
for arch in amd64 arm64; do
	echo "== linux/$arch: config and /app/message.txt (skopeo copy + umoci unpack)"
	skopeo --override-arch "$arch" inspect --config --tls-verify=false "docker://$registry/hello:1" |
		grep -E '"(architecture|User|WorkingDir)"|org.opencontainers.image.title'
	skopeo --override-arch "$arch" --insecure-policy copy -q --src-tls-verify=false \
		"docker://$registry/hello:1" "oci:$work/layout-$arch:hello"
	umoci unpack --image "$work/layout-$arch:hello" "$work/bundle-$arch" >"$work/umoci.log" 2>&1 ||
		{ cat "$work/umoci.log"; exit 1; }
	cat "$work/bundle-$arch/rootfs/app/message.txt"
done
