//! The delivery protocol as a model, checked exhaustively with Stateright: a log with
//! retention below the lowest cursor, player replicas under a lease (a new holder gets the
//! epoch + 1; the old one may be paused and still believe it leads, and keeps sending),
//! shards with a durable applied index, data and highest epoch, delivery streams that are
//! ordered and can break at any point (what is in flight is lost), acknowledgements,
//! checkpointed cursors, and crashes of players and shards, within bounds.
//!
//! ```sh
//! cargo test --release --test model -- --nocapture
//! ```
//!
//! prints `model: <N> states, <M> unique, all properties hold` (default bounds: 4 entries,
//! 2 epochs, 1 crash, 1 stream break: 14,806,231 states, 1,687,533 unique, about 6 s). A
//! deeper run, `LOGPLAYER_MODEL_CRASHES=2 LOGPLAYER_MODEL_BREAKS=2 cargo test --release --test
//! model -- --nocapture`, checked 49,535,089 states, 4,859,886 unique, in 25 s. Each mutation test breaks
//! one rule of the real code (as `src/mutations.rs` does for the processes) and requires
//! the checker to find a counterexample, printing its trace: shards ignoring epochs, a
//! commit split in two with a crash between, retention ignoring a cursor. (Accepting gaps
//! and ignoring queue terms cannot be shown here: without the target queues, nothing in
//! this model produces a gap or a stale-term push.)
//!
//! What the model abstracts: a player's per-shard position is resumed from the shard's
//! applied index on every (re)connection, which is what the paper's target queues achieve
//! with their N/RF/FC/S states and terms; the queues themselves are not modelled here (their
//! transitions are unit-tested in `src/player/queue.rs`).

use stateright::{Checker, HasDiscoveries, Model, Property};

/// Which entries of the log touch which shard: entry `i` (1-based) touches the shards of
/// `TOUCHES[i - 1]` (a bit set).
const TOUCHES: [u8; 4] = [0b01, 0b10, 0b11, 0b01];
const SHARDS: usize = 2;
const PLAYERS: usize = 2;

/// A rule broken on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mutation {
    ShardIgnoresEpochs,
    SplitCommit,
    RetentionIgnoresCursor,
}

#[derive(Clone)]
struct Delivery {
    entries: u8,
    max_epoch: u8,
    crashes: u8,
    breaks: u8,
    mutation: Option<Mutation>,
}

/// A message on a delivery stream: (epoch of the sender, index, previous index that
/// touched this shard).
type Msg = (u8, u8, u8);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Stream {
    /// Player -> shard, in order.
    to_shard: Vec<Msg>,
    /// The latest cumulative ack, shard -> player.
    ack: Option<u8>,
    /// The epoch the stream was opened with.
    epoch: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Player {
    /// The epoch this replica believes it leads with (it may be stale: a paused leader).
    leads: Option<u8>,
    /// Per shard: the open stream, and the last index sent on it.
    streams: [Option<(Stream, u8)>; SHARDS],
    /// Per shard: the highest ack received.
    acked: [u8; SHARDS],
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Shard {
    /// Durable: the applied index, the highest epoch seen, and the entries applied in order.
    applied: u8,
    highest: u8,
    seq: Vec<u8>,
    /// A commit cut in half by a crash (the split-commit mutation): data applied, index not.
    half: bool,
    /// Something was applied under an epoch below the highest seen.
    stale_commit: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    /// Entries appended so far (dense from 1) and the first one retention kept.
    last: u8,
    first: u8,
    /// The lease: its epoch and holder.
    epoch: u8,
    holder: Option<u8>,
    players: [Player; PLAYERS],
    shards: [Shard; SHARDS],
    /// Saved cursors (merged, never backwards).
    cursors: [u8; SHARDS],
    crashes: u8,
    breaks: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Append,
    /// Player p acquires the lease (free, released, or expired: the old holder may still
    /// believe it leads).
    Acquire(u8),
    /// Player p opens a stream to shard s (Hello with its epoch; Welcome with applied).
    Connect(u8, u8),
    /// Player p sends the next entry for shard s.
    Send(u8, u8),
    /// Shard s takes the first message of player p's stream.
    Receive(u8, u8),
    /// Player p takes shard s's latest ack.
    Ack(u8, u8),
    /// The stream p -> s breaks (in-flight messages are lost).
    Break(u8, u8),
    /// Player p saves its acks as cursors.
    Checkpoint(u8),
    /// The log drops entries below the lowest cursor + 1.
    Retain,
    CrashPlayer(u8),
    CrashShard(u8),
}

fn touches(index: u8, s: usize) -> bool {
    index >= 1 && TOUCHES[(index - 1) as usize] & (1 << s) != 0
}

/// The entries of the first `upto` that touch shard `s`, in order: what it must hold.
fn expected(upto: u8, s: usize) -> Vec<u8> {
    (1..=upto).filter(|&i| touches(i, s)).collect()
}

/// The next index after `pos` touching `s`, up to `last`.
fn next_for(pos: u8, last: u8, s: usize) -> Option<u8> {
    (pos + 1..=last).find(|&i| touches(i, s))
}

/// The previous index before `index` that touched `s` (0 when none).
fn prev_for(index: u8, s: usize) -> u8 {
    (1..index).rev().find(|&i| touches(i, s)).unwrap_or(0)
}

impl Delivery {
    fn on(&self, m: Mutation) -> bool {
        self.mutation == Some(m)
    }

    /// A shard takes one message; `None` refuses it (the stream closes).
    fn receive(&self, shard: &mut Shard, (epoch, index, prev): Msg) -> bool {
        if epoch < shard.highest {
            if !self.on(Mutation::ShardIgnoresEpochs) {
                return false;
            }
            shard.stale_commit = true;
        }
        if index <= shard.applied {
            return true; // already applied: skipped
        }
        if prev > shard.applied {
            return false; // a gap
        }
        shard.seq.push(index);
        if self.on(Mutation::SplitCommit) {
            // The data is committed; the applied index follows in a second commit, which
            // a crash may prevent (`CrashShard` then keeps `half`).
            shard.half = true;
        }
        shard.applied = shard.applied.max(index);
        true
    }
}

impl Model for Delivery {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let player = Player {
            leads: None,
            streams: [None, None],
            acked: [0; SHARDS],
        };
        let shard = Shard {
            applied: 0,
            highest: 0,
            seq: Vec::new(),
            half: false,
            stale_commit: false,
        };
        vec![State {
            last: 0,
            first: 1,
            epoch: 0,
            holder: None,
            players: [player.clone(), player],
            shards: [shard.clone(), shard],
            cursors: [0; SHARDS],
            crashes: 0,
            breaks: 0,
        }]
    }

    fn actions(&self, st: &State, actions: &mut Vec<Action>) {
        if st.last < self.entries {
            actions.push(Action::Append);
        }
        if st.epoch < self.max_epoch {
            for p in 0..PLAYERS as u8 {
                if st.holder != Some(p) {
                    actions.push(Action::Acquire(p));
                }
            }
        }
        for (pi, p) in st.players.iter().enumerate() {
            let pu = pi as u8;
            if p.leads.is_some() {
                actions.push(Action::Checkpoint(pu));
            }
            for s in 0..SHARDS {
                let su = s as u8;
                match &p.streams[s] {
                    None if p.leads.is_some() => actions.push(Action::Connect(pu, su)),
                    None => {}
                    Some((stream, pos)) => {
                        if next_for(*pos, st.last, s).is_some() && stream.to_shard.len() < 2 {
                            actions.push(Action::Send(pu, su));
                        }
                        if !stream.to_shard.is_empty() {
                            actions.push(Action::Receive(pu, su));
                        }
                        if stream.ack.is_some() {
                            actions.push(Action::Ack(pu, su));
                        }
                        if st.breaks < self.breaks {
                            actions.push(Action::Break(pu, su));
                        }
                    }
                }
            }
            if st.crashes < self.crashes
                && (p.leads.is_some() || p.streams.iter().any(Option::is_some))
            {
                actions.push(Action::CrashPlayer(pu));
            }
        }
        let lowest = self.lowest(st);
        if lowest + 1 > st.first {
            actions.push(Action::Retain);
        }
        if st.crashes < self.crashes {
            for s in 0..SHARDS as u8 {
                actions.push(Action::CrashShard(s));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut st = last.clone();
        match action {
            Action::Append => st.last += 1,
            Action::Acquire(p) => {
                st.epoch += 1;
                st.holder = Some(p);
                st.players[p as usize].leads = Some(st.epoch);
                // The old holder is not told: it may be paused and still believe it leads.
            }
            Action::Connect(p, s) => {
                let epoch = st.players[p as usize].leads?;
                let shard = &mut st.shards[s as usize];
                if epoch < shard.highest && !self.on(Mutation::ShardIgnoresEpochs) {
                    // Fenced: the replica steps down.
                    let player = &mut st.players[p as usize];
                    player.leads = None;
                    player.streams = [None, None];
                    return Some(st);
                }
                shard.highest = shard.highest.max(epoch);
                let applied = shard.applied;
                if applied + 1 < st.first
                    && next_for(applied, st.last, s as usize).is_some_and(|n| n < st.first)
                {
                    // The log no longer holds what this shard needs: the player stops.
                    return None;
                }
                let player = &mut st.players[p as usize];
                player.acked[s as usize] = player.acked[s as usize].max(applied);
                player.streams[s as usize] = Some((
                    Stream {
                        to_shard: Vec::new(),
                        ack: None,
                        epoch,
                    },
                    applied,
                ));
            }
            Action::Send(p, s) => {
                let su = s as usize;
                let first = st.first;
                let last_index = st.last;
                let (stream, pos) = st.players[p as usize].streams[su].as_mut()?;
                let index = next_for(*pos, last_index, su)?;
                if index < first {
                    return None; // reading below retention: the player stops
                }
                stream
                    .to_shard
                    .push((stream.epoch, index, prev_for(index, su)));
                *pos = index;
            }
            Action::Receive(p, s) => {
                let su = s as usize;
                let (stream, _) = st.players[p as usize].streams[su].as_mut()?;
                let msg = stream.to_shard.remove(0);
                let ok = self.receive(&mut st.shards[su], msg);
                if ok {
                    let applied = st.shards[su].applied;
                    if let Some((stream, _)) = st.players[p as usize].streams[su].as_mut() {
                        stream.ack = Some(applied);
                    }
                } else {
                    // Refused: the stream closes; a fenced replica steps down.
                    let fenced = msg.0 < st.shards[su].highest;
                    let player = &mut st.players[p as usize];
                    player.streams[su] = None;
                    if fenced {
                        player.leads = None;
                        player.streams = [None, None];
                    }
                }
            }
            Action::Ack(p, s) => {
                let su = s as usize;
                let player = &mut st.players[p as usize];
                let (stream, _) = player.streams[su].as_mut()?;
                let a = stream.ack.take()?;
                player.acked[su] = player.acked[su].max(a);
            }
            Action::Break(p, s) => {
                st.breaks += 1;
                st.players[p as usize].streams[s as usize] = None;
            }
            Action::Checkpoint(p) => {
                let acked = st.players[p as usize].acked;
                for (cursor, a) in st.cursors.iter_mut().zip(acked) {
                    *cursor = (*cursor).max(a);
                }
            }
            Action::Retain => st.first = self.lowest(&st) + 1,
            Action::CrashPlayer(p) => {
                st.crashes += 1;
                st.players[p as usize] = Player {
                    leads: None,
                    streams: [None, None],
                    acked: [0; SHARDS],
                };
                if st.holder == Some(p) {
                    st.holder = None; // released on restart, or expired
                }
            }
            Action::CrashShard(s) => {
                st.crashes += 1;
                let su = s as usize;
                for p in &mut st.players {
                    p.streams[su] = None;
                }
                let shard = &mut st.shards[su];
                if shard.half {
                    // The second commit never happened: the applied index is the one before.
                    let before = shard.seq.len().saturating_sub(1);
                    shard.applied = if before == 0 {
                        0
                    } else {
                        shard.seq[before - 1]
                    };
                }
                shard.half = false;
            }
        }
        Some(st)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("exactly once, in order", |_, st: &State| {
                (0..SHARDS).all(|s| {
                    let want = expected(st.last, s);
                    st.shards[s].seq.len() <= want.len()
                        && st.shards[s].seq[..] == want[..st.shards[s].seq.len()]
                })
            }),
            Property::always("no commit under a stale epoch", |_, st: &State| {
                st.shards.iter().all(|s| !s.stale_commit)
            }),
            Property::always("retention keeps what a shard needs", |_, st: &State| {
                (0..SHARDS).all(|s| {
                    next_for(st.shards[s].applied, st.last, s).is_none_or(|n| n >= st.first)
                })
            }),
            Property::sometimes(
                "every shard applied every entry",
                |m: &Delivery, st: &State| {
                    st.last == m.entries
                        && (0..SHARDS).all(|s| st.shards[s].seq == expected(st.last, s))
                },
            ),
        ]
    }
}

impl Delivery {
    /// The lowest cursor (the retention bound), or with the mutation the second lowest.
    fn lowest(&self, st: &State) -> u8 {
        let mut c = st.cursors;
        c.sort_unstable();
        if self.on(Mutation::RetentionIgnoresCursor) {
            c[SHARDS - 1]
        } else {
            c[0]
        }
    }
}

fn model(mutation: Option<Mutation>) -> Delivery {
    let bound = |name: &str, default: u8| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Delivery {
        entries: bound("LOGPLAYER_MODEL_ENTRIES", 4),
        max_epoch: bound("LOGPLAYER_MODEL_EPOCHS", 2),
        crashes: bound("LOGPLAYER_MODEL_CRASHES", 1),
        breaks: bound("LOGPLAYER_MODEL_BREAKS", 1),
        mutation,
    }
}

#[test]
fn the_protocol_holds_every_property_in_every_state() {
    let started = std::time::Instant::now();
    let checker = model(None).checker().threads(2).spawn_bfs().join();
    let (states, unique) = (checker.state_count(), checker.unique_state_count());
    for name in [
        "exactly once, in order",
        "no commit under a stale epoch",
        "retention keeps what a shard needs",
    ] {
        if let Some(path) = checker.discovery(name) {
            panic!("{name} violated:\n{path:#?}");
        }
    }
    assert!(
        checker
            .discovery("every shard applied every entry")
            .is_some(),
        "no run delivers everything: the model is stuck"
    );
    println!(
        "model: {states} states, {unique} unique, all properties hold ({:.1?})",
        started.elapsed()
    );
}

/// Requires the checker to find a counterexample to `property` with `m` on, and prints it.
fn caught(m: Mutation, property: &'static str) {
    let checker = model(Some(m))
        .checker()
        .finish_when(HasDiscoveries::AnyOf([property].into()))
        .threads(2)
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("with {m:?} on, the checker found no violation of {property}"));
    println!("{m:?} violates \"{property}\":");
    for action in path.into_actions() {
        println!("  {action:?}");
    }
}

#[test]
fn shards_ignoring_epochs_are_found() {
    caught(
        Mutation::ShardIgnoresEpochs,
        "no commit under a stale epoch",
    );
}

#[test]
fn a_split_commit_is_found() {
    caught(Mutation::SplitCommit, "exactly once, in order");
}

#[test]
fn retention_ignoring_a_cursor_is_found() {
    caught(
        Mutation::RetentionIgnoresCursor,
        "retention keeps what a shard needs",
    );
}

/// The model and the code agree: random walks of the model drive the real shard rules
/// (`ShardCore` over an in-memory store: `hello` for a connection, `apply` for a received
/// message, a reopen for a crash), and after every step each real shard's applied index and
/// highest epoch equal the model's.
#[test]
fn random_walks_of_the_model_drive_the_real_shard_rules_to_the_same_states() {
    use logplayer::shard::{HelloInfo, MemStore, ShardCore, ShardSelf};
    let m = model(None);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let open = |s: usize, store: MemStore| {
        let me = ShardSelf {
            id: format!("s{s}"),
            addr: "model".into(),
            max_entry_bytes: 1 << 20,
        };
        ShardCore::open(store, me).expect("an in-memory shard opens")
    };
    let mut steps = 0;
    for _walk in 0..400 {
        let mut st = m.init_states().remove(0);
        let mut cores: Vec<ShardCore<MemStore>> =
            (0..SHARDS).map(|s| open(s, MemStore::default())).collect();
        for _ in 0..60 {
            let mut actions = Vec::new();
            m.actions(&st, &mut actions);
            if actions.is_empty() {
                break;
            }
            let action = actions[(next() % actions.len() as u64) as usize].clone();
            match &action {
                Action::Connect(p, s) => {
                    if let Some(epoch) = st.players[*p as usize].leads {
                        let hello = HelloInfo {
                            epoch: u64::from(epoch),
                            log_id: "model".into(),
                            shard_id: String::new(),
                            max_entry_bytes: 0,
                        };
                        let _ = cores[*s as usize].hello(&hello);
                    }
                }
                Action::Receive(p, s) => {
                    if let Some((stream, _)) = &st.players[*p as usize].streams[*s as usize] {
                        let (epoch, index, prev) = stream.to_shard[0];
                        let entry = logplayer::proto::ShardEntry {
                            index: u64::from(index),
                            prev_index: u64::from(prev),
                            ..Default::default()
                        };
                        let _ = cores[*s as usize].apply(u64::from(epoch), &[entry]);
                    }
                }
                Action::CrashShard(s) => {
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
    println!("model and code agree over {steps} steps of 400 random walks");
}
