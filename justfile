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

# Build kiln's own image for linux/amd64 and linux/arm64 with kiln and push it to REPOSITORY
# (an OCI layout under target/own-image without one).
image *ARGS:
    scripts/build-image.sh {{ARGS}}

# Benchmarks; figures go to docs/performance.md.
bench:
    cargo bench -p kiln-snapshot
