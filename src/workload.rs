//! Transactions for demos, benchmarks and tests: each touches several keys with
//! non-idempotent ops (`add` and `append`), so a duplicate, a gap or a reorder shows in the
//! final state. Deterministic for a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::proto::{Mutation, mutation::Op};

/// Shape of the generated transactions.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Mutations per transaction.
    pub keys_per_txn: usize,
    /// Distinct keys to draw from.
    pub key_space: usize,
    /// Approximate transaction size in bytes (padding in the appended values).
    pub txn_bytes: usize,
    rng: StdRng,
    seq: u64,
}

impl Workload {
    pub fn new(keys_per_txn: usize, key_space: usize, txn_bytes: usize, seed: u64) -> Self {
        Workload {
            keys_per_txn: keys_per_txn.max(1),
            key_space: key_space.max(1),
            txn_bytes,
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
        }
    }

    /// The next transaction: half `add`s, half `append`s of a unique token (plus padding to
    /// reach `txn_bytes`).
    pub fn next_txn(&mut self) -> Vec<Mutation> {
        self.seq += 1;
        let per_key = self.txn_bytes / self.keys_per_txn;
        (0..self.keys_per_txn)
            .map(|i| {
                let k = self.rng.random_range(0..self.key_space);
                let op = if self.rng.random_bool(0.5) {
                    Op::Add(self.rng.random_range(1..=1000))
                } else {
                    let token = format!("t{}.{}", self.seq, i);
                    let mut value = token.into_bytes();
                    if value.len() < per_key {
                        value.resize(per_key, b'.');
                    }
                    Op::Append(value.into())
                };
                Mutation {
                    key: format!("key-{k:06}").into_bytes().into(),
                    op: Some(op),
                }
            })
            .collect()
    }
}
