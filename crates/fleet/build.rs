//! Lets this crate's tests find libtorch at run time when the `torch` feature is on (see
//! rewardfleet-linktorch).

fn main() {
    rewardfleet_linktorch::link(Some("torch"));
}
