//! Key routing: which shard owns a key.
//!
//! Every key hashes to one of [`SLOTS`] slots: `slot(key) = crc32c(key) % 16384`
//! (CRC-32C, Castagnoli polynomial, as in iSCSI/ext4). Each shard owns one or more
//! inclusive slot ranges; together the shards must cover every slot exactly once. The map
//! carries a version so a later change of ownership can be told apart.
//!
//! A map is written on the command line as `ID=ADDR[@LO-HI[,LO-HI...]]` per shard (without
//! slots, the slots are split evenly in the order given) or as a YAML file:
//! ```yaml
//! version: 1
//! shards:
//!   - id: s0
//!     addr: http://127.0.0.1:7101
//!     slots: ["0-8191"]
//!   - id: s1
//!     addr: http://127.0.0.1:7102
//!     slots: ["8192-16383"]
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Number of hash slots.
pub const SLOTS: u16 = 16384;

/// The slot of a key.
pub fn slot(key: &[u8]) -> u16 {
    (crc32c::crc32c(key) % SLOTS as u32) as u16
}

/// Errors in a shard map; each names the shard or range at fault.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("shard map has no shards")]
    Empty,
    #[error("shard spec {spec:?}: {reason} (expected ID=ADDR or ID=ADDR@LO-HI[,LO-HI])")]
    BadSpec { spec: String, reason: String },
    #[error("slot range {range:?} of shard {shard}: {reason}")]
    BadRange {
        shard: String,
        range: String,
        reason: String,
    },
    #[error("slot {slot} is owned by both {a} and {b}")]
    Overlap { slot: u16, a: String, b: String },
    #[error("slots {from}-{to} are owned by no shard")]
    Missing { from: u16, to: u16 },
    #[error("shard id {0:?} appears twice")]
    DuplicateId(String),
    #[error("shard id must be non-empty and use only [A-Za-z0-9._-], got {0:?}")]
    BadId(String),
    #[error("reading shard map {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing shard map {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
}

/// One shard as declared in a map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub id: String,
    pub addr: String,
    /// Inclusive ranges as `"LO-HI"` strings (or a single `"N"`).
    #[serde(default)]
    pub slots: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MapFile {
    #[serde(default = "one")]
    version: u64,
    shards: Vec<ShardSpec>,
}

fn one() -> u64 {
    1
}

/// A validated shard map: every slot has exactly one owner.
#[derive(Debug, Clone)]
pub struct ShardMap {
    pub version: u64,
    pub shards: Vec<ShardSpec>,
    /// Owner (index into `shards`) of every slot.
    owner: Vec<u16>,
}

impl ShardMap {
    /// Builds a map from `ID=ADDR[@LO-HI,...]` specs.
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<ShardMap, RoutingError> {
        let mut shards = Vec::new();
        for spec in specs {
            let spec = spec.as_ref();
            let bad = |reason: &str| RoutingError::BadSpec {
                spec: spec.to_owned(),
                reason: reason.to_owned(),
            };
            let (id, rest) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
            let (addr, slots) = match rest.split_once('@') {
                Some((a, s)) => (a, s.split(',').map(str::to_owned).collect()),
                None => (rest, Vec::new()),
            };
            if addr.is_empty() {
                return Err(bad("empty address"));
            }
            shards.push(ShardSpec {
                id: id.to_owned(),
                addr: normalize_addr(addr),
                slots,
            });
        }
        Self::new(1, shards)
    }

    /// Reads a YAML map file.
    pub fn from_file(path: &Path) -> Result<ShardMap, RoutingError> {
        let text = std::fs::read_to_string(path).map_err(|source| RoutingError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file: MapFile = serde_yaml::from_str(&text).map_err(|source| RoutingError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        let shards = file
            .shards
            .into_iter()
            .map(|s| ShardSpec {
                addr: normalize_addr(&s.addr),
                ..s
            })
            .collect();
        Self::new(file.version, shards)
    }

    /// Validates ownership. Shards with no slots at all get an even split of the slot space
    /// (allowed only when no shard names slots).
    pub fn new(version: u64, mut shards: Vec<ShardSpec>) -> Result<ShardMap, RoutingError> {
        if shards.is_empty() {
            return Err(RoutingError::Empty);
        }
        let mut seen = std::collections::HashSet::new();
        for s in &shards {
            if s.id.is_empty()
                || !s
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(RoutingError::BadId(s.id.clone()));
            }
            if !seen.insert(s.id.clone()) {
                return Err(RoutingError::DuplicateId(s.id.clone()));
            }
        }
        if shards.iter().all(|s| s.slots.is_empty()) {
            let n = shards.len() as u32;
            for (i, s) in shards.iter_mut().enumerate() {
                let lo = (i as u32 * SLOTS as u32) / n;
                let hi = ((i as u32 + 1) * SLOTS as u32) / n - 1;
                s.slots = vec![format!("{lo}-{hi}")];
            }
        }
        const NONE: u16 = u16::MAX;
        let mut owner = vec![NONE; SLOTS as usize];
        for (i, s) in shards.iter().enumerate() {
            if s.slots.is_empty() {
                return Err(RoutingError::BadRange {
                    shard: s.id.clone(),
                    range: String::new(),
                    reason: "this shard owns no slots while others name theirs".into(),
                });
            }
            for range in &s.slots {
                let (lo, hi) = parse_range(&s.id, range)?;
                for slot in lo..=hi {
                    let o = &mut owner[slot as usize];
                    if *o != NONE {
                        return Err(RoutingError::Overlap {
                            slot,
                            a: shards[*o as usize].id.clone(),
                            b: s.id.clone(),
                        });
                    }
                    *o = i as u16;
                }
            }
        }
        if let Some(first) = owner.iter().position(|&o| o == NONE) {
            let len = owner[first..].iter().take_while(|&&o| o == NONE).count();
            return Err(RoutingError::Missing {
                from: first as u16,
                to: (first + len - 1) as u16,
            });
        }
        Ok(ShardMap {
            version,
            shards,
            owner,
        })
    }

    /// Index (into `shards`) of the shard that owns a key.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.owner[slot(key) as usize] as usize
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

fn parse_range(shard: &str, range: &str) -> Result<(u16, u16), RoutingError> {
    let bad = |reason: String| RoutingError::BadRange {
        shard: shard.to_owned(),
        range: range.to_owned(),
        reason,
    };
    let num = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|e| bad(format!("{s:?} is not a slot number: {e}")))
    };
    let (lo, hi) = match range.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(range)?;
            (n, n)
        }
    };
    if hi >= SLOTS {
        return Err(bad(format!("slots go from 0 to {}", SLOTS - 1)));
    }
    if lo > hi {
        return Err(bad("the low end is above the high end".into()));
    }
    Ok((lo, hi))
}

/// Adds `http://` to a bare `host:port`.
pub fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_covers_every_slot_once() {
        let m = ShardMap::from_specs(&["a=h:1", "b=h:2", "c=h:3"]).unwrap();
        assert_eq!(m.shards[0].slots, vec!["0-5460"]);
        assert_eq!(m.shards[2].slots, vec!["10922-16383"]);
        assert_eq!(m.shards[1].addr, "http://h:2");
    }

    #[test]
    fn explicit_ranges_route_keys_deterministically() {
        let m = ShardMap::from_specs(&["a=h:1@0-99,200-16383", "b=h:2@100-199"]).unwrap();
        for k in 0..1000 {
            let key = format!("key-{k}");
            let s = slot(key.as_bytes());
            let expect = if (100..=199).contains(&s) { 1 } else { 0 };
            assert_eq!(m.shard_of(key.as_bytes()), expect);
        }
        // Pinned value: the hash function is part of the on-disk contract.
        assert_eq!(slot(b"hello"), (crc32c::crc32c(b"hello") % 16384) as u16);
    }

    #[test]
    fn overlapping_missing_and_malformed_ranges_are_named() {
        let e = ShardMap::from_specs(&["a=h@0-100", "b=h@100-16383"]).unwrap_err();
        assert_eq!(e.to_string(), "slot 100 is owned by both a and b");
        let e = ShardMap::from_specs(&["a=h@0-100", "b=h@200-16383"]).unwrap_err();
        assert_eq!(e.to_string(), "slots 101-199 are owned by no shard");
        let e = ShardMap::from_specs(&["a=h@5-1"]).unwrap_err();
        assert!(e.to_string().contains("low end is above"), "{e}");
        let e = ShardMap::from_specs(&["a=h@0-16384"]).unwrap_err();
        assert!(e.to_string().contains("0 to 16383"), "{e}");
        let e = ShardMap::from_specs(&["a=h", "a=h"]).unwrap_err();
        assert!(matches!(e, RoutingError::DuplicateId(_)));
        let e = ShardMap::from_specs(&["noequals"]).unwrap_err();
        assert!(e.to_string().contains("missing '='"), "{e}");
        assert!(ShardMap::from_specs::<&str>(&[]).is_err());
    }

    #[test]
    fn yaml_map_files_are_read_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("map.yaml");
        std::fs::write(
            &p,
            "version: 3\nshards:\n - {id: a, addr: 'x:1', slots: ['0-8191']}\n - {id: b, addr: 'x:2', slots: ['8192-16383']}\n",
        )
        .unwrap();
        let m = ShardMap::from_file(&p).unwrap();
        assert_eq!(m.version, 3);
        std::fs::write(&p, "shards: [").unwrap();
        assert!(
            ShardMap::from_file(&p)
                .unwrap_err()
                .to_string()
                .contains("map.yaml")
        );
    }
}
