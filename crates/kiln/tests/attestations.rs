//! `--provenance`, `--sbom` and `--attest`: attestation manifests in BuildKit's layout, read
//! back from the registry with skopeo and curl, the SBOM checked by PyPI's SPDX validator.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kiln_testkit::debian_fixtures;

const SECRET: &str = "s3cret-value-only-the-run-step-sees-7731";

/// Pushes the Debian fixture (an index of amd64 and arm64) as `debian:latest`, digests kept.
fn push_debian(env: &Env) {
    run_tool(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--all",
                "--preserve-digests",
                "-q",
            ])
            .args(["--dest-tls-verify=false"])
            .arg(format!(
                "oci:{}:latest",
                debian_fixtures().oci_layout.display()
            ))
            .arg(format!("docker://{}", env.tag("debian:latest"))),
    );
}

/// A blob of `repo`, straight from the registry's API.
fn blob(env: &Env, repo: &str, digest: &str) -> Vec<u8> {
    let url = format!("http://{}/v2/{repo}/blobs/{digest}", env.reg());
    run_tool(Command::new("curl").args(["-sfL", &url])).stdout
}

fn raw(reference: &str) -> Value {
    serde_json::from_slice(&skopeo_raw(reference)).unwrap()
}

/// The predicate of the statement of `predicate_type` in the attestation manifest `m`,
/// checking the statement's layer and subject on the way.
fn statement(env: &Env, m: &Value, predicate_type: &str, subject: &str) -> Value {
    let layer = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["annotations"]["in-toto.io/predicate-type"] == predicate_type)
        .unwrap_or_else(|| panic!("no {predicate_type} layer in {m}"));
    assert_eq!(layer["mediaType"], "application/vnd.in-toto+json");
    let s: Value =
        serde_json::from_slice(&blob(env, "att", layer["digest"].as_str().unwrap())).unwrap();
    assert_eq!(s["_type"], "https://in-toto.io/Statement/v0.1");
    assert_eq!(s["predicateType"], predicate_type);
    assert_eq!(
        format!(
            "sha256:{}",
            s["subject"][0]["digest"]["sha256"].as_str().unwrap()
        ),
        subject
    );
    s["predicate"].clone()
}

/// PyPI's spdx-tools validator: where scripts/install-deps.sh puts it, else on PATH.
fn pyspdxtools() -> PathBuf {
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/spdx-tools/bin/pyspdxtools");
    match installed.is_file() {
        true => installed,
        false => PathBuf::from("pyspdxtools"),
    }
}

/// Runs PyPI's spdx-tools validator on `doc`; it must be installed (scripts/install-deps.sh).
fn validate_spdx(env: &Env, doc: &Value, name: &str) {
    let file = env.path(&format!("{name}.spdx.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let o = Command::new(pyspdxtools())
        .arg("-i")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "pyspdxtools (PyPI's spdx-tools) cannot run ({e}): install it with \
                 scripts/install-deps.sh"
            )
        });
    assert!(
        o.status.success(),
        "pyspdxtools rejects the SBOM {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn two_platform_build_carries_provenance_and_sbom_per_image() {
    let env = Env::new();
    push_debian(&env);
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/debian:latest\nARG GREETING\n\
             RUN --mount=type=secret,id=tok test -s /run/secrets/tok && echo \"$GREETING\" > /greeting\n",
        )],
    );
    let tag = env.tag("att:1");
    let mut command = kiln_command(
        &env.store(),
        &[
            "build",
            "--push",
            "-t",
            &tag,
            "--platform",
            "linux/amd64,linux/arm64",
            "--provenance=mode=max",
            "--sbom=true",
            "--build-arg",
            "GREETING=hello",
            // A secret's value passed as a build arg too, by mistake: redacted.
            "--build-arg",
            &format!("LEAKED={SECRET}"),
            "--secret",
            "id=tok,env=ATTEST_TOKEN",
            ctx.to_str().unwrap(),
        ],
    );
    let o = command.env("ATTEST_TOKEN", SECRET).output().unwrap();
    assert_ok(&o);

    let index = raw(&tag);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{index}");
    // The images first, then one attestation manifest for each.
    let images: Vec<(String, String)> = entries[..2]
        .iter()
        .map(|e| {
            (
                e["platform"]["architecture"].as_str().unwrap().to_string(),
                e["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(images[0].0, "amd64");
    assert_eq!(images[1].0, "arm64");
    let debian = raw(&env.tag("debian:latest"));
    for (entry, (arch, image_digest)) in entries[2..].iter().zip(&images) {
        assert_eq!(
            entry["platform"],
            json!({"architecture": "unknown", "os": "unknown"})
        );
        assert_eq!(
            entry["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        assert_eq!(
            entry["annotations"]["vnd.docker.reference.digest"],
            image_digest.as_str()
        );
        let m = raw(&format!(
            "{}/att@{}",
            env.reg(),
            entry["digest"].as_str().unwrap()
        ));
        assert_eq!(m["layers"].as_array().unwrap().len(), 2, "{m}");
        let config: Value =
            serde_json::from_slice(&blob(&env, "att", m["config"]["digest"].as_str().unwrap()))
                .unwrap();
        assert_eq!(config["os"], "unknown");
        assert_eq!(config["architecture"], "unknown");

        // Provenance: the base by digest, the invocation, and with mode=max the steps.
        let p = statement(&env, &m, "https://slsa.dev/provenance/v0.2", image_digest);
        let base_digest = debian["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["platform"]["architecture"] == arch.as_str())
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let purl = format!(
            "pkg:docker/{}/debian@latest?platform=linux%2F{arch}",
            env.reg().replace(':', "%3A")
        );
        assert_eq!(
            p["materials"],
            json!([{"uri": purl, "digest": {"sha256": &base_digest[7..]}}]),
            "{p}"
        );
        let invocation = &p["invocation"];
        assert_eq!(invocation["configSource"]["entryPoint"], "Dockerfile");
        let dockerfile = std::fs::read(ctx.join("Dockerfile")).unwrap();
        assert_eq!(
            format!(
                "sha256:{}",
                invocation["configSource"]["digest"]["sha256"]
                    .as_str()
                    .unwrap()
            ),
            sha256(&dockerfile)
        );
        assert_eq!(invocation["parameters"]["frontend"], "dockerfile.v0");
        assert_eq!(
            invocation["parameters"]["args"]["build-arg:GREETING"],
            "hello"
        );
        assert_eq!(invocation["parameters"]["args"]["build-arg:LEAKED"], "****");
        assert!(
            invocation["parameters"]["locals"][0]["digest"]["sha256"].is_string(),
            "{p}"
        );
        let steps = p["buildConfig"]["steps"].as_array().unwrap();
        assert!(
            steps.iter().any(|s| s["instruction"]
                .as_str()
                .unwrap()
                .contains("--mount=type=secret,id=tok")),
            "{p}"
        );
        assert!(p["metadata"]["buildStartedOn"].is_string(), "{p}");

        // SBOM: valid SPDX, listing the base's packages for this arch.
        let doc = statement(&env, &m, "https://spdx.dev/Document", image_digest);
        validate_spdx(&env, &doc, arch);
        let packages = doc["packages"].as_array().unwrap();
        for name in ["base-files", "libc6", "dpkg", "bash"] {
            let found = packages
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{name} not in the {arch} SBOM"));
            let purl = found["externalRefs"][0]["referenceLocator"]
                .as_str()
                .unwrap();
            assert!(
                purl.starts_with(&format!("pkg:deb/debian/{name}@")),
                "{purl}"
            );
            assert!(found["versionInfo"].as_str().is_some_and(|v| !v.is_empty()));
        }
        let libc6 = packages.iter().find(|p| p["name"] == "libc6").unwrap();
        assert!(
            libc6["externalRefs"][0]["referenceLocator"]
                .as_str()
                .unwrap()
                .ends_with(&format!("?arch={arch}")),
            "{libc6}"
        );
    }

    // The secret's value is in no blob of any manifest (layers decompressed too).
    for entry in entries {
        let m = raw(&format!(
            "{}/att@{}",
            env.reg(),
            entry["digest"].as_str().unwrap()
        ));
        let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        blobs.extend(
            m["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string()),
        );
        for digest in blobs {
            let mut bytes = blob(&env, "att", &digest);
            if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut tar)
                    .unwrap();
                bytes = tar;
            }
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "the secret is in {digest}"
            );
        }
    }

    // imagetools prints the predicates by platform, as buildx does.
    for (format, key, predicate_type) in [
        (
            "{{json .Provenance}}",
            "SLSA",
            "https://slsa.dev/provenance/v0.2",
        ),
        ("{{json .SBOM}}", "SPDX", "https://spdx.dev/Document"),
    ] {
        let o = env.kiln(&["imagetools", "inspect", &tag, "--format", format]);
        assert_ok(&o);
        let printed: Value = serde_json::from_str(&stdout(&o)).unwrap();
        let platforms: Vec<&String> = printed.as_object().unwrap().keys().collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{printed}");
        for (arch, digest) in &images {
            let m = raw(&format!(
                "{}/att@{}",
                env.reg(),
                entries
                    .iter()
                    .find(|e| e["annotations"]["vnd.docker.reference.digest"] == digest.as_str())
                    .unwrap()["digest"]
                    .as_str()
                    .unwrap()
            ));
            assert_eq!(
                printed[format!("linux/{arch}")][key],
                statement(&env, &m, predicate_type, digest)
            );
        }
    }
}

#[test]
fn attestations_are_off_by_default_and_make_an_index_of_one_image() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nCOPY Dockerfile /\n",
        )],
    );
    env.build_and_push(&ctx, "plain:1", &[]);
    let plain = raw(&env.tag("plain:1"));
    assert_eq!(
        plain["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );

    env.build_and_push(&ctx, "attested:1", &["--attest", "type=provenance"]);
    let index = raw(&env.tag("attested:1"));
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(entries[1]["platform"]["os"], "unknown");
    // mode=min: no steps.
    let m = raw(&format!(
        "{}/attested@{}",
        env.reg(),
        entries[1]["digest"].as_str().unwrap()
    ));
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    let layer = &m["layers"][0];
    let s: Value =
        serde_json::from_slice(&blob(&env, "attested", layer["digest"].as_str().unwrap())).unwrap();
    assert!(s["predicate"]["buildConfig"].is_null(), "{s}");
    assert!(s["predicate"]["materials"][0]["uri"].is_string(), "{s}");

    // One image: imagetools prints the predicate under its key, not by platform.
    let o = env.kiln(&[
        "imagetools",
        "inspect",
        &env.tag("attested:1"),
        "--format",
        "{{json .Provenance}}",
    ]);
    assert_ok(&o);
    let printed: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(printed["SLSA"], s["predicate"]);
}

#[test]
fn bad_attestation_flags_fail_before_the_build() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM $REG/busybox:latest\n")]);
    for (flags, needle) in [
        (
            &["--attest", "type=vex"][..],
            "unknown attestation type `vex`",
        ),
        (
            &["--attest", "mode=max"][..],
            "give type=provenance or type=sbom",
        ),
        (
            &["--provenance=mode=full"][..],
            "`mode=full` is not accepted",
        ),
        (
            &["--attest", "type=sbom,generator=x"][..],
            "unknown attribute `generator`",
        ),
    ] {
        let mut args = vec!["build", "-t", "x:1"];
        args.extend_from_slice(flags);
        args.push(ctx.to_str().unwrap());
        let o = env.kiln(&args);
        let err = assert_failed(&o);
        assert!(err.contains(needle), "{flags:?}: {err}");
        assert!(!err.contains("FROM"), "{flags:?} started the build: {err}");
    }
}

#[test]
fn layouts_carry_attestations_docker_archives_leave_them_out() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM $REG/busybox:latest\nCOPY Dockerfile /\n",
        )],
    );
    let layout = env.path("layout");
    let archive = env.path("image.tar");
    let o = env.kiln(&[
        "build",
        "-t",
        &env.tag("both:1"),
        "--sbom=true",
        "-o",
        &format!("type=oci,dest={},tar=false", layout.display()),
        "-o",
        &format!("type=docker,dest={}", archive.display()),
        "-o",
        "type=registry,oci-mediatypes=false",
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&o);
    // The layout's image is an index of the image and its attestation manifest.
    let blob = |digest: &str| -> Value {
        let path = layout.join("blobs/sha256").join(&digest[7..]);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let top: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let index = blob(top["manifests"][0]["digest"].as_str().unwrap());
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(
        entries[1]["annotations"]["vnd.docker.reference.digest"],
        entries[0]["digest"]
    );
    let m = blob(entries[1]["digest"].as_str().unwrap());
    assert_eq!(
        m["layers"][0]["annotations"]["in-toto.io/predicate-type"],
        "https://spdx.dev/Document"
    );
    // skopeo reads the whole layout, attestation blobs included.
    run_tool(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--all", "-q"])
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("dir:{}", env.path("copied").display())),
    );
    // The docker archive holds the image alone: its config and one layer per manifest layer.
    let listing = stdout(&run_tool(Command::new("tar").arg("-tf").arg(&archive)));
    let manifest: Value = serde_json::from_slice(
        &run_tool(
            Command::new("tar")
                .arg("-xOf")
                .arg(&archive)
                .arg("manifest.json"),
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(manifest.as_array().unwrap().len(), 1, "{manifest}");
    let files: Vec<&str> = listing
        .lines()
        .filter(|l| !l.ends_with('/') && *l != "manifest.json" && *l != "repositories")
        .collect();
    let layers = manifest[0]["Layers"].as_array().unwrap().len();
    assert_eq!(files.len(), layers + 1, "{listing}");
    // oci-mediatypes=false: the attestations keep the index OCI, and kiln says so.
    assert!(
        stderr(&o).contains("attestations need an OCI index"),
        "{}",
        stderr(&o)
    );
    let pushed = raw(&env.tag("both:1"));
    assert_eq!(
        pushed["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(pushed["manifests"].as_array().unwrap().len(), 2);
}

#[test]
fn the_sbom_lists_the_modules_of_a_go_binary_built_in_the_image() {
    let env = Env::new();
    kiln_testkit::push_go(&env.registry, "golang");
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM $REG/golang:latest\nWORKDIR /src\nCOPY main.go go.mod ./\n\
                 RUN GOPROXY=off go build -o /usr/local/bin/hello .\n",
            ),
            ("go.mod", "module example.com/hello\n\ngo 1.19\n"),
            (
                "main.go",
                "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n",
            ),
        ],
    );
    env.build_and_push(&ctx, "gosbom:1", &["--sbom=true"]);
    let index = raw(&env.tag("gosbom:1"));
    let image = index["manifests"][0]["digest"].as_str().unwrap();
    let m = raw(&format!(
        "{}/gosbom@{}",
        env.reg(),
        index["manifests"][1]["digest"].as_str().unwrap()
    ));
    let layer = &m["layers"][0];
    let s: Value =
        serde_json::from_slice(&blob(&env, "gosbom", layer["digest"].as_str().unwrap())).unwrap();
    assert_eq!(
        format!(
            "sha256:{}",
            s["subject"][0]["digest"]["sha256"].as_str().unwrap()
        ),
        image
    );
    let doc = &s["predicate"];
    validate_spdx(&env, doc, "go");
    let purls: Vec<&str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["externalRefs"][0]["referenceLocator"].as_str())
        .collect();
    assert!(
        purls.contains(&"pkg:golang/example.com/hello@%28devel%29"),
        "{purls:?}"
    );
    assert!(
        purls
            .iter()
            .any(|p| p.starts_with("pkg:golang/stdlib@1.19")),
        "{purls:?}"
    );
}

#[test]
fn an_sbom_reads_base_layers_the_build_never_needed() {
    let env = Env::new();
    // Only config changes: no step needs the base's layers, so the store never fetched them.
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM $REG/busybox:latest\nENV A=1\n")],
    );
    let metadata = env.path("metadata.json");
    env.build_and_push(
        &ctx,
        "config-only:1",
        &[
            "--sbom",
            "true",
            "--metadata-file",
            metadata.to_str().unwrap(),
        ],
    );
    let index = raw(&env.tag("config-only:1"));
    let m = raw(&format!(
        "{}/config-only@{}",
        env.reg(),
        index["manifests"][1]["digest"].as_str().unwrap()
    ));
    let s: Value = serde_json::from_slice(&blob(
        &env,
        "config-only",
        m["layers"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    validate_spdx(&env, &s["predicate"], "config-only");
    // The metadata names the index, which has no platform of its own.
    let written: Value = serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    let descriptor = &written["containerimage.descriptor"];
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert!(descriptor["platform"].is_null(), "{written}");
}
