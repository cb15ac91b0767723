//! The wire contract: `rewardfleet.v1` messages and the `RewardService` client and server.
#![allow(missing_docs, clippy::all)]

/// `rewardfleet.v1`: the trainer API and the gateway–worker messages.
pub mod v1 {
    tonic::include_proto!("rewardfleet.v1");
}

/// The encoded `FileDescriptorSet` of every proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("rewardfleet_descriptor");
