//! Any bytes as an uncompressed layer tar: extraction succeeds or returns an error of bounded
//! length, never panics, and changes nothing outside its destination: beside it, an
//! `outside` dir stays empty with its old mtime, and nothing else appears.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("dest");
    let outside = work.path().join("outside");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&outside).unwrap();
    let then = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    let times = fs::FileTimes::new().set_modified(then).set_accessed(then);
    fs::File::open(&outside).unwrap().set_times(times).unwrap();
    let before = fs::metadata(&outside).unwrap();

    if let Err(err) = kiln_snapshot::extract_layer(data, &dest) {
        let message = err.to_string();
        assert!(message.len() < 2048, "an error of {} bytes", message.len());
    }

    assert_eq!(names(work.path()), ["dest", "outside"]);
    assert_eq!(names(&outside), Vec::<String>::new());
    let after = fs::metadata(&outside).unwrap();
    assert_eq!(
        (
            after.mtime(),
            after.ctime(),
            after.ctime_nsec(),
            after.mode()
        ),
        (
            before.mtime(),
            before.ctime(),
            before.ctime_nsec(),
            before.mode()
        )
    );
});
