//! gRPC calls with payloads as raw bytes, to send what a well-behaved client never would.

use futures::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// Bytes in, bytes out.
#[derive(Default)]
pub struct Raw;
pub struct RawEncoder;
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn grpc(
    channel: &tonic::transport::Channel,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    grpc
}

/// A unary call of `path` with `message` as it is; the error status.
pub async fn unary_error(
    channel: &tonic::transport::Channel,
    path: &'static str,
    message: Vec<u8>,
) -> tonic::Status {
    grpc(channel)
        .await
        .unary(
            tonic::Request::new(message),
            PathAndQuery::from_static(path),
            Raw,
        )
        .await
        .unwrap_err()
}

/// A `Score` stream that sends `messages` as they are; the responses received and the status
/// the stream ended with (`Code::Ok` for a clean end).
pub async fn score_stream(
    channel: &tonic::transport::Channel,
    messages: Vec<Vec<u8>>,
) -> (Vec<Vec<u8>>, tonic::Status) {
    let call = grpc(channel)
        .await
        .streaming(
            tonic::Request::new(futures::stream::iter(messages)),
            PathAndQuery::from_static("/rewardfleet.v1.RewardService/Score"),
            Raw,
        )
        .await;
    let mut responses = match call {
        Ok(r) => r.into_inner(),
        Err(status) => return (Vec::new(), status),
    };
    let mut received = Vec::new();
    loop {
        match responses.next().await {
            Some(Ok(message)) => received.push(message),
            Some(Err(status)) => return (received, status),
            None => return (received, tonic::Status::ok("")),
        }
    }
}
