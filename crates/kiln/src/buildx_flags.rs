//! buildx flags `kiln build` does not have, each with one line saying why and what to do
//! instead, in place of clap's "unexpected argument" and its tip to pass it as a value.

/// (flag, explanation).
const NOT_TAKEN: &[(&str, &str)] = &[
    (
        "--load",
        "kiln has no engine to load into: write a docker archive and load that, e.g. \
         `kiln build -t app:1 -o type=docker,dest=- . | podman load` (or docker load)",
    ),
    (
        "--builder",
        "kiln builds in its own process, with no builder instance to choose: drop --builder",
    ),
    (
        "--pull",
        "kiln resolves every FROM tag at each build already (what --pull asks for): drop --pull",
    ),
    (
        "--allow",
        "kiln grants no entitlements (network.host, security.insecure): RUN steps get what a \
         default container gets",
    ),
    ("--check", "kiln lints a Dockerfile with `kiln check`"),
    (
        "--call",
        "kiln lints a Dockerfile with `kiln check`; it has no other build methods",
    ),
];

/// The explanation for the first buildx-only flag among `args` (those after `build`), if
/// one is given before a `--`.
pub fn explain(args: &[std::ffi::OsString]) -> Option<String> {
    args.iter()
        .map_while(|a| a.to_str().filter(|a| *a != "--"))
        .find_map(|arg| {
            NOT_TAKEN.iter().find_map(|(flag, why)| {
                let given = arg == *flag
                    || arg
                        .strip_prefix(flag)
                        .is_some_and(|rest| rest.starts_with('='));
                given.then(|| format!("kiln build: {flag}: {why}"))
            })
        })
}
