mod common;
use common::*;

#[test]
fn smoke() {
    let env = Env::new();
    let ctx = env.context("ctx", &[
        ("Dockerfile", "FROM $REG/busybox:latest\nRUN echo hello > /hello && rm /etc/group\nCOPY app.txt /app/\nCMD [\"cat\", \"/hello\"]\n"),
        ("app.txt", "app\n"),
    ]);
    let tag = format!("{}/demo:1", env.reg());
    let o = env.kiln(&["build", "--push", "-t", &tag, ctx.to_str().unwrap()]);
    eprintln!("{}", stderr(&o));
    assert_ok(&o);
    let root = unpack_pushed(&tag, &env.dir.path().join("unpack"));
    assert_eq!(
        std::fs::read_to_string(root.join("hello")).unwrap(),
        "hello\n"
    );
    assert!(!root.join("etc/group").exists());
}
