//! Lets the `rewardfleet` binary (and this package's tests and examples) find libtorch at run time
//! without `LD_LIBRARY_PATH` (see rewardfleet-linktorch). With the `torch` feature off
//! (judge-only workers) this does nothing.

fn main() {
    rewardfleet_linktorch::link(Some("torch"));
}
