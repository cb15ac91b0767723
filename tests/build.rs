//! Lets the end-to-end tests, which run scorers with libtorch in-process, find libtorch at run time
//! (see rewardfleet-linktorch).

fn main() {
    rewardfleet_linktorch::link(None);
}
