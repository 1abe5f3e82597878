//! Builds the busybox base-image fixtures (once, cached under target/) and pushes them to a
//! registry, for the README's main-job script: `kiln-fixtures push 127.0.0.1:5000 busybox`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, addr, repo] if cmd == "push" => {
            let (oci, docker) = kiln_testkit::push_busybox_to(addr, repo);
            println!("{addr}/{repo}:latest  OCI image index       {oci}");
            println!("{addr}/{repo}:docker  Docker manifest list  {docker}");
        }
        _ => {
            eprintln!("usage: kiln-fixtures push HOST:PORT REPOSITORY");
            std::process::exit(2);
        }
    }
}
