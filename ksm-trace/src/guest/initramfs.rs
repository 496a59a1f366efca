//! The initramfs every guest boots from: a gzip-compressed newc cpio written entry by entry
//! ([`Archive`]), with device nodes and modes set in the archive itself, so building one needs
//! no root and no `cpio` tool. The lab and the `vms` workload add their own `/init` and files.
use std::{
    fs::File,
    io::{self, BufWriter, Read as _, Write},
    path::Path,
};

use anyhow::{Context as _, Result};
use cpio::{
    NewcBuilder,
    newc::{ModeFileType, trailer},
};
use flate2::{Compression, write::GzEncoder};

/// The directories every guest's root starts with.
pub const BASE_DIRS: [(&str, u32); 5] = [
    ("bin", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

type Sink = GzEncoder<BufWriter<File>>;

/// A gzip'd newc archive being written entry by entry (directories before their contents:
/// the kernel unpacks entries in order).
pub struct Archive {
    out: std::path::PathBuf,
    w: Option<Sink>,
    ino: u32,
}

impl Archive {
    pub fn create(out: &Path) -> Result<Self> {
        let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        // Fast level: repetitive payloads compress at any level, and binaries barely shrink.
        Ok(Self {
            out: out.to_owned(),
            w: Some(GzEncoder::new(
                BufWriter::with_capacity(1 << 20, file),
                Compression::fast(),
            )),
            ino: 0,
        })
    }

    fn context(&self) -> String {
        format!("writing {}", self.out.display())
    }

    fn take(&mut self) -> Result<Sink> {
        self.w
            .take()
            .ok_or_else(|| anyhow::anyhow!("{}: an earlier entry failed", self.context()))
    }

    fn put(&mut self, w: Sink) {
        self.w = Some(w);
    }

    fn entry(&mut self, name: &str, mode: u32, kind: ModeFileType) -> NewcBuilder {
        self.ino += 1;
        NewcBuilder::new(name)
            .ino(self.ino)
            .mode(mode)
            .set_mode_file_type(kind)
    }

    /// What every guest's root starts with: [`BASE_DIRS`], `dev/console` and the static busybox
    /// from `busybox` as `bin/busybox`.
    pub fn base(&mut self, busybox: &Path) -> Result<()> {
        // Directories first: the kernel unpacks entries in order.
        for (dir, mode) in BASE_DIRS {
            self.dir(dir, mode)?;
        }
        // So the kernel opens a console for /init before devtmpfs is mounted.
        self.console()?;
        self.host_file("bin/busybox", 0o755, busybox)
    }

    /// A regular file of `len` bytes that `fill` writes (exactly `len` of them).
    pub fn stream(
        &mut self,
        name: &str,
        mode: u32,
        len: u32,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        let w = self.take()?;
        let mut writer = self.entry(name, mode, ModeFileType::Regular).write(w, len);
        fill(&mut writer).with_context(|| self.context())?;
        let w = writer.finish().with_context(|| self.context())?;
        self.put(w);
        Ok(())
    }

    /// A directory (its parent must already be in the archive).
    pub fn dir(&mut self, name: &str, mode: u32) -> Result<()> {
        let w = self.take()?;
        let b = self.entry(name, mode, ModeFileType::Directory);
        let w = b.write(w, 0).finish().with_context(|| self.context())?;
        self.put(w);
        Ok(())
    }

    /// `dev/console` (5:1), so the kernel opens a console for /init before devtmpfs is mounted.
    pub fn console(&mut self) -> Result<()> {
        let w = self.take()?;
        let b = self
            .entry("dev/console", 0o600, ModeFileType::Char)
            .rdev_major(5)
            .rdev_minor(1);
        let w = b.write(w, 0).finish().with_context(|| self.context())?;
        self.put(w);
        Ok(())
    }

    /// A regular file with `data`.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        let len = u32::try_from(data.len())
            .map_err(|_| anyhow::anyhow!("{name} is too large for a newc archive"))?;
        self.stream(name, mode, len, |w| w.write_all(data))
    }

    /// A regular file copied from the host's `source` (symlinks followed).
    pub fn host_file(&mut self, name: &str, mode: u32, source: &Path) -> Result<()> {
        let mut f = File::open(source).with_context(|| format!("opening {}", source.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", source.display()))?
            .len();
        let len32 = u32::try_from(len)
            .map_err(|_| anyhow::anyhow!("{} is too large for a newc archive", source.display()))?;
        self.stream(name, mode, len32, |w| {
            let copied = io::copy(&mut (&mut f).take(len), w)?;
            if copied != len {
                return Err(io::Error::other(format!(
                    "{} changed while it was copied",
                    source.display()
                )));
            }
            Ok(())
        })
    }

    /// Writes the trailer and syncs the file.
    pub fn finish(mut self) -> Result<()> {
        let context = self.context();
        let w = self.take()?;
        let w = trailer(w).with_context(|| context.clone())?;
        w.finish()
            .and_then(|buf| buf.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .with_context(|| context)?;
        Ok(())
    }
}
