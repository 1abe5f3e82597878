//! Runs one sandboxed command, for this crate's tests: `kiln-sandbox-helper '<RunSpec JSON>'`.
//! Prints the command's output and exits with its exit code; sets up rootless mode first, as
//! kiln does. `kiln-sandbox-helper --emulation-for <arch> [<qemu dir>]` prints the
//! [`kiln_sandbox::EmulationMode`] of `arch` (Debug format) or the error.

use std::path::PathBuf;

use kiln_sandbox::{RunSpec, Sandbox, enter_rootless_if_needed, helper_main_if_requested};

const EMULATION_FOR_ARG: &str = "--emulation-for";

fn main() {
    if let Err(err) = enter_rootless_if_needed() {
        eprintln!("kiln-sandbox-helper: {err}");
        std::process::exit(1);
    }
    helper_main_if_requested();

    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(EMULATION_FOR_ARG) {
        print_emulation_mode(&args[2..]);
    }
    let Some(spec_json) = args.get(1) else {
        eprintln!("usage: kiln-sandbox-helper '<RunSpec as JSON>'");
        std::process::exit(2);
    };
    let result = serde_json::from_str::<RunSpec>(spec_json)
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

fn print_emulation_mode(args: &[String]) -> ! {
    let Some(arch) = args.first() else {
        eprintln!("usage: kiln-sandbox-helper {EMULATION_FOR_ARG} <arch> [<qemu dir>]");
        std::process::exit(2);
    };
    let qemu_dir = args.get(1).map(PathBuf::from);
    let result = std::env::current_exe()
        .map_err(kiln_sandbox::SandboxError::from)
        .and_then(|exe| Sandbox::new(exe).emulation_for(arch, qemu_dir.as_deref()));
    match result {
        Ok(mode) => {
            println!("{mode:?}");
            std::process::exit(0);
        }
        Err(err) => {
            println!("{err}");
            std::process::exit(1);
        }
    }
}
