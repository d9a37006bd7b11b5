//! The model and the code agree: random walks of the model drive the real state machines —
//! the player's `TargetQueue` (resume, pushes from the main stream and the recovery readers,
//! `read_done`, `next_batch`, acks, suspend) and the shard's `ShardCore` over an in-memory
//! store (hello, apply, reopen after a crash) — and after every step each real queue's
//! state, term, last ack and length, each batch it hands the sender, and each shard's applied
//! index and highest epoch equal the model's. The fencing model's walks drive the shard's
//! epoch rules with paused replicas and takeovers.

use logplayer::player::queue::{QueueLimits, QueueState, ReadDone, TargetQueue};
use logplayer::proto::ShardEntry;
use logplayer::shard::{HelloInfo, MemStore, ShardCore, ShardSelf};
use stateright::Model;

use super::fencing::{self, Fencing};
use super::queues::{Action, Delivery, Item, PLAYERS, Q, ReadStep, SHARDS, State};

/// Real entries in the walks carry no mutations, so each weighs 98–100 bytes in a queue:
/// 200 bytes holds the model's two, and a third overflows.
const NORMAL_BYTES: usize = 200;

fn entry(item: Item) -> ShardEntry {
    ShardEntry {
        index: u64::from(item.index),
        prev_index: u64::from(item.prev),
        ..Default::default()
    }
}

fn queue() -> TargetQueue {
    TargetQueue::new(QueueLimits {
        normal_bytes: NORMAL_BYTES,
        catchup_bytes: usize::MAX / 2,
    })
}

fn queues() -> Vec<TargetQueue> {
    (0..SHARDS).map(|_| queue()).collect()
}

fn open(s: usize, store: MemStore) -> ShardCore<MemStore> {
    let me = ShardSelf {
        id: format!("s{s}"),
        addr: "model".into(),
        max_entry_bytes: 1 << 20,
    };
    ShardCore::open(store, me).expect("an in-memory shard opens")
}

/// A xorshift generator: the walks are the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

struct Real {
    queues: Vec<Vec<TargetQueue>>,
    shards: Vec<ShardCore<MemStore>>,
}

impl Real {
    fn new() -> Real {
        Real {
            queues: (0..PLAYERS).map(|_| queues()).collect(),
            shards: (0..SHARDS).map(|s| open(s, MemStore::default())).collect(),
        }
    }

    /// Applies `action`, taken by the model from `st` to `after`, to the real code.
    fn step(&mut self, m: &Delivery, st: &State, action: &Action, after: &State) {
        match *action {
            Action::Acquire(p) | Action::CrashPlayer(p) => self.queues[p as usize] = queues(),
            Action::Dispatch(p) => {
                for (s, item) in m.dispatch_items(&st.players[p as usize]) {
                    self.queues[p as usize][s].push_normal(entry(item));
                }
            }
            Action::Connect(p, s) => self.connect(st, p as usize, s as usize, after),
            Action::Read(p, s, r) => {
                let (p, s, r) = (p as usize, s as usize, r as usize);
                let t = &st.players[p].targets[s];
                let reader = t.readers[r];
                let term = u64::from(reader.term);
                let q = &mut self.queues[p][s];
                match m.read_step(st, t, s, r).expect("the model took this step") {
                    ReadStep::Entry(item) => {
                        q.push_catchup(term, entry(item));
                    }
                    ReadStep::End(wm) => {
                        if let Some(wm) = wm {
                            q.push_catchup(term, entry(wm));
                        }
                        let done = q.read_done(term, u64::from(reader.to));
                        let model_reader = after.players[p].targets[s].readers.get(r);
                        if let ReadDone::Continue { from, to } = done {
                            let r = model_reader.expect("the model's reader continues too");
                            assert_eq!((from, to), (u64::from(r.pos) + 1, u64::from(r.to)));
                        }
                    }
                }
            }
            Action::Send(p, s) => {
                let (p, s) = (p as usize, s as usize);
                let batch = self.queues[p][s].next_batch(1, usize::MAX);
                let stream = after.players[p].targets[s].stream.as_ref();
                let sent = stream.and_then(|st| st.to_shard.last()).map(|m| m.1);
                let got = batch.first().map(|e| (e.index, e.prev_index));
                let want = sent.map(|i| (u64::from(i.index), u64::from(i.prev)));
                assert_eq!(got, want, "the real queue handed the sender another entry");
            }
            Action::Receive(p, s) => {
                let (p, s) = (p as usize, s as usize);
                let stream = st.players[p].targets[s].stream.as_ref();
                let (epoch, item) = stream.expect("a stream to receive from").to_shard[0];
                let _ = self.shards[s].apply(u64::from(epoch), &[entry(item)]);
                self.after_refusal(st, p, s, after);
            }
            Action::Ack(p, s) => {
                let stream = st.players[p as usize].targets[s as usize].stream.as_ref();
                let ack = stream.and_then(|st| st.ack).expect("an ack to take");
                self.queues[p as usize][s as usize].on_ack(u64::from(ack));
            }
            Action::Break(p, s) => self.queues[p as usize][s as usize].suspend(),
            Action::CrashShard(s) => {
                let s = s as usize;
                let store = std::mem::replace(&mut self.shards[s], open(s, MemStore::default()));
                self.shards[s] = open(s, store.into_store());
                for p in 0..PLAYERS {
                    self.queues[p][s].suspend();
                }
            }
            Action::Append | Action::Checkpoint(_) | Action::Retain => {}
        }
    }

    fn connect(&mut self, st: &State, p: usize, s: usize, after: &State) {
        let Some(epoch) = st.players[p].leads else {
            return;
        };
        let hello = HelloInfo {
            epoch: u64::from(epoch),
            log_id: "model".into(),
            shard_id: format!("s{s}"),
            max_entry_bytes: 1 << 20,
            slots: vec![logplayer::routing::SlotRange::new(0, 16383)],
        };
        match self.shards[s].hello(&hello) {
            Err(_) => self.queues[p] = queues(), // fenced: the replica steps down
            Ok(durable) => {
                let current = u64::from(st.players[p].dispatched);
                let rec = self.queues[p][s].resume(durable.applied, current);
                let t = &after.players[p].targets[s];
                let want = (rec.is_some()).then(|| t.readers.last().copied()).flatten();
                assert_eq!(
                    rec.map(|r| (r.term, r.from, r.to)),
                    want.map(|r| (u64::from(r.term), u64::from(r.pos) + 1, u64::from(r.to))),
                    "resume asked for another recovery than the model's"
                );
            }
        }
    }

    /// A refused message closes the stream (the queue suspends) or, fenced, the replica
    /// steps down.
    fn after_refusal(&mut self, st: &State, p: usize, s: usize, after: &State) {
        if st.players[p].leads.is_some() && after.players[p].leads.is_none() {
            self.queues[p] = queues();
        } else if after.players[p].targets[s].stream.is_none() {
            self.queues[p][s].suspend();
        }
    }

    fn compare(&self, st: &State, action: &Action) {
        for (s, core) in self.shards.iter().enumerate() {
            let d = core.durable();
            let want = (st.shards[s].applied, st.shards[s].highest);
            assert_eq!(
                (d.applied, d.highest_epoch),
                (u64::from(want.0), u64::from(want.1)),
                "shard {s} after {action:?}: the code and the model disagree\n{st:#?}"
            );
        }
        for (p, player) in st.players.iter().enumerate() {
            for (s, t) in player.targets.iter().enumerate() {
                let real = &self.queues[p][s];
                let state = match real.state() {
                    QueueState::Normal => Q::N,
                    QueueState::RecoveryFetching => Q::RF,
                    QueueState::FetchCompleted => Q::FC,
                    QueueState::Suspended => Q::S,
                };
                let q = &t.queue;
                assert_eq!(
                    (state, real.term(), real.last_ack(), real.len()),
                    (
                        q.q,
                        u64::from(q.term),
                        u64::from(q.last_ack),
                        q.normal.len() + q.catchup.len()
                    ),
                    "player {p}'s queue for shard {s} after {action:?}: the code and the model disagree\n{t:#?}"
                );
            }
        }
    }
}

/// Runs `walks` random walks of up to `length` steps; returns the steps taken.
pub fn run(m: &Delivery, walks: usize, length: usize) -> usize {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut steps = 0;
    for _ in 0..walks {
        let mut st = m.init_states().remove(0);
        let mut real = Real::new();
        for _ in 0..length {
            let mut actions = Vec::new();
            m.actions(&st, &mut actions);
            // Actions the model cannot take from here (a bound) are skipped.
            let mut next = None;
            while !actions.is_empty() {
                let action = actions.swap_remove(rng.below(actions.len()));
                if let Some(after) = m.next_state(&st, action.clone()) {
                    next = Some((action, after));
                    break;
                }
            }
            let Some((action, after)) = next else {
                break;
            };
            real.step(m, &st, &action, &after);
            real.compare(&after, &action);
            st = after;
            steps += 1;
        }
    }
    steps
}

/// Walks of the fencing model drive the real `ShardCore`: hello for a connection, apply for
/// a received message, a reopen for a crash; returns the steps taken.
pub fn run_fencing(m: &Fencing, walks: usize, length: usize) -> usize {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut steps = 0;
    for _ in 0..walks {
        let mut st = m.init_states().remove(0);
        let mut cores: Vec<ShardCore<MemStore>> = (0..fencing::SHARDS)
            .map(|s| open(s, MemStore::default()))
            .collect();
        for _ in 0..length {
            let mut actions = Vec::new();
            m.actions(&st, &mut actions);
            if actions.is_empty() {
                break;
            }
            let action = actions.swap_remove(rng.below(actions.len()));
            match &action {
                fencing::Action::Connect(p, s) => {
                    if let Some(epoch) = st.players[*p as usize].leads {
                        let hello = HelloInfo {
                            epoch: u64::from(epoch),
                            log_id: "model".into(),
                            shard_id: format!("s{s}"),
                            max_entry_bytes: 1 << 20,
                            slots: vec![logplayer::routing::SlotRange::new(0, 16383)],
                        };
                        let _ = cores[*s as usize].hello(&hello);
                    }
                }
                fencing::Action::Receive(p, s) => {
                    if let Some((stream, _)) = &st.players[*p as usize].streams[*s as usize] {
                        let (epoch, index, prev) = stream.to_shard[0];
                        let item = Item {
                            index,
                            prev,
                            wm: false,
                        };
                        let _ = cores[*s as usize].apply(u64::from(epoch), &[entry(item)]);
                    }
                }
                fencing::Action::CrashShard(s) => {
                    let s = *s as usize;
                    let store = std::mem::replace(&mut cores[s], open(s, MemStore::default()));
                    cores[s] = open(s, store.into_store());
                }
                _ => {}
            }
            let Some(after) = m.next_state(&st, action.clone()) else {
                break;
            };
            st = after;
            steps += 1;
            for (s, core) in cores.iter().enumerate() {
                let d = core.durable();
                assert_eq!(
                    (d.applied, d.highest_epoch),
                    (
                        u64::from(st.shards[s].applied),
                        u64::from(st.shards[s].highest)
                    ),
                    "shard {s} after {action:?}: the code and the model disagree\n{st:#?}"
                );
            }
        }
    }
    steps
}
