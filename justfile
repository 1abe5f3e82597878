# kiln's everyday commands (https://github.com/casey/just); each is a thin wrapper.

# Run kiln's main job end to end against a local registry.
demo:
    scripts/demo.sh

# Formatting, lints and every test.
test:
    scripts/test.sh

# Install the Debian packages the tests and the demo use.
deps:
    scripts/install-deps.sh

# Benchmarks; figures go to docs/performance.md.
bench:
    cargo bench -p kiln-snapshot
