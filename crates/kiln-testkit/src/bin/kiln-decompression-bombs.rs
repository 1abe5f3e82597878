//! Writes the decompression bombs of `testdata/hostile/` into a directory:
//! `kiln-decompression-bombs testdata/hostile`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!("usage: kiln-decompression-bombs DIR");
        std::process::exit(2);
    };
    std::fs::create_dir_all(dir).unwrap();
    for path in kiln_testkit::write_decompression_bombs(std::path::Path::new(dir)) {
        let size = std::fs::metadata(&path).unwrap().len();
        println!("{}  {size} bytes", path.display());
    }
}
