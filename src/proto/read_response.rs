//! `ReadResponse` of `proto/logplayer.proto`, written by hand (`build.rs` maps the message
//! here with `extern_path`) so that a LogStore sends entries it already holds encoded: its
//! tail cache keeps each entry's encoding ([`EncodedEntry`], made once when the entry is
//! written or applied), and a read copies those bytes into the response instead of cloning
//! every entry's mutations and encoding them again for every reader (that was a fifth of a
//! LogStore's CPU at 35,000 appends/s). On the wire it is the generated message exactly: an
//! encoded entry is sent as the length-delimited field 1 its `Entry` would be.
//!
//! Readers (the player, `logplayer` tools, any client of the proto) decode it as before: field
//! 1 into [`ReadResponse::entries`].
#![warn(clippy::all)]

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::Entry;

/// One log entry's protobuf encoding (an `Entry` message) and its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedEntry {
    pub index: u64,
    /// The encoded `Entry` message (its `index` field included).
    pub bytes: Bytes,
}

impl EncodedEntry {
    /// Encodes `entry`.
    pub fn new(entry: &Entry) -> Self {
        EncodedEntry {
            index: entry.index,
            bytes: entry.encode_to_vec().into(),
        }
    }

    /// The bytes this entry takes in a [`ReadResponse`]: its encoding and the field's tag and
    /// length. What a read's byte budget counts, so that a response of many small entries
    /// stays within the message limit (their framing is 2-6 bytes each, a sixth of an
    /// 11-byte entry).
    pub fn framed_len(&self) -> usize {
        encoding::bytes::encoded_len(ENTRIES, &self.bytes)
    }

    /// The entry back (for tests and tools; servers send the bytes).
    pub fn decode(&self) -> Result<Entry, DecodeError> {
        Entry::decode(self.bytes.clone())
    }
}

/// One response of a `Read` stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadResponse {
    /// The entries, decoded: what a reader receives. A server fills
    /// [`ReadResponse::encoded`] instead; a response holding both sends the encoded ones
    /// first.
    pub entries: Vec<Entry>,
    /// The id of the log these entries belong to (the same on every response of a stream).
    pub log_id: String,
    /// Entries sent as they are, each an encoded `Entry` (never filled by decoding).
    pub encoded: Vec<Bytes>,
}

const ENTRIES: u32 = 1;
const LOG_ID: u32 = 2;

impl Message for ReadResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for e in &self.encoded {
            // An embedded message and a bytes field are the same on the wire.
            encoding::bytes::encode(ENTRIES, e, buf);
        }
        for e in &self.entries {
            encoding::message::encode(ENTRIES, e, buf);
        }
        if !self.log_id.is_empty() {
            encoding::string::encode(LOG_ID, &self.log_id, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            ENTRIES => encoding::message::merge_repeated(wire_type, &mut self.entries, buf, ctx)
                .map_err(|mut e| {
                    e.push("ReadResponse", "entries");
                    e
                }),
            LOG_ID => {
                encoding::string::merge(wire_type, &mut self.log_id, buf, ctx).map_err(|mut e| {
                    e.push("ReadResponse", "log_id");
                    e
                })
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let encoded: usize = self
            .encoded
            .iter()
            .map(|e| encoding::bytes::encoded_len(ENTRIES, e))
            .sum();
        let log_id = if self.log_id.is_empty() {
            0
        } else {
            encoding::string::encoded_len(LOG_ID, &self.log_id)
        };
        encoded + encoding::message::encoded_len_repeated(ENTRIES, &self.entries) + log_id
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.log_id.clear();
        self.encoded.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Mutation;
    use crate::proto::mutation::Op;

    /// What prost generates for the message in `proto/logplayer.proto`: the reference.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(message, repeated, tag = "1")]
        entries: Vec<Entry>,
        #[prost(string, tag = "2")]
        log_id: String,
    }

    fn entry(index: u64) -> Entry {
        Entry {
            index,
            mutations: vec![
                Mutation {
                    key: Bytes::from(format!("l-{index:06}")),
                    op: Some(Op::Append(Bytes::from(vec![b'x'; 300]))),
                },
                Mutation {
                    key: Bytes::from_static(b"c-000002"),
                    op: Some(Op::Add(index as i64)),
                },
            ],
            append_start_micros: 1_700_000_000_000_000 + index,
        }
    }

    /// The hand-written message and the reference above are the schema's `ReadResponse`:
    /// a field added to or renumbered in `proto/logplayer.proto` fails here rather than
    /// being dropped by this side without a word.
    #[test]
    fn the_schema_s_read_response_has_the_fields_written_here() {
        use prost_types::field_descriptor_proto::{Label, Type};
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the schema's descriptors decode");
        let message = set
            .file
            .iter()
            .filter(|f| f.package() == "logplayer.v1")
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == "ReadResponse")
            .expect("ReadResponse is in the schema");
        let fields: Vec<(i32, &str, Label, Type, &str)> = message
            .field
            .iter()
            .map(|f| (f.number(), f.name(), f.label(), f.r#type(), f.type_name()))
            .collect();
        assert_eq!(
            fields,
            [
                (
                    ENTRIES as i32,
                    "entries",
                    Label::Repeated,
                    Type::Message,
                    ".logplayer.v1.Entry"
                ),
                (LOG_ID as i32, "log_id", Label::Optional, Type::String, ""),
            ]
        );
    }

    #[test]
    fn an_encoded_response_is_the_generated_message_byte_for_byte() {
        let entries: Vec<Entry> = (1..=5).map(entry).collect();
        let want = Generated {
            entries: entries.clone(),
            log_id: "log-1".into(),
        }
        .encode_to_vec();
        let encoded = ReadResponse {
            encoded: entries.iter().map(|e| EncodedEntry::new(e).bytes).collect(),
            log_id: "log-1".into(),
            ..Default::default()
        };
        assert_eq!(encoded.encode_to_vec(), want);
        assert_eq!(encoded.encoded_len(), want.len());
        let decoded = ReadResponse {
            entries: entries.clone(),
            log_id: "log-1".into(),
            ..Default::default()
        };
        assert_eq!(decoded.encode_to_vec(), want);
        assert_eq!(decoded.encoded_len(), want.len());
        // A reader gets the entries back, decoded, from either.
        let back = ReadResponse::decode(&want[..]).unwrap();
        assert_eq!(back.entries, entries);
        assert_eq!(back.log_id, "log-1");
        assert!(back.encoded.is_empty());
        assert_eq!(EncodedEntry::new(&entries[2]).decode().unwrap(), entries[2]);
    }

    #[test]
    fn a_malformed_response_is_an_error_naming_the_field() {
        let mut bytes = Generated {
            entries: vec![entry(1)],
            log_id: "log-1".into(),
        }
        .encode_to_vec();
        bytes.truncate(bytes.len() - 10);
        let err = ReadResponse::decode(&bytes[..]).unwrap_err().to_string();
        assert!(err.contains("ReadResponse"), "{err}");
        // An unknown field is skipped, as a generated message would.
        let mut more = Generated {
            entries: vec![entry(1)],
            log_id: "log-1".into(),
        }
        .encode_to_vec();
        encoding::uint64::encode(9, &7, &mut more);
        assert_eq!(ReadResponse::decode(&more[..]).unwrap().entries.len(), 1);
    }
}
