//! Runs one sandboxed command, for this crate's tests: `kiln-sandbox-helper '<RunSpec JSON>'`.
//! Prints the command's output and exits with its exit code; sets up rootless mode first, as
//! kiln does.

use kiln_sandbox::{RunSpec, Sandbox, enter_rootless_if_needed, helper_main_if_requested};

fn main() {
    if let Err(err) = enter_rootless_if_needed() {
        eprintln!("kiln-sandbox-helper: {err}");
        std::process::exit(1);
    }
    helper_main_if_requested();

    let Some(spec_json) = std::env::args().nth(1) else {
        eprintln!("usage: kiln-sandbox-helper '<RunSpec as JSON>'");
        std::process::exit(2);
    };
    let result = serde_json::from_str::<RunSpec>(&spec_json)
        .map_err(|err| err.to_string())
        .and_then(|spec| {
            let exe = std::env::current_exe().map_err(|err| err.to_string())?;
            Sandbox::new(exe)
                .run(&spec, &mut |line| println!("{line}"))
                .map_err(|err| err.to_string())
        });
    match result {
        Ok(output) => std::process::exit(match output.status {
            kiln_sandbox::ExitStatus::Code(code) => code,
            kiln_sandbox::ExitStatus::Signal(signal) => 128 + signal,
        }),
        Err(err) => {
            eprintln!("kiln-sandbox-helper: {err}");
            std::process::exit(1);
        }
    }
}
