"""Generated gRPC stubs of `rewardfleet.v1` (see scripts/gen_protos.py); do not edit."""
