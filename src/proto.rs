//! The generated protobuf messages and gRPC stubs of `proto/logplayer.proto`, and the
//! descriptor set that server reflection serves. One message is written by hand,
//! `ReadResponse` (`read_response.rs`: a LogStore sends the entries it holds encoded). Message
//! types are plain prost structs and may be used by the protocol logic; the client/server stubs
//! are for the gRPC edges only.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("logplayer.v1");

mod read_response;
pub use read_response::{EncodedEntry, ReadResponse};

/// Encoded `FileDescriptorSet` of the protocol, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/logplayer_descriptor.bin"));

impl SlotRange {
    /// Every slot, 0 to 16383: what a Hello gives the one shard of a one-shard map.
    pub fn all() -> Vec<SlotRange> {
        vec![SlotRange {
            start: 0,
            end: u32::from(crate::routing::SLOTS) - 1,
        }]
    }

    /// The ranges of `set`, as a Hello carries them.
    pub fn of(set: &crate::routing::SlotSet) -> Vec<SlotRange> {
        set.ranges()
            .iter()
            .map(|r| SlotRange {
                // A set's ranges are within 0..=16383.
                start: r.start.unsigned_abs(),
                end: r.end.unsigned_abs(),
            })
            .collect()
    }
}
