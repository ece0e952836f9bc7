use which::which;

/// Rebuild the kernel object when bpf-linker changes: the linker decides the emitted BTF.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found; run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
