//! Leases and fencing as a Stateright model: the log with retention below the lowest cursor,
//! player replicas under a lease (a new holder gets the epoch + 1; the old one may be paused
//! and still believe it leads, and keeps sending), shards with a durable applied index, data
//! and highest epoch, delivery streams that are ordered and can break at any point (what is
//! in flight is lost), acknowledgements, checkpointed cursors, and crashes, within bounds.
//!
//! Each player's per-shard sending is abstracted: on every (re)connection it resumes after
//! the shard's applied index and sends the shard's entries in order, once each. That is the
//! guarantee the queue model (`protocol.rs`) checks as "a stream carries each entry once, in
//! order", so the two models compose: this one checks what several players, epochs,
//! retention and crashes do on top of a correct stream, that one checks the stream.

use stateright::{Model, Property};

use super::queues::Mutation;

/// Which entries of the log touch which shard: entry `i` (1-based) touches the shards of
/// `TOUCHES[i - 1]` (a bit set).
const TOUCHES: [u8; 4] = [0b01, 0b10, 0b11, 0b01];
pub const SHARDS: usize = 2;
const PLAYERS: usize = 2;

#[derive(Clone)]
pub struct Fencing {
    pub entries: u8,
    pub max_epoch: u8,
    pub crashes: u8,
    pub breaks: u8,
    pub mutation: Option<Mutation>,
}

/// A message on a delivery stream: (epoch of the sender, index, previous index that
/// touched this shard).
pub type Msg = (u8, u8, u8);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stream {
    /// Player -> shard, in order.
    pub to_shard: Vec<Msg>,
    /// The latest cumulative ack, shard -> player.
    pub ack: Option<u8>,
    /// The epoch the stream was opened with.
    pub epoch: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Player {
    /// The epoch this replica believes it leads with (it may be stale: a paused leader).
    pub leads: Option<u8>,
    /// Per shard: the open stream, and the last index sent on it.
    pub streams: [Option<(Stream, u8)>; SHARDS],
    /// Per shard: the highest ack received.
    pub acked: [u8; SHARDS],
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    /// Durable: the applied index, the highest epoch seen, and the entries applied in order.
    pub applied: u8,
    pub highest: u8,
    pub seq: Vec<u8>,
    /// A commit cut in half by a crash (the split-commit mutation): data applied, index not.
    pub half: bool,
    /// Something was applied under an epoch below the highest seen.
    pub stale_commit: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Entries appended so far (dense from 1) and the first one retention kept.
    pub last: u8,
    pub first: u8,
    /// The lease: its epoch and holder.
    pub epoch: u8,
    pub holder: Option<u8>,
    pub players: [Player; PLAYERS],
    pub shards: [Shard; SHARDS],
    /// Saved cursors (merged, never backwards).
    pub cursors: [u8; SHARDS],
    pub crashes: u8,
    pub breaks: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
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

pub fn touches(index: u8, s: usize) -> bool {
    index >= 1 && TOUCHES[(index - 1) as usize] & (1 << s) != 0
}

/// The entries of the first `upto` that touch shard `s`, in order: what it must hold.
pub fn expected(upto: u8, s: usize) -> Vec<u8> {
    (1..=upto).filter(|&i| touches(i, s)).collect()
}

/// The next index after `pos` touching `s`, up to `last`.
pub fn next_for(pos: u8, last: u8, s: usize) -> Option<u8> {
    (pos + 1..=last).find(|&i| touches(i, s))
}

/// The previous index before `index` that touched `s` (0 when none).
pub fn prev_for(index: u8, s: usize) -> u8 {
    (1..index).rev().find(|&i| touches(i, s)).unwrap_or(0)
}

impl Fencing {
    pub fn on(&self, m: Mutation) -> bool {
        self.mutation == Some(m)
    }

    /// A shard takes one message; `None` refuses it (the stream closes).
    pub fn receive(&self, shard: &mut Shard, (epoch, index, prev): Msg) -> bool {
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

impl Model for Fencing {
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
                |m: &Fencing, st: &State| {
                    st.last == m.entries
                        && (0..SHARDS).all(|s| st.shards[s].seq == expected(st.last, s))
                },
            ),
        ]
    }
}

impl Fencing {
    /// The lowest cursor (the retention bound), or with the mutation the second lowest.
    pub fn lowest(&self, st: &State) -> u8 {
        let mut c = st.cursors;
        c.sort_unstable();
        if self.on(Mutation::RetentionIgnoresCursor) {
            c[SHARDS - 1]
        } else {
            c[0]
        }
    }
}
