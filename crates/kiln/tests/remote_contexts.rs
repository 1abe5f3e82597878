//! Build contexts as `docker buildx build` takes them besides a directory: git repositories
//! (served by `git daemon` on loopback, and through `file://`), http(s) tarballs and
//! Dockerfiles (served on loopback), and `--build-context NAME=VALUE`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kiln_testkit::{FileServer, GitDaemon, GitHttpServer, free_port, git_in, write_files};

/// A kiln store and a work dir for one test.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        Work {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kiln build ARGS -o type=local,dest=<fresh dir>`; the dir, and kiln's output.
    fn build(&self, args: &[&str]) -> (PathBuf, std::process::Output) {
        let out = tempfile::tempdir_in(self.dir.path()).unwrap().keep();
        let dest = format!("type=local,dest={}", out.display());
        let mut all = vec!["build", "-o", &dest];
        all.extend_from_slice(args);
        (out, kiln_with_root(&self.path("store"), &all))
    }

    /// As [`Work::build`], failing the test unless kiln succeeds.
    fn built(&self, args: &[&str]) -> PathBuf {
        let (out, o) = self.build(args);
        assert_ok(&o);
        out
    }
}

/// A repository under `<work>/git/repo` with two branches: on `main`, a Dockerfile at the
/// top and one in `app/` (with a `.dockerignore` and a second Dockerfile); on `other`,
/// `app/which.txt` says so.
fn repository(work: &Work) -> PathBuf {
    let repo = work.path("git/repo");
    std::fs::create_dir_all(&repo).unwrap();
    git_in(&repo, &["init", "-q"]);
    write_files(
        &repo,
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /all/\n"),
            ("top.txt", "top of main\n"),
            ("app/Dockerfile", "FROM scratch\nCOPY . /app/\n"),
            (
                "app/Dockerfile.alt",
                "FROM scratch\nCOPY which.txt /alt.txt\n",
            ),
            ("app/which.txt", "app on main\n"),
            ("app/.dockerignore", "secret.txt\n"),
            ("app/secret.txt", "kept out by .dockerignore\n"),
        ],
    );
    git_in(&repo, &["add", "-A"]);
    git_in(&repo, &["commit", "-q", "-m", "main"]);
    git_in(&repo, &["checkout", "-q", "-b", "other"]);
    write_files(&repo, &[("app/which.txt", "app on other\n")]);
    git_in(&repo, &["commit", "-q", "-a", "-m", "other"]);
    git_in(&repo, &["checkout", "-q", "main"]);
    repo
}

#[test]
fn a_git_context_over_the_git_protocol_takes_its_ref_and_subdir() {
    let work = Work::new();
    let repo = repository(&work);
    let daemon = GitDaemon::start(repo.parent().unwrap());
    let url = daemon.url("repo");

    // No fragment: the remote's HEAD, the whole repository, without its .git.
    let out = work.built(&[&url]);
    assert_eq!(read(&out.join("all/top.txt")), "top of main\n");
    assert_eq!(read(&out.join("all/app/which.txt")), "app on main\n");
    assert!(!out.join("all/.git").exists(), "the context holds .git");

    // #ref:subdir: the branch's files, the subdir as the context, its .dockerignore applied.
    let out = work.built(&[&format!("{url}#other:app")]);
    assert_eq!(read(&out.join("app/which.txt")), "app on other\n");
    assert!(!out.join("app/top.txt").exists());
    assert!(
        !out.join("app/secret.txt").exists(),
        ".dockerignore ignored"
    );

    // -f names a file of the fetched context.
    let out = work.built(&["-f", "Dockerfile.alt", &format!("{url}#main:app")]);
    assert_eq!(read(&out.join("alt.txt")), "app on main\n");

    // A commit that is no branch's tip any more.
    let old = String::from_utf8(
        std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&repo)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    write_files(&repo, &[("app/which.txt", "app on main, later\n")]);
    git_in(&repo, &["commit", "-q", "-a", "-m", "later"]);
    let out = work.built(&[&format!("{url}#{}:app", old.trim())]);
    assert_eq!(read(&out.join("app/which.txt")), "app on main\n");
    // Over git's protocol v0 (the user's config, which kiln keeps), the server hands out no
    // commit that is not a tip: the whole history is fetched instead.
    let config = write_files(
        &work.path("gitconfig"),
        &[("v0", "[protocol]\nversion = 0\n")],
    );
    let out = work.path("v0-out");
    let dest = format!("type=local,dest={}", out.display());
    let o = kiln_command(
        &work.path("store"),
        &["build", "-o", &dest, &format!("{url}#{}:app", old.trim())],
    )
    .env("GIT_CONFIG_GLOBAL", config.join("v0"))
    .output()
    .unwrap();
    assert_ok(&o);
    assert_eq!(read(&out.join("app/which.txt")), "app on main\n");
}

#[test]
fn a_git_context_brings_its_submodules_but_not_the_host_repositories() {
    let work = Work::new();
    let base = work.path("git");
    let lib = base.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    git_in(&lib, &["init", "-q"]);
    write_files(&lib, &[("lib.txt", "from the submodule\n")]);
    git_in(&lib, &["add", "-A"]);
    git_in(&lib, &["commit", "-q", "-m", "lib"]);
    let top = write_files(
        &base.join("top"),
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY vendor/lib/lib.txt /lib.txt\n",
        )],
    );
    git_in(&top, &["init", "-q"]);
    // Relative: resolved against where the context is fetched from.
    git_in(&top, &["submodule", "add", "-q", "../lib", "vendor/lib"]);
    git_in(&top, &["add", "-A"]);
    git_in(&top, &["commit", "-q", "-m", "top"]);
    let daemon = GitDaemon::start(&base);
    let out = work.built(&[&daemon.url("top")]);
    assert_eq!(read(&out.join("lib.txt")), "from the submodule\n");

    // A served repository whose submodule is a path of this machine does not get it.
    let sneaky = write_files(
        &base.join("sneaky"),
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY vendor/lib/lib.txt /lib.txt\n",
        )],
    );
    git_in(&sneaky, &["init", "-q"]);
    let absolute = lib.display().to_string();
    git_in(
        &sneaky,
        &["submodule", "add", "-q", &absolute, "vendor/lib"],
    );
    git_in(&sneaky, &["add", "-A"]);
    git_in(&sneaky, &["commit", "-q", "-m", "sneaky"]);
    let url = daemon.url("sneaky");
    let err = assert_failed(&work.build(&[&url]).1);
    assert_contains_all(
        &err,
        &[
            &format!("cannot fetch the git context {url}: git submodule exited"),
            "transport 'file' not allowed",
        ],
    );
}

#[test]
fn a_file_url_is_a_git_context() {
    let work = Work::new();
    let repo = repository(&work);
    let url = format!("file://{}", repo.display());
    let out = work.built(&[&format!("{url}#other:app")]);
    assert_eq!(read(&out.join("app/which.txt")), "app on other\n");
    // The checkout is gone from the store once the build is over.
    let scratch = work.path("store/scratch");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the store's scratch: {left:?}");
}

#[test]
fn a_git_context_that_cannot_be_fetched_says_which_and_why() {
    let work = Work::new();
    let repo = repository(&work);
    let daemon = GitDaemon::start(repo.parent().unwrap());

    let nobody = format!("git://127.0.0.1:{}/repo", free_port());
    let (_, o) = work.build(&[&nobody]);
    let err = assert_failed(&o);
    assert_contains_all(
        &err,
        &[
            &format!("cannot fetch the git context {nobody}: git fetch exited 128: fatal:"),
            "unable to connect",
            "Connection refused",
        ],
    );
    assert!(!err.contains("/Dockerfile"), "{err}");

    let bad_ref = format!("{}#no-such-branch", daemon.url("repo"));
    let err = assert_failed(&work.build(&[&bad_ref]).1);
    assert_contains_all(
        &err,
        &[
            &format!("cannot fetch the git context {bad_ref}: git fetch exited 128:"),
            "couldn't find remote ref no-such-branch",
        ],
    );

    // The Dockerfile is named as a file of the context, not of kiln's scratch space.
    let no_dockerfile = format!("{}#main:app", daemon.url("repo"));
    let err = assert_failed(&work.build(&["-f", "ci/Dockerfile", &no_dockerfile]).1);
    assert_contains_all(
        &err,
        &[&format!(
            "the git context {no_dockerfile} has no ci/Dockerfile"
        )],
    );

    let bad_dir = format!("{}#main:no/such/dir", daemon.url("repo"));
    let err = assert_failed(&work.build(&[&bad_dir]).1);
    assert_contains_all(
        &err,
        &[&format!(
            "cannot fetch the git context {bad_dir}: the repository has no directory \
             no/such/dir at main"
        )],
    );
}

/// `kiln build -o type=local,dest=<fresh dir> CONTEXT` with git's user config read from
/// `home` only (`HOME`, no system config); the dir, and kiln's output, which must come
/// within a minute (a git waiting on a prompt would never end).
fn build_as_user(work: &Work, home: &Path, context: &str) -> (PathBuf, std::process::Output) {
    let out = tempfile::tempdir_in(work.dir.path()).unwrap().keep();
    let dest = format!("type=local,dest={}", out.display());
    let mut command = kiln_command(&work.path("store"), &["build", "-o", &dest, context]);
    command
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("GIT_CONFIG_GLOBAL")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(command.output().unwrap()));
    let output = receiver
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("kiln still runs after a minute (git waiting on a prompt?)");
    (out, output)
}

#[test]
fn a_git_context_over_http_takes_the_users_git_credentials_and_never_shows_them() {
    const PASSWORD: &str = "s3cret-of-kiln";
    let work = Work::new();
    let repo = repository(&work);
    git_in(
        repo.parent().unwrap(),
        &["clone", "-q", "--bare", "repo", "repo.git"],
    );
    let server = GitHttpServer::start(repo.parent().unwrap(), "user", PASSWORD);
    let url = server.url("repo.git");
    let origin = url.trim_end_matches("/repo.git");
    let shown = |o: &std::process::Output| format!("{}{}", stdout(o), stderr(o));

    // git's own credential store, as `git clone` would use it.
    let home = write_files(
        &work.path("home"),
        &[
            (".gitconfig", "[credential]\n\thelper = store\n"),
            (
                ".git-credentials",
                &origin.replace("http://", &format!("http://user:{PASSWORD}@")),
            ),
        ],
    );
    let (out, o) = build_as_user(&work, &home, &format!("{url}#main:app"));
    assert_ok(&o);
    assert_eq!(read(&out.join("app/which.txt")), "app on main\n");
    assert!(!shown(&o).contains(PASSWORD), "{}", shown(&o));

    // No credentials: an error at once, naming the context and git's reason.
    let nobody = write_files(&work.path("nobody"), &[]);
    let (_, o) = build_as_user(&work, &nobody, &format!("{url}#main"));
    let err = assert_failed(&o);
    assert_contains_all(
        &err,
        &[
            &format!("cannot fetch the git context {url}#main: git fetch exited 128: fatal:"),
            &format!("could not read Username for '{origin}': terminal prompts disabled"),
        ],
    );

    // The password in the URL: it works, and is shown as xxxxx, in a failure as well.
    let in_url = url.replace("http://", &format!("http://user:{PASSWORD}@"));
    let (out, o) = build_as_user(&work, &nobody, &format!("{in_url}#other:app"));
    assert_ok(&o);
    assert_eq!(read(&out.join("app/which.txt")), "app on other\n");
    assert!(!shown(&o).contains(PASSWORD), "{}", shown(&o));
    let (_, o) = build_as_user(&work, &nobody, &format!("{in_url}#no-such-branch"));
    let err = assert_failed(&o);
    let redacted = url.replace("http://", "http://user:xxxxx@");
    assert_contains_all(
        &err,
        &[&format!(
            "cannot fetch the git context {redacted}#no-such-branch: git fetch exited 128"
        )],
    );
    assert!(!shown(&o).contains(PASSWORD), "{}", shown(&o));

    // A wrong password: git's "Authentication failed", the password not shown.
    let wrong = url.replace("http://", "http://user:not-the-password@");
    let (_, o) = build_as_user(&work, &nobody, &format!("{wrong}#main"));
    let err = assert_failed(&o);
    assert_contains_all(&err, &["Authentication failed"]);
    assert!(!shown(&o).contains("not-the-password"), "{}", shown(&o));
}

/// `tar -cz` of `dir` into `archive`.
fn tar_gz(dir: &Path, archive: &Path) {
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn an_http_context_is_a_tarball_or_a_dockerfile() {
    let work = Work::new();
    let ctx = write_files(
        &work.path("ctx"),
        &[
            ("Dockerfile", "FROM scratch\nCOPY a.txt /a.txt\n"),
            ("ci/Dockerfile.ci", "FROM scratch\nCOPY a.txt /ci.txt\n"),
            ("a.txt", "from the tarball\n"),
        ],
    );
    let served = write_files(
        &work.path("served"),
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY <<EOF /hello.txt\nfrom a remote Dockerfile\nEOF\n",
        )],
    );
    tar_gz(&ctx, &served.join("ctx.tar.gz"));
    let server = FileServer::start(&served);

    let out = work.built(&[&server.url("ctx.tar.gz")]);
    assert_eq!(read(&out.join("a.txt")), "from the tarball\n");

    let out = work.built(&["-f", "ci/Dockerfile.ci", &server.url("ctx.tar.gz")]);
    assert_eq!(read(&out.join("ci.txt")), "from the tarball\n");

    // Not an archive: the Dockerfile itself, with an empty context.
    let out = work.built(&[&server.url("Dockerfile")]);
    assert_eq!(read(&out.join("hello.txt")), "from a remote Dockerfile\n");

    let err = assert_failed(
        &work
            .build(&["-f", "nope/Dockerfile", &server.url("ctx.tar.gz")])
            .1,
    );
    assert_contains_all(
        &err,
        &[&format!(
            "the context {} has no nope/Dockerfile",
            server.url("ctx.tar.gz")
        )],
    );

    let missing = server.url("missing.tar.gz");
    let err = assert_failed(&work.build(&[&missing]).1);
    assert_contains_all(
        &err,
        &[&format!(
            "cannot fetch the context {missing}: the server answered 404 Not Found"
        )],
    );
    assert!(!err.contains("/Dockerfile"), "{err}");
}

/// `kiln build -o type=local,dest=<dir> ARGS` in `env`'s store; the dir.
fn build_files(env: &Env, name: &str, args: &[&str]) -> PathBuf {
    let out = env.path(name);
    let dest = format!("type=local,dest={}", out.display());
    let mut all = vec!["build", "-o", &dest];
    all.extend_from_slice(args);
    assert_ok(&env.kiln(&all));
    out
}

#[test]
fn a_named_directory_context_serves_copy_from_and_mounts_and_replaces_a_stage() {
    let env = Env::new();
    let named = env.context(
        "named",
        &[
            ("data.txt", "from the named context\n"),
            (".dockerignore", "secret.txt\n"),
            ("secret.txt", "kept out by its .dockerignore\n"),
        ],
    );
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch AS src\n\
             COPY <<EOF /data.txt\nfrom the stage\nEOF\n\
             FROM $REG/busybox\n\
             COPY --from=src /data.txt /copied.txt\n\
             COPY --from=src . /all/\n\
             RUN --mount=from=src,target=/src cat /src/data.txt > /mounted.txt\n",
        )],
    );
    let given = format!("src={}", named.display());
    let out = build_files(
        &env,
        "out",
        &["--build-context", &given, ctx.to_str().unwrap()],
    );
    assert_eq!(read(&out.join("copied.txt")), "from the named context\n");
    assert_eq!(read(&out.join("mounted.txt")), "from the named context\n");
    assert!(
        !out.join("all/secret.txt").exists(),
        ".dockerignore ignored"
    );

    // A change to the named context's files is seen (not a stale cache hit).
    std::fs::write(named.join("data.txt"), "changed\n").unwrap();
    let out = build_files(
        &env,
        "out2",
        &["--build-context", &given, ctx.to_str().unwrap()],
    );
    assert_eq!(read(&out.join("copied.txt")), "changed\n");
    assert_eq!(read(&out.join("mounted.txt")), "changed\n");

    // Without it, the stage is what COPY --from reads.
    let out = build_files(&env, "out3", &[ctx.to_str().unwrap()]);
    assert_eq!(read(&out.join("copied.txt")), "from the stage\n");
}

#[test]
fn a_named_image_context_replaces_what_from_names() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM no-such-base\nRUN echo ran > /ran.txt\n\
             FROM scratch\nCOPY --from=tools /bin/busybox /busybox\n\
             COPY --from=0 /ran.txt /\n",
        )],
    );
    let layout = env.path("layout");
    skopeo_to_oci(&env.tag("busybox:latest"), &layout, "v1", Some(host_arch()));
    let image = format!("no-such-base=docker-image://{}", env.tag("busybox:latest"));
    let tools = format!("tools=oci-layout://{}:v1", layout.display());
    let out = build_files(
        &env,
        "out",
        &[
            "--build-context",
            &image,
            "--build-context",
            &tools,
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(read(&out.join("ran.txt")), "ran\n");
    assert!(out.join("busybox").is_file());
}

#[test]
fn named_contexts_may_be_git_repositories_or_tarballs() {
    let env = Env::new();
    let work = Work::new();
    let repo = repository(&work);
    let served = work.path("served");
    let tarred = write_files(&work.path("tarred"), &[("t.txt", "from the tarball\n")]);
    std::fs::create_dir_all(&served).unwrap();
    tar_gz(&tarred, &served.join("t.tar.gz"));
    let server = FileServer::start(&served);
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=app which.txt /which.txt\n\
             COPY --from=tarball t.txt /t.txt\n",
        )],
    );
    let app = format!("app=file://{}#other:app", repo.display());
    let tarball = format!("tarball={}", server.url("t.tar.gz"));
    let out = build_files(
        &env,
        "out",
        &[
            "--build-context",
            &app,
            "--build-context",
            &tarball,
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(read(&out.join("which.txt")), "app on other\n");
    assert_eq!(read(&out.join("t.txt")), "from the tarball\n");

    let missing = env.path("no-such-dir");
    let given = format!("app={}", missing.display());
    let err =
        assert_failed(&env.kiln(&["build", "--build-context", &given, ctx.to_str().unwrap()]));
    assert_contains_all(
        &err,
        &[&format!(
            "cannot fetch --build-context {given}: {}",
            missing.display()
        )],
    );
}

#[test]
fn a_named_contexts_dockerignore_may_not_lead_out_of_it() {
    let env = Env::new();
    let work = Work::new();
    // A host file whose first line is no pattern: reading it as a .dockerignore would show
    // it in the error.
    let secret = write_files(&work.path("host"), &[("secret.txt", "token-s3cr3t]\n")]);
    let tarred = write_files(&work.path("tarred"), &[("t.txt", "from the tarball\n")]);
    std::os::unix::fs::symlink(secret.join("secret.txt"), tarred.join(".dockerignore")).unwrap();
    let served = work.path("served");
    std::fs::create_dir_all(&served).unwrap();
    tar_gz(&tarred, &served.join("t.tar.gz"));
    let server = FileServer::start(&served);
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=tarball t.txt /t.txt\n",
        )],
    );
    let tarball = format!("tarball={}", server.url("t.tar.gz"));
    let err =
        assert_failed(&env.kiln(&["build", "--build-context", &tarball, ctx.to_str().unwrap()]));
    assert_contains_all(
        &err,
        &["reading the build context tarball: its .dockerignore leads out of it"],
    );
    assert!(!err.contains("s3cr3t"), "{err}");
}
