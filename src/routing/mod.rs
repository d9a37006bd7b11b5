//! Key routing: which shard owns a key.
//!
//! The slot model (hashing, ranges, `LO-HI` parsing and the rule that the shards own every
//! slot exactly once) lives in [`slots`]; this module turns a declared map into a
//! [`ShardMap`] that answers `shard_of(key)`. The map carries a version so a later change of
//! ownership can be told apart.
//!
//! A map is written on the command line as `ID=ADDR[@LO-HI[,LO-HI...]]` per shard (without
//! slots, the slots are split evenly in the order given) or as a YAML file ([`MapFile`]),
//! which is also what the operator renders into the players' ConfigMap:
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

pub mod slots;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use slots::{SLOTS, SlotRange, SlotSet, slot};

/// Errors in a shard map; each names the shard or range at fault.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("shard map has no shards")]
    Empty,
    #[error("shard spec {spec:?}: {reason} (expected ID=ADDR or ID=ADDR@LO-HI[,LO-HI])")]
    BadSpec { spec: String, reason: String },
    #[error("shard {shard}: {source}")]
    BadRange {
        shard: String,
        source: slots::ParseRangeError,
    },
    #[error("shard {0}: this shard owns no slots while others name theirs")]
    NoSlots(String),
    #[error(transparent)]
    Coverage(#[from] slots::Coverage),
    #[error("shard id {0:?} appears twice")]
    DuplicateId(String),
    #[error(
        "shards {first:?} and {second:?} have the same address {addr}: each shard is its own \
         server (the one at {addr} would refuse every entry meant for the other as wrong-shard)"
    )]
    DuplicateAddr {
        first: String,
        second: String,
        addr: String,
    },
    #[error("shard id must be non-empty and use only [A-Za-z0-9._-], got {0:?}")]
    BadId(String),
    #[error("shard {shard}: address {addr:?} is not HOST:PORT ({reason})")]
    BadAddr {
        shard: String,
        addr: String,
        reason: String,
    },
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

/// One shard as a map declares it. A field it does not know (`slot:` for `slots:`) is an
/// error, not ignored: ignored, it would route keys to other shards than intended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapEntry {
    pub id: String,
    pub addr: String,
    /// Inclusive ranges as `"LO-HI"` strings (or a single `"N"`).
    #[serde(default)]
    pub slots: Vec<String>,
}

/// A shard map file: the YAML form of a map (unknown fields refused, as in [`MapEntry`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapFile {
    #[serde(default = "one")]
    pub version: u64,
    pub shards: Vec<MapEntry>,
}

fn one() -> u64 {
    1
}

/// A validated shard map: every slot has exactly one owner.
#[derive(Debug, Clone)]
pub struct ShardMap {
    pub version: u64,
    pub shards: Vec<MapEntry>,
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
            shards.push(MapEntry {
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
            .map(|s| MapEntry {
                addr: normalize_addr(&s.addr),
                ..s
            })
            .collect();
        Self::new(file.version, shards)
    }

    /// Validates ownership. Shards with no slots at all get an even split of the slot space
    /// (allowed only when no shard names slots).
    pub fn new(version: u64, mut shards: Vec<MapEntry>) -> Result<ShardMap, RoutingError> {
        if shards.is_empty() {
            return Err(RoutingError::Empty);
        }
        check_ids(&shards)?;
        if shards.iter().all(|s| s.slots.is_empty()) {
            let count = shards.len() as u32;
            for (i, s) in shards.iter_mut().enumerate() {
                let lo = (i as u32 * u32::from(SLOTS)) / count;
                let hi = ((i as u32 + 1) * u32::from(SLOTS)) / count - 1;
                s.slots = vec![format!("{lo}-{hi}")];
            }
        }
        let mut ranges = Vec::with_capacity(shards.len());
        for s in &shards {
            if s.slots.is_empty() {
                return Err(RoutingError::NoSlots(s.id.clone()));
            }
            let mut parsed = s
                .slots
                .iter()
                .map(|r| r.parse::<SlotRange>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| RoutingError::BadRange {
                    shard: s.id.clone(),
                    source,
                })?;
            // A map's ranges may be listed in any order (a Shard resource's may not).
            parsed.sort_unstable();
            ranges.push((s.id.clone(), parsed));
        }
        slots::check_coverage(&ranges)?;
        let mut owner = vec![0u16; usize::from(SLOTS)];
        for (i, (_, rs)) in ranges.iter().enumerate() {
            for r in rs {
                for slot in r.start..=r.end {
                    owner[slot as usize] = i as u16;
                }
            }
        }
        Ok(ShardMap {
            version,
            shards,
            owner,
        })
    }

    /// The slots shard `i` (an index into `shards`) owns.
    pub fn slots_of(&self, i: usize) -> SlotSet {
        let mut ranges: Vec<SlotRange> = Vec::new();
        for (slot, _) in self
            .owner
            .iter()
            .enumerate()
            .filter(|&(_, &o)| usize::from(o) == i)
        {
            let slot = slot as i32;
            match ranges.last_mut() {
                Some(last) if last.end + 1 == slot => last.end = slot,
                _ => ranges.push(SlotRange::new(slot, slot)),
            }
        }
        // Built from the validated owner table: sorted, disjoint and within bounds.
        SlotSet::from_ranges(ranges).unwrap_or_default()
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

/// A shard id: non-empty, of `[A-Za-z0-9._-]` (the map's, and a shard server's `--id`).
pub fn check_id(id: &str) -> Result<(), RoutingError> {
    let valid = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(RoutingError::BadId(id.to_owned()))
    }
}

/// Every id valid and unique; every address valid and unique.
fn check_ids(shards: &[MapEntry]) -> Result<(), RoutingError> {
    let mut seen = std::collections::HashSet::new();
    for s in shards {
        check_id(&s.id)?;
        if !seen.insert(s.id.clone()) {
            return Err(RoutingError::DuplicateId(s.id.clone()));
        }
        check_addr(&s.addr).map_err(|reason| RoutingError::BadAddr {
            shard: s.id.clone(),
            // As the user wrote it, without the scheme the map adds.
            addr: bare_addr(&s.addr).to_owned(),
            reason,
        })?;
    }
    check_addrs(shards)
}

/// Whether `addr` (`HOST:PORT`, or `http://HOST:PORT`) is an address a client can dial: a
/// host, and a port from 1 to 65535. Checked when a configuration is read, so that a typo
/// is an error at start rather than a connection that fails forever.
pub fn check_addr(addr: &str) -> Result<(), String> {
    let bare = match addr.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some((scheme, _)) => return Err(format!("scheme {scheme:?}: use http:// or none")),
        None => addr,
    };
    let bare = bare.trim_end_matches('/');
    if bare.contains(['/', ',', '?', '#']) || bare.chars().any(char::is_whitespace) {
        return Err("it holds a path, a comma or a space: give one address".into());
    }
    let Some((host, port)) = bare.rsplit_once(':') else {
        return Err("no port".into());
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err("more than one ':' (an IPv6 host goes in brackets: [::1]:7000)".into());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
    http::Uri::try_from(normalize_addr(bare)).map_err(|e| e.to_string())?;
    Ok(())
}

/// One address per shard, compared without its scheme (`http://h:1` and `h:1` are one).
pub fn check_addrs(shards: &[MapEntry]) -> Result<(), RoutingError> {
    let mut addrs = std::collections::HashMap::new();
    for s in shards {
        let addr = addr_key(&s.addr);
        if let Some(first) = addrs.insert(addr.clone(), s.id.clone()) {
            return Err(RoutingError::DuplicateAddr {
                first,
                second: s.id.clone(),
                addr,
            });
        }
    }
    Ok(())
}

/// An address as compared with another: `host:port` without a scheme or a trailing `/`, in
/// lower case, its port as a number (`h:07000` is `h:7000`) and `localhost` as `127.0.0.1`
/// (one socket on this machine either way: two servers cannot both listen there).
pub fn addr_key(addr: &str) -> String {
    let addr = addr.trim();
    let addr = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let addr = addr.trim_end_matches('/').to_ascii_lowercase();
    let Some((host, port)) = addr.rsplit_once(':') else {
        return addr;
    };
    let (Ok(port), false) = (port.parse::<u16>(), host.is_empty()) else {
        return addr;
    };
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}")
}

/// `host:port` of a shard's address, without the `http://` [`normalize_addr`] adds (which
/// only tonic needs: under TLS the connection is not plaintext HTTP, whatever it says).
pub fn bare_addr(addr: &str) -> &str {
    addr.strip_prefix("http://").unwrap_or(addr)
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
    fn a_maps_slots_of_each_shard_are_what_it_routes_to_that_shard() {
        let map = ShardMap::from_specs(&["a=h:1@0-99,200-16383", "b=h:2@100-199"]).unwrap();
        assert_eq!(map.slots_of(0).to_string(), "0-99,200-16383");
        assert_eq!(map.slots_of(1).to_string(), "100-199");
        let even = ShardMap::from_specs(&["a=h:1", "b=h:2"]).unwrap();
        assert_eq!(even.slots_of(0).to_string(), "0-8191");
        assert_eq!(even.slots_of(1).to_string(), "8192-16383");
    }

    #[test]
    fn an_address_a_client_cannot_dial_is_refused_when_the_map_is_read() {
        for good in [
            "h:1",
            "127.0.0.1:7100",
            "http://s0-shard.demo.svc:7100",
            "[::1]:7000",
        ] {
            assert!(check_addr(good).is_ok(), "{good}");
        }
        for (bad, says) in [
            ("127.0.0.1:99999", "1 to 65535"),
            ("127.0.0.1:0", "1 to 65535"),
            ("localhost", "no port"),
            ("127.0.0.1:7100:5", "more than one ':'"),
            ("h:1,h:2", "a comma"),
            ("not an address:1", "a space"),
            ("grpc://h:1", "scheme"),
            (":7100", "no host"),
        ] {
            let e = check_addr(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = ShardMap::from_specs(&["a=h:1", "b=localhost"]).unwrap_err();
        assert!(e.to_string().contains("shard b: address"), "{e}");
        // Named as it was written, not with the scheme the map adds for tonic.
        let e = ShardMap::from_specs(&["a=127.0.0.1:7100x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("address \"127.0.0.1:7100x\""), "{e}");
    }

    #[test]
    fn a_map_field_it_does_not_know_is_an_error_not_an_even_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.yaml");
        std::fs::write(
            &path,
            "shards:\n  - id: a\n    addr: h:1\n    slot: [\"0-1000\"]\n  - id: b\n    addr: h:2\n",
        )
        .unwrap();
        let e = ShardMap::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("unknown field `slot`"), "{e}");
    }

    #[test]
    fn an_address_is_shown_without_the_scheme_tonic_needs() {
        let m = ShardMap::from_specs(&["a=h:1"]).unwrap();
        assert_eq!(bare_addr(&m.shards[0].addr), "h:1");
        assert_eq!(bare_addr("h:1"), "h:1");
    }

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
        let e = ShardMap::from_specs(&["a=h:1@0-100", "b=hb:2@100-16383"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "shards do not own every slot exactly once: slots 100-100 are owned by both shard \"a\" and shard \"b\""
        );
        let e = ShardMap::from_specs(&["a=h:1@0-100", "b=hb:2@200-16383"]).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("slots 101-199 are owned by no shard"),
            "{e}"
        );
        let e = ShardMap::from_specs(&["a=h:1@5-1"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("slot range 5-1 starts after it ends"),
            "{e}"
        );
        let e = ShardMap::from_specs(&["a=h:1@0-16384"]).unwrap_err();
        assert!(e.to_string().contains("slots go from 0 to 16383"), "{e}");
        let e = ShardMap::from_specs(&["a=h:1@x-3"]).unwrap_err();
        assert!(e.to_string().contains("\"x\" is not a slot number"), "{e}");
        // Ranges of a map may come in any order.
        ShardMap::from_specs(&["a=h:1@200-16383,0-99", "b=hb:2@100-199"]).unwrap();
        let e = ShardMap::from_specs(&["a=h:1", "a=h:1"]).unwrap_err();
        assert!(matches!(e, RoutingError::DuplicateId(_)));
        for (a, b) in [
            ("a=127.0.0.1:7101", "b=127.0.0.1:7101"),
            ("c=http://h:1", "d=h:1"),
        ] {
            let e = ShardMap::from_specs(&[a, b]).unwrap_err();
            assert!(
                matches!(e, RoutingError::DuplicateAddr { .. })
                    && e.to_string().contains("same address"),
                "{e}"
            );
        }
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
