//! Lets the `rewardfleet` binary find libtorch at run time without `LD_LIBRARY_PATH`.
//!
//! torch-sys links libtorch but gives the final binary no rpath, and the linker's `--as-needed`
//! drops `libtorch_cuda.so` (CUDA would then be "unavailable" on a GPU). With the `torch` feature
//! on, torch-sys is a direct dependency of this crate, so Cargo hands us `DEP_TCH_LIBTORCH_LIB`: we
//! add an rpath to it and link `-ltorch` with `--no-as-needed`. In container images, copy
//! `torch/lib` (and the nvidia libraries for GPU) to a fixed path and set `RF_LIBTORCH_RPATH` to it
//! at build time. With the feature off (judge-only workers) this does nothing.

fn main() {
    println!("cargo:rerun-if-env-changed=RF_LIBTORCH_RPATH");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let lib = std::env::var("RF_LIBTORCH_RPATH").or_else(|_| std::env::var("DEP_TCH_LIBTORCH_LIB"));
    let Ok(lib) = lib else {
        println!(
            "cargo:warning=feature `torch` is on but torch-sys gave no DEP_TCH_LIBTORCH_LIB; the binary will need LD_LIBRARY_PATH"
        );
        return;
    };
    match target_os.as_str() {
        "linux" => {
            println!("cargo:rustc-link-arg-bins=-Wl,-rpath={lib}");
            println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg-bins=-ltorch");
        }
        "macos" => println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}"),
        _ => {}
    }
}
