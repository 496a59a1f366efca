//! The Debian package as a user gets it: installed with dpkg, ksm-trace runs from PATH, its man
//! page and bash completion are found where man and bash-completion look, and purging it leaves
//! none of its files behind.
//!
//! `cargo xtask test` builds the package first (`cargo xtask dist`: `cargo test` cannot run
//! cargo-deb's build itself while it holds cargo's build lock) and names it in
//! KSM_TRACE_TEST_DEB; without that variable, or without root, the harness reports the test as
//! ignored, saying which.
//! It takes the test lock: dpkg's database and /usr are machine-wide.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::*;

tests! {
    package_installs_runs_from_path_and_purges_cleanly: RootAnd(package_built),
}

/// Set by `cargo xtask test` to the package it built.
const PACKAGE_ENV: &str = "KSM_TRACE_TEST_DEB";
const PACKAGE: &str = "ksm-trace";
/// The system's PATH without /usr/local, where `cargo xtask install` puts its own copy.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The need of the test besides root: the package `cargo xtask test` built.
fn package_built() -> Result<(), String> {
    harness::env_set(
        PACKAGE_ENV,
        "`cargo xtask test` builds the package and sets it",
    )
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("PATH", SYSTEM_PATH)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// `program args` succeeded; its stdout.
fn stdout_of(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert_succeeded(program, args, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
}

/// Purges the package when the test ends, whichever way it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let _ = run("dpkg", &["--purge", PACKAGE]);
        }
    }
}

/// What the installed bash completion offers for `ksm-trace PREFIX<TAB>`, loaded the way an
/// interactive bash loads it (bash-completion's on-demand loader). The function name is
/// clap_complete's: `_` + the command with `-` written `__`.
fn complete_second_word(prefix: &str) -> Vec<String> {
    let script = format!(
        "source /usr/share/bash-completion/bash_completion
         __load_completion ksm-trace || exit 1
         COMP_WORDS=(ksm-trace '{prefix}'); COMP_CWORD=1
         COMP_LINE='ksm-trace {prefix}'; COMP_POINT=${{#COMP_LINE}}
         _ksm__trace ksm-trace '{prefix}' ksm-trace
         echo \"${{COMPREPLY[@]}}\""
    );
    stdout_of("bash", &["-c", &script])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn package_installs_runs_from_path_and_purges_cleanly() {
    let deb = PathBuf::from(std::env::var_os(PACKAGE_ENV).expect(PACKAGE_ENV));
    let _lock = test_lock();
    assert!(
        !installed(),
        "{PACKAGE} is already installed with dpkg here; the test would remove it (dpkg --purge {PACKAGE} first)"
    );

    let deb = deb.to_string_lossy();
    let _purge = Purge;
    let out = run("dpkg", &["-i", &deb]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dpkg -i {deb} failed:\n{stderr}");
    assert!(!stderr.contains("warning"), "dpkg -i warned:\n{stderr}");
    let files = stdout_of("dpkg", &["-L", PACKAGE]);
    let files: Vec<(PathBuf, bool)> = files
        .lines()
        .filter(|l| l.starts_with('/') && *l != "/.")
        .map(|l| (PathBuf::from(l), Path::new(l).is_dir()))
        .collect();

    // From PATH.
    assert_eq!(
        stdout_of("sh", &["-c", "command -v ksm-trace"]).trim(),
        "/usr/bin/ksm-trace"
    );
    let version = stdout_of("ksm-trace", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("ksm-trace {}", env!("CARGO_PKG_VERSION"))
    );
    let doctor = stdout_of("ksm-trace", &["doctor"]);
    assert!(doctor.contains("tracepoints"), "{doctor}");
    let help = stdout_of("ksm-trace", &["record", "--help"]);
    assert!(
        help.contains("Examples:\n  ksm-trace record "),
        "record --help shows no examples:\n{help}"
    );
    // The packaged binary is static: it needs no library of the machine it runs on.
    let ldd = run("ldd", &["/usr/bin/ksm-trace"]);
    let ldd = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(
        ldd.contains("statically linked") || ldd.contains("not a dynamic executable"),
        "{ldd}"
    );

    // The man page of a subcommand, found by man's own search path.
    assert_eq!(
        stdout_of("man", &["-w", "ksm-trace-record"]).trim(),
        "/usr/share/man/man1/ksm-trace-record.1.gz"
    );

    // bash-completion loads the completion on demand, and it completes `ksm-trace rec<TAB>`.
    let rec = complete_second_word("rec");
    assert!(
        rec.iter().any(|w| w == "record"),
        "ksm-trace rec<TAB> gave {rec:?}"
    );
    assert!(
        rec.iter().all(|w| w.starts_with("rec")),
        "ksm-trace rec<TAB> gave {rec:?}"
    );
    // Every subcommand, but not the procs workload's hidden internal one.
    let all = complete_second_word("");
    assert!(
        all.iter().any(|w| w == "doctor") && !all.iter().any(|w| w.starts_with("__")),
        "ksm-trace <TAB> gave {all:?}"
    );

    // The exporter's unit runs what it says: its ExecStart serves /metrics.
    let unit = std::fs::read_to_string("/lib/systemd/system/ksm-trace-serve.service").unwrap();
    let exec: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart")
        .split_whitespace()
        .collect();
    assert_eq!(exec[0], "/usr/bin/ksm-trace");
    let mut serve = std::process::Command::new(exec[0])
        .args(&exec[1..])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let listen = exec
        .iter()
        .skip_while(|a| **a != "--listen")
        .nth(1)
        .unwrap();
    let scraped = common::wait_until(std::time::Duration::from_secs(20), || {
        ureq::get(format!("http://{listen}/metrics"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .is_some_and(|t| t.contains("ksm_pages_sharing"))
    });
    common::terminate(&serve);
    assert!(serve.wait().unwrap().success());
    assert!(scraped, "the unit's command serves metrics on {listen}");
    // The dashboard is JSON whose every query uses the exporter's metrics.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("/usr/share/ksm-trace/grafana-dashboard.json").unwrap(),
    )
    .unwrap();
    assert!(!dashboard["panels"].as_array().unwrap().is_empty());

    stdout_of("dpkg", &["--purge", PACKAGE]);
    assert!(!installed(), "{PACKAGE} still installed after dpkg --purge");
    for (path, was_dir) in &files {
        // Shared directories (/usr/bin, …) stay; the package's own files and directories go.
        let own = !was_dir || path.to_string_lossy().contains(PACKAGE);
        assert!(
            !(own && path.exists()),
            "{} is left after dpkg --purge {PACKAGE}",
            path.display()
        );
    }
}
