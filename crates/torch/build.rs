//! Lets this crate's tests, examples and benchmarks find libtorch at run time without
//! `LD_LIBRARY_PATH` (see rewardfleet-linktorch).

fn main() {
    rewardfleet_linktorch::link(None);
}
