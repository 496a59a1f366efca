//! The harness of the test files with root tests (`harness = false` in Cargo.toml, built on
//! libtest-mimic): each file lists its tests once, with what each needs, in
//! `tests! { name: Needs, ... }`. A test whose need is unmet here is reported as ignored, with
//! why (`test name ... ignored (needs root)`), never as passed; every other test runs as under
//! libtest, a panic failing it. The usual arguments work (`--list`, filters, `--exact`,
//! `--skip`, `--test-threads`; `--nocapture` is accepted, and output is never captured).

use std::process::ExitCode;

use libtest_mimic::{Arguments, Completion, Trial};

/// What a test needs of the machine.
#[derive(Clone, Copy)]
pub enum Needs {
    /// Nothing: it runs anywhere.
    Nothing,
    /// Root: it drives the one global ksmd or loads eBPF programs.
    Root,
    /// Root, and what the check looks for, which returns why not when it is missing.
    RootAnd(fn() -> Result<(), String>),
}

impl Needs {
    /// Why the test cannot run here (every unmet need), or None when it can.
    pub fn unmet(self) -> Option<String> {
        let root = || (!nix::unistd::geteuid().is_root()).then(|| "needs root".to_owned());
        let why: Vec<String> = match self {
            Needs::Nothing => Vec::new(),
            Needs::Root => root().into_iter().collect(),
            Needs::RootAnd(check) => root().into_iter().chain(check().err()).collect(),
        };
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// One test of a file: its name as listed and filtered, its need, and its body.
pub struct Test {
    pub name: &'static str,
    pub needs: Needs,
    pub body: fn(),
}

/// Runs the file's tests with the command line's arguments.
pub fn run(tests: Vec<Test>) -> ExitCode {
    let args = Arguments::from_args();
    let trials = tests
        .into_iter()
        .map(|test| {
            Trial::ignorable_test(test.name, move || {
                if let Some(why) = test.needs.unmet() {
                    return Ok(Completion::ignored_with(why));
                }
                (test.body)();
                Ok(Completion::Completed)
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// For a check of [`Needs::RootAnd`]: the environment variable `name` is set; else why not,
/// with `hint` saying who sets it.
pub fn env_set(name: &str, hint: &str) -> Result<(), String> {
    match std::env::var_os(name) {
        Some(_) => Ok(()),
        None => Err(format!("needs {name}: {hint}")),
    }
}

/// The file's `main`: `tests! { test_fn: Root, other_fn: RootAnd(check), ... }`, the needs
/// written as [`Needs`]' variants.
macro_rules! tests {
    ($($test:ident: $needs:expr),* $(,)?) => {
        fn main() -> std::process::ExitCode {
            #[allow(unused_imports)]
            use $crate::common::harness::Needs::*;
            $crate::common::harness::run(vec![$(
                $crate::common::harness::Test {
                    name: stringify!($test),
                    needs: $needs,
                    body: $test,
                },
            )*])
        }
    };
}
pub(crate) use tests;
