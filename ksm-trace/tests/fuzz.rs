//! Hostile input for everything that reads what a user hands it: the recording reader (and
//! every renderer of what it accepts) and the workload spec, duration and size parsers. Inputs
//! are random, mutations of the real fixtures, and the kept corpus (`tests/fuzz-corpus/`:
//! inputs that once broke something, replayed on every run). The property is always the same:
//! no panic, and a refusal is one line. No root needed.
use std::path::PathBuf;

use ksm_trace::{
    flame::{self, View},
    parse,
    recording::Recording,
    report::{self, Format},
    workload::WorkloadSpec,
};
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// Reads `text` as a recording and, when it is accepted, renders it every way `report` and
/// `flame` can: none of it may panic.
fn read_and_render(text: &str) {
    match Recording::from_json(text) {
        Ok(rec) => {
            for format in [Format::Text, Format::Json, Format::Csv] {
                report::render(&rec, format).expect("an accepted recording renders");
            }
            for view in [View::Stack, View::Process] {
                let _ = flame::folded(&rec, view);
            }
        }
        Err(e) => {
            let line = format!("{e:#}");
            assert!(!line.contains('\n'), "a refusal is one line: {line}");
        }
    }
}

fn parse_spec(text: &str) {
    if let Err(e) = WorkloadSpec::parse(text) {
        assert!(!format!("{e:#}").contains('\n'));
    }
}

#[test]
fn the_kept_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let mut replayed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("recording-") {
            read_and_render(&text);
        } else if name.starts_with("spec-") {
            parse_spec(text.trim_end());
        }
        replayed += 1;
    }
    assert!(replayed >= 10, "corpus of {replayed}");
}

/// A number in the fixture replaced by an extreme one.
fn extreme() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just(u64::MAX.to_string()),
        Just(i64::MIN.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("1e308".to_owned()),
        Just("null".to_owned()),
        Just("\"x\"".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_refused_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        read_and_render(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn truncated_recordings_are_refused_cleanly(at in 0usize..44_000, v in 1u32..=2) {
        let text = fixture(&format!("fixtures/recording-v{v}.json"));
        let cut = text.char_indices().map(|(i, _)| i).take_while(|&i| i <= at).last().unwrap_or(0);
        read_and_render(&text[..cut]);
    }

    #[test]
    fn recordings_with_extreme_numbers_never_panic(which in 0usize..4000, value in extreme(), v in 1u32..=2) {
        let text = fixture(&format!("fixtures/recording-v{v}.json"));
        // The which-th run of digits becomes `value`.
        let runs: Vec<(usize, usize)> = {
            let bytes = text.as_bytes();
            let mut runs = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i].is_ascii_digit() {
                    let start = i;
                    while i < bytes.len() && bytes[i].is_ascii_digit() { i += 1; }
                    runs.push((start, i));
                } else { i += 1; }
            }
            runs
        };
        let (a, b) = runs[which % runs.len()];
        read_and_render(&format!("{}{}{}", &text[..a], value, &text[b..]));
    }

    #[test]
    fn workload_specs_never_panic(
        kind in prop_oneof![Just("procs"), Just("vms"), Just("x"), Just("")],
        count in "[0-9]{0,22}|-1|NaN",
        options in proptest::collection::vec(
            ("[a-z]{0,8}", "[0-9]{0,25}(\\.[0-9]{0,5})?([eE][0-9]{1,3})?[kKmMgG]?(s|ms|m|h)?(/[0-9]{0,6}s)?|NaN|inf|-[0-9]+|on|off|same"),
            0..6,
        ),
    ) {
        let mut text = format!("{kind}:{count}");
        for (k, v) in &options {
            text.push_str(&format!(",{k}={v}"));
        }
        parse_spec(&text);
    }

    #[test]
    fn any_string_as_a_spec_duration_or_size(text in "\\PC{0,40}") {
        parse_spec(&text);
        let _ = parse::duration(&text);
        let _ = parse::size(&text);
    }
}
