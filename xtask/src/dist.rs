//! ksm-trace installed like a system tool: one static (musl) release binary, which runs on any
//! x86-64 Linux whatever its libc, with a man page per subcommand and bash/zsh/fish completions
//! generated from the clap definitions (the `dist-assets` binary).
//!
//! - `cargo xtask dist`: a Debian package of them, built by cargo-deb from
//!   `[package.metadata.deb]` in ksm-trace/Cargo.toml, into `target/dist/`;
//! - `cargo xtask install [--uninstall]`: the same files under /usr/local, with a list of what
//!   was installed, so that installing again replaces exactly that and `--uninstall` removes it.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::setup::{self, BuildEnv, TARGET};

/// Where `install` puts things.
const PREFIX: &str = "/usr/local";
/// Under PREFIX: the list of what `install` wrote, one `file PATH` or `dir PATH` a line.
const MANIFEST: &str = "share/ksm-trace/installed-files";

/// The built binary and the generated man pages and completions.
pub struct Staged {
    binary: PathBuf,
    /// `man/*.1.gz` and `completions/{ksm-trace.bash,_ksm-trace,ksm-trace.fish}`.
    assets: PathBuf,
}

/// Builds the release binary for [`TARGET`] and generates the assets beside it, where
/// cargo-deb's `target/release/…` asset paths find them. The generator is built in the same
/// cargo run, so both link the one build of ksm-trace's library (a separate debug build of the
/// generator compiled the library again, for a different feature set than the tests').
pub fn stage(env: &BuildEnv) -> Result<Staged> {
    crate::cargo(
        env,
        &[
            "build",
            "--package",
            "ksm-trace",
            "--package",
            "xtask",
            "--bin",
            "ksm-trace",
            "--bin",
            "dist-assets",
            "--features",
            "xtask/dist-assets",
            "--target",
            TARGET,
        ],
        true,
    )?;
    let release = setup::workspace_root()?
        .join("target")
        .join(TARGET)
        .join("release");
    let assets = release.join("ksm-trace-assets");
    let status = Command::new(release.join("dist-assets"))
        .arg(&assets)
        .status()
        .context("running dist-assets")?;
    if !status.success() {
        bail!("dist-assets failed ({status})");
    }
    Ok(Staged {
        binary: release.join("ksm-trace"),
        assets,
    })
}

/// Builds the Debian package and returns its path (in `target/dist/`).
pub fn package(env: &BuildEnv) -> Result<PathBuf> {
    stage(env)?;
    let out_dir = setup::workspace_root()?.join("target/dist");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "deb",
        "--package",
        "ksm-trace",
        "--no-build",
        "--target",
        TARGET,
    ])
    .arg("--output")
    .arg(&out_dir)
    .current_dir(setup::workspace_root()?);
    env.apply(&mut cmd);
    let out = cmd.output().context("running cargo deb")?;
    if !out.status.success() {
        bail!(
            "cargo deb failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // cargo-deb prints the package's path as its last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("cargo deb named no .deb in its output:\n{stdout}"))?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// Where each asset goes: under [`PREFIX`] where man (MANDATORY_MANPATH), bash-completion
/// (XDG_DATA_DIRS, /usr/local/share when unset) and zsh (site-functions) look by default; fish's
/// completion in /etc/fish/completions, the system-wide directory fish always reads.
fn install_plan(staged: &Staged) -> Result<Vec<(PathBuf, PathBuf, u32)>> {
    let prefix = Path::new(PREFIX);
    let completions = staged.assets.join("completions");
    let mut plan = vec![
        (staged.binary.clone(), prefix.join("bin/ksm-trace"), 0o755),
        (
            completions.join("ksm-trace.bash"),
            prefix.join("share/bash-completion/completions/ksm-trace"),
            0o644,
        ),
        (
            completions.join("_ksm-trace"),
            prefix.join("share/zsh/site-functions/_ksm-trace"),
            0o644,
        ),
        (
            completions.join("ksm-trace.fish"),
            // Not PREFIX/share/fish/vendor_completions.d: fish reads that only when
            // XDG_DATA_DIRS names /usr/local/share, which a login shell on a server often lacks.
            PathBuf::from("/etc/fish/completions/ksm-trace.fish"),
            0o644,
        ),
    ];
    let man = staged.assets.join("man");
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)
        .with_context(|| format!("reading {}", man.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    pages.sort();
    for page in pages {
        let name = page.file_name().expect("read_dir yields names").to_owned();
        plan.push((page, prefix.join("share/man/man1").join(name), 0o644));
    }
    Ok(plan)
}

/// What an earlier `install` recorded: (files, directories it created).
fn read_manifest(path: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((files, dirs)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("file", p)) => files.push(PathBuf::from(p)),
            Some(("dir", p)) => dirs.push(PathBuf::from(p)),
            _ => bail!("{}: unexpected line {line:?}", path.display()),
        }
    }
    Ok((files, dirs))
}

/// Copies the staged files under /usr/local and records them.
pub fn install(env: &BuildEnv) -> Result<()> {
    let staged = stage(env)?;
    let manifest = Path::new(PREFIX).join(MANIFEST);
    let count = install_files(&install_plan(&staged)?, &manifest)?;
    eprintln!(
        "xtask: installed {count} files under {PREFIX} (listed in {}); `cargo xtask install --uninstall` removes them",
        manifest.display()
    );
    Ok(())
}

/// Removes what `install` recorded, then the directories it created if they are empty.
pub fn uninstall() -> Result<()> {
    uninstall_files(&Path::new(PREFIX).join(MANIFEST))
}

/// Copies each (source, destination, mode) of `plan` (a running binary is replaced safely:
/// written beside, then renamed) and lists them in `manifest` with the directories created
/// for them; files an earlier install listed that are no longer in `plan` are removed.
fn install_files(plan: &[(PathBuf, PathBuf, u32)], manifest: &Path) -> Result<usize> {
    let (old_files, mut dirs) = read_manifest(manifest)?;
    let mut files = Vec::new();
    for (src, dest, mode) in plan {
        create_dirs(dest.parent().expect("absolute"), &mut dirs)?;
        let tmp = dest.with_extension("xtask-new");
        fs::copy(src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        set_mode(&tmp, *mode)?;
        fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))?;
        files.push(dest.clone());
    }
    for stale in old_files.iter().filter(|f| !files.contains(f)) {
        remove_file(stale)?;
    }
    create_dirs(manifest.parent().expect("absolute"), &mut dirs)?;
    let mut text = String::new();
    for f in &files {
        text += &format!("file {}\n", f.display());
    }
    for d in &dirs {
        text += &format!("dir {}\n", d.display());
    }
    fs::write(manifest, text).with_context(|| format!("writing {}", manifest.display()))?;
    Ok(files.len())
}

/// Removes the files `manifest` lists and the manifest, then the directories it lists if they
/// are empty.
fn uninstall_files(manifest: &Path) -> Result<()> {
    let (files, mut dirs) = read_manifest(manifest)?;
    if files.is_empty() && dirs.is_empty() {
        eprintln!(
            "xtask: nothing to uninstall ({} is absent)",
            manifest.display()
        );
        return Ok(());
    }
    for f in files.iter().map(PathBuf::as_path).chain([manifest]) {
        remove_file(f)?;
    }
    // Deepest first, so that a created parent is empty once its created children are gone.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        match fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                eprintln!(
                    "xtask: kept {} (holds files install did not write)",
                    d.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", d.display())),
        }
    }
    eprintln!("xtask: removed {} installed files", files.len());
    Ok(())
}

/// Creates `dir` and its missing parents, adding each one created to `created`.
fn create_dirs(dir: &Path, created: &mut Vec<PathBuf>) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        if !created.iter().any(|c| c == d) {
            created.push(d.to_path_buf());
        }
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn install_again_replaces_and_uninstall_leaves_the_tree_as_found() {
        let tmp = std::env::temp_dir().join(format!("xtask-install-test-{}", std::process::id()));
        let (src, root) = (tmp.join("src"), tmp.join("root"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(root.join("share")).unwrap();
        for name in ["bin", "page"] {
            fs::write(src.join(name), name).unwrap();
        }
        let manifest = root.join("share/ksm-trace/installed-files");
        let plan = vec![
            (src.join("bin"), root.join("bin/ksm-trace"), 0o755),
            (
                src.join("page"),
                root.join("share/man/man1/page.1.gz"),
                0o644,
            ),
        ];

        assert_eq!(install_files(&plan, &manifest).unwrap(), 2);
        let mode = fs::metadata(root.join("bin/ksm-trace"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // Installing again without the page removes it, and leaves no temporary file.
        assert_eq!(install_files(&plan[..1], &manifest).unwrap(), 1);
        assert!(!root.join("share/man/man1/page.1.gz").exists());
        assert!(!root.join("bin/ksm-trace.xtask-new").exists());

        // A file install did not write keeps its directory; the rest goes.
        fs::write(root.join("bin/other"), "").unwrap();
        uninstall_files(&manifest).unwrap();
        assert!(!root.join("bin/ksm-trace").exists());
        assert!(root.join("bin/other").exists());
        assert!(!root.join("share/man").exists());
        assert!(!root.join("share/ksm-trace").exists());
        assert!(root.join("share").exists());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
