//! A run's private scratch directory, `/tmp/ksm-trace-<what>-<pid>` (guest consoles, QMP
//! sockets, initramfs, the lab's recording): made fresh with mode 0700, never through a link
//! someone else left at that name in the world-writable /tmp, and removed with everything in it
//! when dropped, on every exit path that unwinds.
use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

const PARENT: &str = "/tmp";

#[derive(Debug)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// `/tmp/ksm-trace-<what>-<pid>`, created empty. Something already at that name (left by an
    /// earlier process that had this pid) is removed first; a symlink is removed itself, never
    /// followed.
    pub fn create(what: &str) -> Result<Self> {
        Self::create_in(Path::new(PARENT), what)
    }

    fn create_in(parent: &Path, what: &str) -> Result<Self> {
        let path = parent.join(format!("ksm-trace-{what}-{}", std::process::id()));
        // Written down before it exists: a SIGKILL from here on leaves it to `recover`.
        crate::run::recovery::dir_created(&path);
        let mkdir = || fs::DirBuilder::new().mode(0o700).create(&path);
        match mkdir() {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                remove_leftover(&path)?;
                // mkdir(2) never follows a link: if another one appeared meanwhile, this fails.
                mkdir().with_context(|| format!("creating {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        let dir = Self(path);
        // What was made must be ours and private (mkdir applies the umask, never more bits).
        let meta = fs::symlink_metadata(&dir.0)
            .with_context(|| format!("checking {}", dir.0.display()))?;
        if !meta.is_dir()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.permissions().mode() & 0o077 != 0
        {
            bail!(
                "{} is not a private directory of this user after creating it",
                dir.0.display()
            );
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// Removes what is at `path` without following it: a directory with its contents (std's
/// `remove_dir_all` does not follow symlinks inside), anything else (a symlink) itself.
fn remove_leftover(path: &Path) -> Result<()> {
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("checking {}", path.display()))?;
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing the stale {}", path.display()))
        }
        _ => Ok(()),
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                log::warn!("removing {}: {e}", self.0.display())
            }
            _ => crate::run::recovery::dir_removed(&self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ksm-trace-rundir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn is_private_fresh_and_removed_on_drop() {
        let parent = scratch("fresh");
        let stale = parent.join(format!("ksm-trace-t-{}", std::process::id()));
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("old"), "x").unwrap();
        let dir = RunDir::create_in(&parent, "t").unwrap();
        assert_eq!(dir.path(), stale);
        assert!(!dir.join("old").exists(), "created fresh");
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        fs::write(dir.join("file"), "y").unwrap();
        drop(dir);
        assert!(!stale.exists());
        fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn never_follows_a_symlink_left_at_its_name() {
        let parent = scratch("link");
        let target = parent.join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("precious"), "keep").unwrap();
        let link = parent.join(format!("ksm-trace-t-{}", std::process::id()));
        symlink(&target, &link).unwrap();
        let dir = RunDir::create_in(&parent, "t").unwrap();
        assert!(!fs::symlink_metadata(dir.path()).unwrap().is_symlink());
        drop(dir);
        assert_eq!(fs::read_to_string(target.join("precious")).unwrap(), "keep");
        fs::remove_dir_all(&parent).unwrap();
    }
}
