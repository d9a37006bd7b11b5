//! The data model shared by every component: the value a key holds, what each mutation does
//! to it, how values render as JSON lines, and the expected state a log implies.
//!
//! The op semantics here are total and deterministic (an `add` on a non-counter starts from
//! 0, an `append` on a non-list starts from `[]`), because a committed log entry must apply
//! the same way on every replay; a shard can never refuse an entry for its content.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto::{Mutation, mutation::Op};

/// What one key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Bytes(Vec<u8>),
    Counter(i64),
    List(Vec<Vec<u8>>),
}

/// Errors turning stored bytes back into a [`Value`].
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("stored value is empty")]
    Empty,
    #[error("stored value has unknown tag {0}")]
    UnknownTag(u8),
    #[error("stored value is truncated")]
    Truncated,
}

impl Value {
    /// Applies one op to the key's current value; `None` means absent. Returns the new
    /// value, `None` after a delete.
    pub fn apply(current: Option<Value>, op: &Op) -> Option<Value> {
        match op {
            Op::Put(bytes) => Some(Value::Bytes(bytes.to_vec())),
            Op::Delete(_) => None,
            Op::Add(delta) => Some(Value::Counter(match current {
                Some(Value::Counter(n)) => n.wrapping_add(*delta),
                _ => *delta,
            })),
            Op::Append(item) => {
                let mut list = match current {
                    Some(Value::List(list)) => list,
                    _ => Vec::new(),
                };
                list.push(item.to_vec());
                Some(Value::List(list))
            }
        }
    }

    /// Compact binary encoding used by the shard's store: a tag byte then the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`Value::encode`], appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Bytes(b) => {
                out.reserve(1 + b.len());
                out.push(1);
                out.extend_from_slice(b);
            }
            Value::Counter(n) => {
                out.push(2);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Value::List(items) => Value::encode_list_into(items, out),
        }
    }

    /// The encoding of a list of `items`, appended to `out`.
    pub fn encode_list_into(items: &[Vec<u8>], out: &mut Vec<u8>) {
        out.reserve(1 + items.iter().map(|i| 4 + i.len()).sum::<usize>());
        out.push(3);
        for item in items {
            out.extend_from_slice(&(item.len() as u32).to_le_bytes());
            out.extend_from_slice(item);
        }
    }

    /// Inverse of [`Value::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Value, ValueError> {
        let (&tag, rest) = bytes.split_first().ok_or(ValueError::Empty)?;
        match tag {
            1 => Ok(Value::Bytes(rest.to_vec())),
            2 => {
                let raw: [u8; 8] = rest.try_into().map_err(|_| ValueError::Truncated)?;
                Ok(Value::Counter(i64::from_le_bytes(raw)))
            }
            3 => {
                let mut items = Vec::new();
                let mut rest = rest;
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err(ValueError::Truncated);
                    }
                    let (len, tail) = rest.split_at(4);
                    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    if tail.len() < len {
                        return Err(ValueError::Truncated);
                    }
                    let (item, tail) = tail.split_at(len);
                    items.push(item.to_vec());
                    rest = tail;
                }
                Ok(Value::List(items))
            }
            other => Err(ValueError::UnknownTag(other)),
        }
    }
}

/// Renders bytes as a JSON string when they are UTF-8, else as `{"hex": "..."}`.
fn bytes_json(b: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::Value::String(s.to_owned()),
        Err(_) => serde_json::json!({ "hex": hex(b) }),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One JSON line for a key and its value, the format of `shard dump` and the `Dump` RPC:
/// `{"key":"k","bytes":"v"}`, `{"key":"k","counter":3}` or `{"key":"k","list":["a","b"]}`.
pub fn json_line(key: &[u8], value: &Value) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("key".into(), bytes_json(key));
    match value {
        Value::Bytes(b) => obj.insert("bytes".into(), bytes_json(b)),
        Value::Counter(n) => obj.insert("counter".into(), (*n).into()),
        Value::List(items) => obj.insert(
            "list".into(),
            serde_json::Value::Array(items.iter().map(|i| bytes_json(i)).collect()),
        ),
    };
    serde_json::Value::Object(obj).to_string()
}

/// The state of a set of keys: what a shard holds, or what a log implies it should.
pub type State = BTreeMap<Vec<u8>, Value>;

/// Applies mutations to a state in order.
pub fn apply_all(state: &mut State, mutations: &[Mutation]) {
    for m in mutations {
        let Some(op) = &m.op else { continue };
        let key = m.key.to_vec();
        let current = state.remove(&key);
        if let Some(v) = Value::apply(current, op) {
            state.insert(key, v);
        }
    }
}

/// The fingerprint of a log entry: XXH3-64 over its content (the writer's start time and
/// each mutation's key, op and operand, each length-prefixed), never 0 (0 on the wire means
/// "not said"). Shards persist the fingerprint of the entry at their applied index, so the
/// player can tell whether the log still holds, at that index, the entry the shard applied
/// (not one appended after the log was put back to an older copy). It is persisted, so it
/// must never change: `fingerprints_are_pinned` holds it. The index is not hashed (it is
/// compared by position). The fields are laid out in a reused buffer (length-prefixed, not
/// a protobuf encoding as `logstore::dedupe::digest` hashes) and hashed at once: this runs
/// once per entry on the player's dispatch path.
pub fn fingerprint(entry: &crate::proto::Entry) -> u64 {
    // The fields are laid out in one reused buffer and hashed at once: XXH3's streaming
    // state pays a call and a copy into its own buffer for each of the many small updates
    // (two per field), and gives the same value as hashing the same bytes at once.
    thread_local! {
        static INPUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    INPUT.with_borrow_mut(|input| {
        input.clear();
        fingerprint_input(entry, input);
        let f = xxhash_rust::xxh3::xxh3_64(input).max(1);
        if input.capacity() > 1024 * 1024 {
            *input = Vec::new(); // a rare large entry does not stay pinned in every thread
        }
        f
    })
}

/// What [`fingerprint`] hashes, appended to `out`.
fn fingerprint_input(entry: &crate::proto::Entry, out: &mut Vec<u8>) {
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    };
    out.extend_from_slice(&entry.append_start_micros.to_le_bytes());
    for m in &entry.mutations {
        bytes(out, &m.key);
        match &m.op {
            None => out.push(0),
            Some(Op::Put(v)) => {
                out.push(1);
                bytes(out, v);
            }
            Some(Op::Delete(_)) => out.push(2),
            Some(Op::Add(d)) => {
                out.push(3);
                out.extend_from_slice(&d.to_le_bytes());
            }
            Some(Op::Append(v)) => {
                out.push(4);
                bytes(out, v);
            }
        }
    }
}

/// Wall-clock microseconds since the Unix epoch (for delay measurements across processes
/// on one machine).
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shards persist fingerprints: a change to the function would make every shard
    /// written before it look like it applied another entry.
    #[test]
    fn fingerprints_are_pinned() {
        use crate::proto::{Delete, Entry};
        let m = |k: &str, op| Mutation {
            key: k.as_bytes().to_vec().into(),
            op: Some(op),
        };
        let entry = Entry {
            index: 7,
            mutations: vec![
                m("a", Op::Put(b"x".to_vec().into())),
                m("b", Op::Delete(Delete {})),
                m("c", Op::Add(-3)),
                m("d", Op::Append(b"yz".to_vec().into())),
            ],
            append_start_micros: 1_700_000_000_000_000,
        };
        let f = fingerprint(&entry);
        assert_eq!(f, 8_012_818_228_623_625_954, "pinned value");
        let moved = Entry {
            index: 8,
            ..entry.clone()
        };
        assert_eq!(fingerprint(&moved), f, "the index is not part of it");
        let mut other = entry.clone();
        other.mutations[2] = m("c", Op::Add(3));
        assert_ne!(fingerprint(&other), f);
        // The op and the boundaries between fields count, not only the bytes.
        let mut shifted = entry.clone();
        shifted.mutations[0] = m("ax", Op::Put(Vec::new().into()));
        assert_ne!(fingerprint(&shifted), f);
        let mut op = entry;
        op.mutations[3] = m("d", Op::Put(b"yz".to_vec().into()));
        assert_ne!(fingerprint(&op), f);
        assert_ne!(fingerprint(&Entry::default()), 0);
    }

    #[test]
    fn values_round_trip_through_their_encoding() {
        for v in [
            Value::Bytes(b"x\x00y".to_vec()),
            Value::Counter(-7),
            Value::List(vec![b"a".to_vec(), Vec::new(), b"ccc".to_vec()]),
            Value::List(Vec::new()),
        ] {
            assert_eq!(Value::decode(&v.encode()).unwrap(), v);
        }
        assert!(Value::decode(&[]).is_err());
        assert!(Value::decode(&[9]).is_err());
        assert!(Value::decode(&[2, 1, 2]).is_err());
        assert!(Value::decode(&[3, 5, 0, 0, 0, b'a']).is_err());
    }

    /// A list whose remainder is too short for an item's 4-byte length (a stored value cut
    /// short, at the start or after a whole item) decodes as `Truncated`: without the check
    /// the length is split off past the end of the bytes, and reading a damaged store
    /// panics instead of reporting it.
    #[test]
    fn a_list_cut_inside_an_item_length_is_truncated() {
        for bytes in [&[3u8, 1, 2][..], &[3, 1, 0, 0, 0, b'a', 7][..]] {
            assert!(
                matches!(Value::decode(bytes), Err(ValueError::Truncated)),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn add_and_append_are_not_idempotent() {
        let add = Op::Add(5);
        let once = Value::apply(None, &add);
        let twice = Value::apply(once.clone(), &add);
        assert_ne!(once, twice);
        let app = Op::Append(b"a".to_vec().into());
        let once = Value::apply(None, &app);
        assert_ne!(once, Value::apply(once.clone(), &app));
    }

    #[test]
    fn json_lines_show_utf8_as_text_and_other_bytes_as_hex() {
        assert_eq!(
            json_line(b"k", &Value::Counter(3)),
            r#"{"counter":3,"key":"k"}"#
        );
        assert_eq!(
            json_line(&[0xff], &Value::List(vec![b"a".to_vec()])),
            r#"{"key":{"hex":"ff"},"list":["a"]}"#
        );
    }
}
