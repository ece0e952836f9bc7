//! Builds the kernel programs (`portguard-ebpf`, nightly + bpf-linker) and leaves the object in
//! OUT_DIR, where `src/loader.rs` embeds it. `cargo xtask setup` installs what this needs.
//!
//! With `AYA_BUILD_SKIP=1` an empty object is written instead, so the userspace code can be
//! checked and unit tested on a machine without the BPF toolchain; loading it then fails with
//! a message saying so.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("portguard");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(&object, []).context("writing the empty kernel object stub")?;
        fs::write(out_dir.join("portguard-testkit"), []).context("writing the empty testkit stub")?;
        return Ok(());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../portguard-ebpf");
    let root = root.to_str().context("non-UTF-8 path to portguard-ebpf")?;
    aya_build::build_ebpf(
        [Package { name: "portguard-ebpf", root_dir: root, ..Default::default() }],
        Toolchain::Nightly,
    )
    .context(
        "building the kernel programs failed; `cargo xtask setup` installs nightly rust-src and \
         bpf-linker (LLVM 22)",
    )
}
