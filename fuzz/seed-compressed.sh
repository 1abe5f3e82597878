#!/usr/bin/env bash
# Writes the seed corpora of extract_compressed and docker_archive (fuzz/corpus/<target>/)
# with GNU tar and the Debian compressors: small layers in each compression, and small
# `docker save` archives. Run from anywhere; the corpora's later entries are the fuzzer's.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A small layer: a file, a directory, a symlink, a hard link, a whiteout.
mkdir -p "$work/tree/etc" "$work/tree/bin"
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/tree/etc/passwd"
printf '#!/bin/sh\necho hi\n' >"$work/tree/bin/hi"
ln -s hi "$work/tree/bin/hello"
ln "$work/tree/etc/passwd" "$work/tree/etc/passwd-"
touch "$work/tree/etc/.wh.shadow"
tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$work/tree" -cf "$work/layer.tar" .

out=corpus/extract_compressed
mkdir -p "$out"
seed() { # seed NAME MODE-BYTE FILE
	{ printf "\\x$2"; cat "$3"; } >"$out/$1"
}
seed plain-tar 00 "$work/layer.tar"
gzip -9 -n -c "$work/layer.tar" >"$work/layer.tar.gz" && seed gzip 00 "$work/layer.tar.gz"
bzip2 -9 -c "$work/layer.tar" >"$work/layer.tar.bz2" && seed bzip2 00 "$work/layer.tar.bz2"
xz -6 -c "$work/layer.tar" >"$work/layer.tar.xz" && seed xz 00 "$work/layer.tar.xz"
zstd -q -19 -c <"$work/layer.tar" >"$work/layer.tar.zst" && seed zstd 00 "$work/layer.tar.zst"
# Concatenated streams, and the small bombs of testdata/hostile.
cat "$work/layer.tar.gz" "$work/layer.tar.gz" >"$work/twice.gz" && seed gzip-twice 00 "$work/twice.gz"
cat "$work/layer.tar.xz" "$work/layer.tar.xz" >"$work/twice.xz" && seed xz-twice 00 "$work/twice.xz"
seed bomb-bzip2 00 ../testdata/hostile/bomb-bzip2.tar.bz2
seed bomb-zstd-window 00 ../testdata/hostile/bomb-zstd-window-128mib.tar.zst
# Tars that the target compresses itself, one per format.
for mode in 01 02 03 04; do
	seed "tar-via-$mode" "$mode" "$work/layer.tar"
done

# docker save archives: manifest.json, a config, layers plain and gzip, one a symlink to
# another (as docker save writes repeated layers).
out=corpus/docker_archive
mkdir -p "$out"
archive() { # archive NAME LAYER-FILE
	local dir="$work/archive-$1"
	mkdir -p "$dir/layer"
	cp "$2" "$dir/layer/layer.tar"
	local diff_id
	diff_id=sha256:$(sha256sum <"$work/layer.tar" | cut -d' ' -f1)
	printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s","%s"]}}' \
		"$diff_id" "$diff_id" >"$dir/config.json"
	printf '[{"Config":"config.json","RepoTags":["busybox:latest"],"Layers":["layer/layer.tar","again.tar"]}]' \
		>"$dir/manifest.json"
	ln -s layer/layer.tar "$dir/again.tar"
	tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$dir" -cf "$out/$1" .
}
archive plain "$work/layer.tar"
archive gzip "$work/layer.tar.gz"
echo "seeded: $(ls corpus/extract_compressed | wc -l) extract_compressed, $(ls corpus/docker_archive | wc -l) docker_archive"
