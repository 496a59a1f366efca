//! Builds ksm-trace-ebpf for bpfel-unknown-none with aya-build (the aya-template pattern), so
//! `cargo build` of the collector always embeds programs matching its sources. xtask sets
//! KSM_TRACE_EBPF_TOOLCHAIN when the default nightly's LLVM does not match bpf-linker's.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=KSM_TRACE_EBPF_TOOLCHAIN");
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "ksm-trace-ebpf")
        .ok_or_else(|| anyhow!("ksm-trace-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .as_str()
        .to_owned();
    let toolchain_name = std::env::var("KSM_TRACE_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain_name.as_deref() {
        Some(name) if !name.is_empty() => Toolchain::Custom(name),
        _ => Toolchain::Nightly,
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: &root_dir,
            ..Default::default()
        }],
        toolchain,
    )
}
