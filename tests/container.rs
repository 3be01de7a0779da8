//! The container image and the compose stack: the Dockerfile builds with podman (or docker) and
//! the image runs `pgsync --version`, `pgsync health` (its HEALTHCHECK, which the image keeps)
//! and PGSync's `bootstrap` entrypoint; `docker-compose.yml` passes `podman-compose config` (or
//! `docker compose config`). A test whose tool does not work here skips, saying why.
//!
//! Building the image compiles the release binary from scratch inside it: minutes on a CI
//! machine's 2 cores, so that test runs only with `PGSYNC_TEST_CONTAINER=1`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Flags this kind of sandbox needs (see ../shared/tools/container-base-images.sh): runc rather
/// than crun, host networking, rlimits it may only lower. Used when podman runs with runc here.
fn sandbox_flags(engine: &str) -> Vec<&'static str> {
    if engine == "podman" && Path::new("/usr/sbin/runc").exists() {
        vec![
            "--runtime",
            "/usr/sbin/runc",
            "--network=host",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]
    } else {
        vec![]
    }
}

/// podman or docker, whichever answers `info`; `Err` says why neither does.
fn container_engine() -> Result<&'static str, String> {
    let mut why = vec![];
    for engine in ["podman", "docker"] {
        match Command::new(engine)
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
        {
            Ok(o) if o.status.success() => return Ok(engine),
            Ok(o) => why.push(format!(
                "{engine} info failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            )),
            Err(e) => why.push(format!("{engine}: {e}")),
        }
    }
    Err(why.join("; "))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_image_builds_and_runs_version_health_and_pgsyncs_entrypoints() {
    if std::env::var_os("PGSYNC_TEST_CONTAINER").is_none() {
        eprintln!("skipped: building the image compiles the release binary (minutes); set PGSYNC_TEST_CONTAINER=1");
        return;
    }
    let engine = match container_engine() {
        Ok(e) => e,
        Err(why) => {
            eprintln!("skipped: no working container engine: {why}");
            return;
        }
    };
    let tag = "pgsync-rs-test";
    let flags = sandbox_flags(engine);
    let started = Instant::now();
    let mut build = Command::new(engine);
    build.arg("build");
    if engine == "podman" {
        // podman's default OCI format has no HEALTHCHECK: it would be dropped.
        build.args(["--format", "docker", "--pull=never"]);
    }
    build
        .args(&flags)
        .args(["-t", tag, "."])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = run(&mut build);
    assert!(
        out.status.success(),
        "{engine} build failed:\n{}",
        text(&out)
    );
    eprintln!("image built in {:?}", started.elapsed());

    let inspect = run(Command::new(engine).args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Healthcheck}} {{json .Config.Volumes}} {{.Size}}",
        tag,
    ]));
    let facts = text(&inspect);
    assert!(
        facts.contains("\"health\"") && facts.contains("/var/lib/pgsync/state"),
        "the image lacks its HEALTHCHECK or state volume: {facts}"
    );
    eprintln!("image facts: {facts}");

    let container = |args: &[&str]| {
        let mut c = Command::new(engine);
        c.args(["run", "--rm"]).args(&flags).args(args);
        run(&mut c)
    };
    let version = container(&[tag, "--version"]);
    assert!(
        version.status.success() && text(&version).contains("pgsync"),
        "pgsync --version in the image:\n{}",
        text(&version)
    );
    // No daemon runs in this container: the probe must say so and fail (exit 1).
    let health = container(&[tag, "health"]);
    assert_eq!(health.status.code(), Some(1), "{}", text(&health));
    assert!(text(&health).contains("/readyz"), "{}", text(&health));
    let boot = container(&["--entrypoint", "bootstrap", tag, "--help"]);
    assert!(
        boot.status.success() && text(&boot).contains("-c"),
        "PGSync's bootstrap entrypoint:\n{}",
        text(&boot)
    );
}

#[test]
fn the_compose_file_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let tries: [(&str, &[&str]); 2] = [
        ("podman-compose", &["-f", "docker-compose.yml", "config"]),
        ("docker", &["compose", "-f", "docker-compose.yml", "config"]),
    ];
    let mut why = vec![];
    for (tool, args) in tries {
        let out = match Command::new(tool).args(args).current_dir(root).output() {
            Ok(o) => o,
            Err(e) => {
                why.push(format!("{tool}: {e}"));
                continue;
            }
        };
        let said = text(&out);
        if !out.status.success()
            && (said.contains("not a docker command") || said.contains("unknown"))
        {
            why.push(format!(
                "{tool}: no compose: {}",
                said.lines().next().unwrap_or("")
            ));
            continue;
        }
        assert!(out.status.success(), "{tool} config:\n{said}");
        for service in [
            "postgres",
            "opensearch",
            "redis",
            "pgsync",
            "prometheus",
            "grafana",
        ] {
            assert!(
                said.contains(&format!("{service}:")),
                "no service {service}:\n{said}"
            );
        }
        return;
    }
    eprintln!(
        "skipped: neither podman-compose nor docker compose is available: {}",
        why.join("; ")
    );
}
