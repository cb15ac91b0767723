//! Lets this crate's tests, examples and benchmarks find libtorch at run time without
//! `LD_LIBRARY_PATH`: an rpath to the libtorch that torch-sys linked (`DEP_TCH_LIBTORCH_LIB`, set
//! because torch-sys is a direct dependency), and `--no-as-needed` so `libtorch_cuda.so` stays
//! linked on CUDA builds. (The `rewardfleet` binary gets the same from crates/cli/build.rs.)

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
