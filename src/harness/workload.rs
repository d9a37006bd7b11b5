//! Transactions for demos, benchmarks and tests, built so that the final state is a witness
//! of the whole history. Deterministic for a seed.
//!
//! Every key has one kind for its whole life, fixed by its number: even-numbered keys
//! (`c-NNNNNN`) are counters and only ever get `add` of a positive delta; odd-numbered keys
//! (`l-NNNNNN`) are lists and only ever get `append` of a token unique to the run (its seed
//! and a number drawn once per [`Workload`]), the transaction and the mutation. Nothing ever
//! resets a value, so a duplicate anywhere in
//! the history adds its delta again or repeats its token, a gap leaves a delta or a token
//! missing, and a reorder changes a list's order, however early it happened. Every
//! transaction appends at least one token (its first mutation), so every transaction a
//! shard receives leaves a mark, and a transaction written twice into the log (a retried
//! append the LogStore did not recognise) carries its token twice, which the checker finds
//! ([`parse_token`]) even though the shards then agree with the log.

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::proto::{Mutation, mutation::Op};

/// What pads a token up to the transaction's size; never part of a token.
pub const PAD: u8 = b'~';

/// The largest delta one `add` carries.
const MAX_DELTA: i64 = 1000;

/// Shape of the generated transactions.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Mutations per transaction.
    pub keys_per_txn: usize,
    /// Distinct keys to draw from (half counters, half lists; at least 2).
    pub key_space: usize,
    /// Approximate transaction size in bytes (padding in the appended values).
    pub txn_bytes: usize,
    seed: u64,
    /// Drawn once per workload, not from the seed: two runs with one seed against one log
    /// (two `load`s, a test run twice) make different tokens, so one token twice in a log
    /// is one transaction written twice.
    run: u32,
    rng: StdRng,
    seq: u64,
}

/// Whether key number `k` is a counter (else a list).
fn is_counter(k: usize) -> bool {
    k.is_multiple_of(2)
}

/// The name of key number `k`.
pub fn key_name(k: usize) -> String {
    let mut name = String::new();
    write_key_name(&mut name, k);
    name
}

/// Writes the name of key number `k` ([`key_name`]) to `out`.
fn write_key_name(out: &mut impl std::fmt::Write, k: usize) {
    let kind = if is_counter(k) { 'c' } else { 'l' };
    // Writing to a String or a BytesMut cannot fail.
    let _ = write!(out, "{kind}-{k:06}");
}

/// The token an appended value carries, without its padding.
pub fn token_of(value: &[u8]) -> &[u8] {
    let end = value.iter().position(|&b| b == PAD).unwrap_or(value.len());
    &value[..end]
}

/// The token `t<seed>.<run, 8 hex digits>.<transaction>.<mutation>` of a value a
/// [`Workload`] appended, or `None` for any other value (another writer's).
pub fn parse_token(value: &[u8]) -> Option<&str> {
    let token = std::str::from_utf8(token_of(value)).ok()?;
    let mut parts = token.strip_prefix('t')?.split('.');
    let decimal =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let ok = decimal(parts.next())
        && parts
            .next()
            .is_some_and(|r| r.len() == 8 && r.bytes().all(|b| b.is_ascii_hexdigit()))
        && decimal(parts.next())
        && decimal(parts.next())
        && parts.next().is_none();
    ok.then_some(token)
}

/// The token of a run, a transaction and a mutation.
fn token(seed: u64, run: u32, seq: u64, i: usize) -> String {
    let mut token = String::new();
    write_token(&mut token, seed, run, seq, i);
    token
}

/// Writes the token of a run, a transaction and a mutation ([`token`]) to `out`.
fn write_token(out: &mut impl std::fmt::Write, seed: u64, run: u32, seq: u64, i: usize) {
    // Writing to a String or a BytesMut cannot fail.
    let _ = write!(out, "t{seed}.{run:08x}.{seq}.{i}");
}

impl Workload {
    pub fn new(keys_per_txn: usize, key_space: usize, txn_bytes: usize, seed: u64) -> Self {
        Workload {
            keys_per_txn: keys_per_txn.max(1),
            key_space: key_space.max(2),
            txn_bytes,
            seed,
            run: rand::random(),
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
        }
    }

    /// A key number of the asked kind.
    fn draw(&mut self, counter: bool) -> usize {
        let k = self.rng.random_range(0..self.key_space);
        match (is_counter(k), counter) {
            (a, b) if a == b => k,
            // The neighbour has the other kind; wrap at the top (key_space >= 2).
            _ if k + 1 < self.key_space => k + 1,
            _ => k - 1,
        }
    }

    /// The size ([`crate::limits::entry_bytes`]) of the largest transaction
    /// [`Workload::next_txn`] can make: every mutation an `append` on the longest key name,
    /// with a token at its longest (the sequence at its largest). What a LogStore's
    /// `--max-entry-bytes` must admit. Computed, not built: a mistyped `--txn-bytes` of
    /// gigabytes must be refused, not allocated.
    pub fn largest_txn_bytes(&self) -> usize {
        use prost::encoding::encoded_len_varint as varint;
        let per_key = self.txn_bytes / self.keys_per_txn;
        let last = self.keys_per_txn.saturating_sub(1);
        let token = token(self.seed, u32::MAX, u64::MAX, last).len();
        let key = key_name(self.key_space).len();
        let value = per_key.max(token);
        // Field 1 (key) and field 5 (append), each a one-byte tag, a length and the bytes.
        let mutation = 1 + varint(key as u64) + key + 1 + varint(value as u64) + value;
        self.keys_per_txn * (1 + varint(mutation as u64) + mutation)
    }

    /// The next transaction: an `append` of a unique token first, then a random mix of
    /// `add`s and `append`s, each on a key of its kind (plus padding to reach `txn_bytes`).
    ///
    /// Every key and value of the transaction is a slice of one buffer: two allocations per
    /// transaction rather than two or three per mutation. The load generator shares the
    /// cores of the system it measures (at 50,000 transactions/s its allocations and their
    /// frees on other threads were about a third of the bench process's samples in a profile).
    pub fn next_txn(&mut self) -> Vec<Mutation> {
        /// Where a mutation's parts lie in the transaction's buffer.
        enum Part {
            Add(i64),
            Append(std::ops::Range<usize>),
        }
        self.seq += 1;
        let per_key = self.txn_bytes / self.keys_per_txn;
        let mut buf = BytesMut::with_capacity(self.keys_per_txn * (per_key.max(48) + 16));
        let mut parts = Vec::with_capacity(self.keys_per_txn);
        for i in 0..self.keys_per_txn {
            let counter = i > 0 && self.rng.random_bool(0.5);
            let k = self.draw(counter);
            let key = buf.len();
            write_key_name(&mut buf, k);
            let value = buf.len();
            let part = if counter {
                Part::Add(self.rng.random_range(1..=MAX_DELTA))
            } else {
                write_token(&mut buf, self.seed, self.run, self.seq, i);
                let written = buf.len() - value;
                if written < per_key {
                    buf.resize(value + per_key, PAD);
                }
                Part::Append(value..buf.len())
            };
            parts.push((key..value, part));
        }
        let buf = buf.freeze();
        parts
            .into_iter()
            .map(|(key, part)| Mutation {
                key: buf.slice(key),
                op: Some(match part {
                    Part::Add(delta) => Op::Add(delta),
                    Part::Append(value) => Op::Append(buf.slice(value)),
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_key_keeps_one_kind_and_every_token_is_unique() {
        let mut w = Workload::new(6, 50, 300, 7);
        let mut tokens = HashSet::new();
        for _ in 0..2000 {
            let txn = w.next_txn();
            assert!(matches!(txn[0].op, Some(Op::Append(_))), "no token first");
            for m in txn {
                let key = String::from_utf8(m.key.to_vec()).unwrap();
                match m.op.unwrap() {
                    Op::Add(d) => {
                        assert!(key.starts_with("c-"), "{key}");
                        assert!(d > 0);
                    }
                    Op::Append(v) => {
                        assert!(key.starts_with("l-"), "{key}");
                        assert!(tokens.insert(token_of(&v).to_vec()), "token repeated");
                    }
                    other => panic!("unexpected op {other:?}"),
                }
            }
        }
    }

    #[test]
    fn no_transaction_is_larger_than_the_largest() {
        for (keys, space, bytes) in [(1, 2, 0), (10, 100_000, 1024), (4, 1_000_000, 100_000)] {
            let mut w = Workload::new(keys, space, bytes, u64::MAX - 1);
            let most = w.largest_txn_bytes();
            // The same sum over the largest transaction built.
            let token = token(w.seed, w.run, u64::MAX, keys - 1).len();
            let built: Vec<Mutation> = (0..keys)
                .map(|_| Mutation {
                    key: key_name(space).into_bytes().into(),
                    op: Some(Op::Append(vec![PAD; (bytes / keys).max(token)].into())),
                })
                .collect();
            assert_eq!(most, crate::limits::entry_bytes(&built));
            for _ in 0..200 {
                assert!(crate::limits::entry_bytes(&w.next_txn()) <= most);
            }
        }
    }

    #[test]
    fn every_part_of_a_transaction_is_its_own_key_name_and_padded_token() {
        let (keys, bytes) = (5, 400);
        let mut w = Workload::new(keys, 1000, bytes, 3);
        for seq in 1..=50 {
            for (i, m) in w.next_txn().into_iter().enumerate() {
                let key = std::str::from_utf8(&m.key).unwrap().to_owned();
                let k: usize = key[2..].parse().unwrap();
                assert_eq!(key, key_name(k));
                match m.op.unwrap() {
                    Op::Add(d) => assert!((1..=MAX_DELTA).contains(&d)),
                    Op::Append(v) => {
                        let mut want = token(3, w.run, seq, i).into_bytes();
                        want.resize((bytes / keys).max(want.len()), PAD);
                        assert_eq!(v, want);
                    }
                    other => panic!("unexpected op {other:?}"),
                }
            }
        }
    }

    #[test]
    fn seeds_keep_tokens_apart() {
        let a = Workload::new(1, 10, 0, 1).next_txn();
        let b = Workload::new(1, 10, 0, 2).next_txn();
        assert_ne!(a[0].op, b[0].op);
    }

    #[test]
    fn two_runs_with_one_seed_make_other_tokens_and_each_is_read_back() {
        let (mut a, mut b) = (Workload::new(3, 10, 200, 5), Workload::new(3, 10, 200, 5));
        b.run = a.run.wrapping_add(1); // drawn: made to differ, not left to chance
        let (ta, tb) = (a.next_txn(), b.next_txn());
        let value = |t: &[Mutation]| match &t[0].op {
            Some(Op::Append(v)) => v.clone(),
            other => panic!("no token first: {other:?}"),
        };
        let (va, vb) = (value(&ta), value(&tb));
        let (pa, pb) = (parse_token(&va).unwrap(), parse_token(&vb).unwrap());
        assert_ne!(pa, pb);
        assert_eq!(pa, token(5, a.run, 1, 0));
        assert_eq!(ta[0].key, tb[0].key, "the keys follow the seed alone");
    }

    #[test]
    fn only_a_workloads_tokens_are_read_as_tokens() {
        assert_eq!(parse_token(b"t7.00c0ffee.3.0~~~~"), Some("t7.00c0ffee.3.0"));
        for other in [
            &b"x"[..],
            b"t7.3.0",
            b"t7.c0ffee.3.0",
            b"t7.00c0ffee.3",
            b"t7.00c0ffee.3.0.1",
            b"t.00c0ffee.3.0",
            b"s7.00c0ffee.3.0",
            b"t7.00c0ffeg.3.0",
            b"\xff",
        ] {
            assert_eq!(
                parse_token(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
