//! A stored record's entry as a reader is sent it: the record's field 1 (the `Entry`
//! message the writer encoded, written first; see `writer::stored_record`) sliced out of
//! the record, rather than the record decoded and its entry encoded again.
//!
//! # Why by hand
//! A reader behind the tail cache is served from the WAL. Decoding each record (an
//! allocation per mutation and a reference count per key and value), encoding its entry
//! again and dropping what was decoded took a third of the LogStore's CPU in a profile of
//! `bench --insecure --shards 2 --sizes 1024 --rate 50000`, where a shard that fell behind
//! caught up from the log. prost decodes whole messages only, so the walk over the fields
//! (prost's own `decode_key`, `decode_varint` and `skip_field`) is ours. It reads two
//! levels: the record's fields, and the entry's own fields for its index; it does not
//! decode the mutations or check the other fields' contents (every record was decoded whole
//! when the log was opened or written, and the WAL checksums it). A record it does not
//! expect (its entry field repeated, which protobuf merges; the entry or its index of
//! another wire type; fields that do not parse) takes the full decode, which names the
//! fault.

use std::ops::Range;

use bytes::{Buf, Bytes};
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

use super::{LogStoreError, decode_stored};
use crate::proto::EncodedEntry;

/// Field numbers of `StoredEntry.entry` and `Entry.index`.
const ENTRY: u32 = 1;
const INDEX: u32 = 1;

/// The entry of the record stored at `index`, as it is sent to readers.
pub(super) fn entry(index: u64, record: Vec<u8>) -> Result<EncodedEntry, LogStoreError> {
    match entry_field(&record) {
        Some((range, said)) if said == index => Ok(EncodedEntry {
            index,
            bytes: Bytes::from(record).slice(range),
        }),
        Some((_, said)) => Err(LogStoreError::Decode {
            index,
            reason: format!("record says it is index {said}"),
        }),
        None => decode_stored(index, &record)?
            .entry
            .map(|e| EncodedEntry::new(&e))
            .ok_or(LogStoreError::Decode {
                index,
                reason: "record holds no entry".into(),
            }),
    }
}

/// Where the record's one entry field lies, and the index that entry says; `None` for
/// anything else.
fn entry_field(record: &[u8]) -> Option<(Range<usize>, u64)> {
    let mut buf = record;
    let mut found = None;
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        if tag != ENTRY {
            skip_field(wire, tag, &mut buf, DecodeContext::default()).ok()?;
            continue;
        }
        if found.is_some() || wire != WireType::LengthDelimited {
            return None;
        }
        let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
        let body = buf.get(..len)?;
        let start = record.len() - buf.len();
        found = Some((start..start + len, index_of(body)?));
        buf.advance(len);
    }
    found
}

/// The index an encoded `Entry` says (0 when it has none, as protobuf reads it).
fn index_of(entry: &[u8]) -> Option<u64> {
    let mut buf = entry;
    let mut index = 0;
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        match (tag, wire) {
            (INDEX, WireType::Varint) => index = decode_varint(&mut buf).ok()?,
            (INDEX, _) => return None,
            _ => skip_field(wire, tag, &mut buf, DecodeContext::default()).ok()?,
        }
    }
    Some(index)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::mutation::Op;
    use crate::proto::{Entry, Mutation, StoredEntry};

    fn sample(index: u64) -> Entry {
        Entry {
            index,
            mutations: vec![
                Mutation {
                    key: b"k1".to_vec().into(),
                    op: Some(Op::Add(-3)),
                },
                Mutation {
                    key: b"k2".to_vec().into(),
                    op: Some(Op::Append(vec![7; 300].into())),
                },
            ],
            append_start_micros: 1_700_000_000_000_000,
        }
    }

    fn record(entry: Option<Entry>) -> Vec<u8> {
        StoredEntry {
            entry,
            writer_id: "tm-1".into(),
            sequence: 9,
            follows: 8,
        }
        .encode_to_vec()
    }

    #[test]
    fn the_entry_sliced_out_is_the_entry_encoded_again() {
        for index in [1, 127, 128, u64::MAX] {
            let e = sample(index);
            let stored = record(Some(e.clone()));
            let within = stored.as_ptr_range();
            let got = entry(index, stored).unwrap();
            assert_eq!(got, EncodedEntry::new(&e), "index {index}");
            assert!(
                within.contains(&got.bytes.as_ptr()),
                "sliced out of the record, not decoded and encoded again"
            );
        }
        // The writer's own layout: the entry's bytes as field 1, then the rest.
        let e = EncodedEntry::new(&sample(5));
        let stored = super::super::writer::stored_record(&e, "tm".into(), 1);
        assert_eq!(entry(5, stored).unwrap(), e);
    }

    #[test]
    fn a_record_of_another_index_or_without_an_entry_is_refused_by_name() {
        let err = entry(8, record(Some(sample(7)))).unwrap_err().to_string();
        assert!(err.contains("record says it is index 7"), "{err}");
        let err = entry(8, record(None)).unwrap_err().to_string();
        assert!(err.contains("record holds no entry"), "{err}");
        let err = entry(8, vec![0x0a, 0x7f, 1]).unwrap_err().to_string();
        assert!(err.contains("record 8 does not decode"), "{err}");
    }

    /// Protobuf merges a repeated message field: the slice would send half of it, so such a
    /// record takes the full decode and is sent as the merge.
    #[test]
    fn an_entry_field_given_twice_is_sent_as_protobuf_merges_it() {
        let mut twice = record(Some(sample(4)));
        let second = Entry {
            index: 4,
            mutations: vec![Mutation {
                key: b"k3".to_vec().into(),
                op: Some(Op::Add(1)),
            }],
            append_start_micros: 0,
        };
        prost::encoding::message::encode(ENTRY, &second, &mut twice);
        let got = entry(4, twice).unwrap();
        let mut merged = sample(4);
        merged.mutations.extend(second.mutations);
        assert_eq!(got.decode().unwrap(), merged);
    }
}
