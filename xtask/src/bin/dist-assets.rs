//! `dist-assets OUT_DIR`: ksm-trace's man pages (one per subcommand: `ksm-trace-record.1.gz`, …,
//! gzipped as Debian policy asks: cargo-deb compresses only the assets it did not see built)
//! and its bash, zsh and fish completions, generated from its own clap definitions
//! (`ksm_trace::cli::Cli`), for `cargo xtask dist` and `cargo xtask install`.
//!
//! Each subcommand's `--help` ends with examples (`after_help`); here they become the man
//! page's EXAMPLES section, and each must parse as a ksm-trace command line, so the examples
//! stay real as the options change. A visible subcommand without examples is refused.
//!
//! A binary of its own behind xtask's `dist-assets` feature: it links ksm-trace's library, whose
//! build script needs the eBPF toolchain, and plain `cargo xtask` must build before
//! `cargo xtask setup` has installed that.
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::{CommandFactory as _, Parser as _};
use clap_complete::Shell;
use clap_mangen::Man;
use ksm_trace::cli::Cli;
use roff::{Roff, bold, roman};

const BIN: &str = "ksm-trace";
/// The first line of every `after_help`; the examples follow, one per line:
/// `  ksm-trace ARGS   # what it does`.
const EXAMPLES_HEADING: &str = "Examples:";

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: dist-assets OUT_DIR")?,
    );
    // Start empty, so that a removed subcommand leaves no stale page behind.
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let man_dir = out.join("man");
    let completion_dir = out.join("completions");
    for dir in [&man_dir, &completion_dir] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    // Every page's footer names the program and version, not only the top page's.
    let source = format!("{BIN} {}", cmd.get_version().unwrap_or_default());
    let pages = man_pages(&cmd, &man_dir, &source)?;

    for (shell, file) in [
        (Shell::Bash, "ksm-trace.bash"),
        (Shell::Zsh, "_ksm-trace"),
        (Shell::Fish, "ksm-trace.fish"),
    ] {
        let path = completion_dir.join(file);
        let mut f =
            fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_complete::generate(shell, &mut without_hidden_subcommands(), BIN, &mut f);
        f.flush()?;
    }
    eprintln!(
        "dist-assets: {pages} man pages and 3 completion scripts in {}",
        out.display()
    );
    Ok(())
}

/// ksm-trace's command line without its hidden subcommands (the procs workload's internal
/// worker), which clap_complete would otherwise offer at `ksm-trace <TAB>`.
fn without_hidden_subcommands() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new(BIN)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        .subcommand_required(true);
    if full.get_version().is_some() {
        // Only that -V/--version exists matters here: completion scripts never print it.
        cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    }
    cmd
}

/// Writes the page of `cmd` and of each visible subcommand below it; returns how many.
fn man_pages(cmd: &clap::Command, dir: &Path, source: &str) -> Result<usize> {
    let mut count = 0;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        count += man_pages(sub, dir, source)?;
    }
    let examples = examples(cmd)?;
    let man = Man::new(cmd.clone()).source(source);
    let path = dir.join(format!("{}.gz", man.get_filename()));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut page)?;
    }
    let mut roff = Roff::new();
    roff.control("SH", ["EXAMPLES"]);
    for (command, what) in &examples {
        roff.control("TP", []);
        roff.text([bold(command.as_str())]);
        roff.text([roman(what.as_str())]);
    }
    page.extend_from_slice(roff.to_roff().as_bytes());
    if cmd.get_version().is_some() {
        man.render_version_section(&mut page)?;
    }
    // No file name and mtime 0 in the gzip header: the same sources give the same bytes.
    let mut gz = flate2::GzBuilder::new().write(
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        flate2::Compression::best(),
    );
    gz.write_all(&page)?;
    gz.finish()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(count + 1)
}

/// The examples of `cmd`'s `after_help` as (command line, what it does), each checked to parse.
fn examples(cmd: &clap::Command) -> Result<Vec<(String, String)>> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name());
    let Some(text) = cmd.get_after_help() else {
        bail!("`{name} --help` has no examples: add `#[command(after_help = ...)]` in cli.rs");
    };
    let text = text.to_string();
    let mut lines = text.lines();
    if lines.next() != Some(EXAMPLES_HEADING) {
        bail!("`{name} --help`: after_help must start with {EXAMPLES_HEADING:?}");
    }
    // `  COMMAND   # WHAT`, or COMMAND alone with `      # WHAT` on the next line when long.
    let mut examples: Vec<(String, String)> = Vec::new();
    for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
        match (line.strip_prefix('#'), examples.last_mut()) {
            (Some(what), Some((_, last))) if last.is_empty() => *last = what.trim().to_owned(),
            (Some(_), _) => bail!("`{name} --help`: comment without its example: {line}"),
            (None, _) => {
                let (command, what) = line.split_once(" # ").unwrap_or((line, ""));
                examples.push((command.trim().to_owned(), what.trim().to_owned()));
            }
        }
    }
    if examples.is_empty() {
        bail!("`{name} --help` lists no examples under {EXAMPLES_HEADING:?}");
    }
    for (command, _) in &examples {
        let words: Vec<&str> = command.split_whitespace().collect();
        if words.first() != Some(&BIN) {
            bail!("example of `{name}` does not start with {BIN}: {command}");
        }
        if let Err(e) = Cli::try_parse_from(&words) {
            bail!("example of `{name}` does not parse: {command}\n{e}");
        }
    }
    Ok(examples)
}
