#!/usr/bin/env bash
# Every check kiln has: formatting, lints, and the whole test suite against a real registry,
# real user namespaces and real QEMU. Safe to run again; fixtures are cached under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
