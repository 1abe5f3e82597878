#!/usr/bin/env bash
# kiln's main job, end to end: start a local registry on loopback, push busybox base images
# built from Debian packages, build examples/hello with kiln and push it, then inspect the
# result with skopeo. Safe to run again: each run uses a fresh temp dir and a free port.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release -q -p kiln -p kiln-testkit --bins

work=$(mktemp -d)
registry_pid=
cleanup() {
	[[ -n $registry_pid ]] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
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

echo "== kiln build examples/hello -> $registry/hello:1"
KILN_ROOT="$work/kiln" target/release/kiln build --progress=plain \
	--build-arg "REGISTRY=$registry" \
	-t "$registry/hello:1" --push examples/hello

echo "== skopeo inspect --raw docker://$registry/hello:1"
skopeo inspect --raw --tls-verify=false "docker://$registry/hello:1"
echo
echo "== skopeo inspect --config docker://$registry/hello:1"
skopeo inspect --config --tls-verify=false "docker://$registry/hello:1"
echo
echo "== the image's /app/message.txt, unpacked with umoci"
skopeo copy -q --insecure-policy --src-tls-verify=false "docker://$registry/hello:1" "oci:$work/layout:hello"
umoci unpack --image "$work/layout:hello" "$work/bundle" >"$work/umoci.log" 2>&1 || { cat "$work/umoci.log"; exit 1; }
cat "$work/bundle/rootfs/app/message.txt"
