//! Build-script helper: lets the binaries, tests and examples of a package that links libtorch
//! find it at run time without `LD_LIBRARY_PATH`.
//!
//! torch-sys links libtorch but gives the final executable no rpath, and the linker's
//! `--as-needed` drops `libtorch_cuda.so` (CUDA would then be "unavailable" on a GPU). A package
//! with torch-sys as a direct dependency gets `DEP_TCH_LIBTORCH_LIB` in its build script; from
//! `build.rs`, [`link`] adds an rpath to that directory and links `-ltorch` with
//! `--no-as-needed`. In container images, copy `torch/lib` (and the nvidia libraries for GPU) to a
//! fixed path and set `RF_LIBTORCH_RPATH` to it at build time.

/// Emits the link arguments for every executable of the calling package (binaries, tests,
/// examples, benchmarks). Does nothing when the package's cargo feature `feature` is off (pass
/// `None` when libtorch is always linked).
pub fn link(feature: Option<&str>) {
    println!("cargo:rerun-if-env-changed=RF_LIBTORCH_RPATH");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Some(feature) = feature {
        let var = format!("CARGO_FEATURE_{}", feature.to_uppercase().replace('-', "_"));
        if std::env::var_os(var).is_none() {
            return;
        }
    }
    let lib = std::env::var("RF_LIBTORCH_RPATH").or_else(|_| std::env::var("DEP_TCH_LIBTORCH_LIB"));
    let Ok(lib) = lib else {
        println!(
            "cargo:warning=libtorch is linked but torch-sys gave no DEP_TCH_LIBTORCH_LIB (is torch-sys a direct dependency?); executables will need LD_LIBRARY_PATH"
        );
        return;
    };
    match std::env::var("CARGO_CFG_TARGET_OS")
        .unwrap_or_default()
        .as_str()
    {
        "linux" => {
            println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch");
        }
        "macos" => println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}"),
        _ => {}
    }
}
