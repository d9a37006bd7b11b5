//! The player's queues and streams as a Stateright model: the log, the lease, player replicas
//! with their main stream and the paper's per-target queues (N / RF / FC / S, terms,
//! recovery readers, overflow into recovery), idle watermarks, delivery streams that are
//! ordered and breakable, shards, cursors and retention, and crashes, within bounds.
//!
//! It checks what `fencing.rs` assumes of each stream: it carries the shard's entries after
//! the Welcome's applied index, once each, in order. With the default bound of one lease
//! epoch per player life, no replica is ever paused here (that is `fencing.rs`'s subject);
//! with `LOGPLAYER_MODEL_EPOCHS=2` a replica whose lease was taken over keeps sending from
//! its queues.
//!
//! Each rule mirrors one function of the code (the table in `ARCHITECTURE.md`, "The model and
//! the code"): `Queue` is `player::queue::TargetQueue` transition for transition (the random
//! walks in `walks.rs` check that), `Delivery::receive` is `shard::ShardCore::apply`.

use stateright::{Model, Property};

/// Which entries of the log touch which shard: entry `i` (1-based) touches the shards of
/// `TOUCHES[i - 1]` (a bit set).
pub const TOUCHES: [u8; 6] = [0b01, 0b11, 0b01, 0b10, 0b01, 0b11];
pub const SHARDS: usize = 2;
pub const PLAYERS: usize = 2;
/// The normal queue holds this many entries; one more overflows it into a recovery.
pub const NORMAL_CAP: usize = 2;
/// Every this many dispatched entries, idle shards get a watermark.
pub const WATERMARK_EVERY: u8 = 2;
/// Recovery readers alive per target (a bound of the model, not of the code).
const READERS: usize = 2;
/// Messages in flight per stream (a bound of the model; gRPC's window in the code).
const IN_FLIGHT: usize = 2;
/// Queue terms the search goes up to. The correct protocol stays below it at the default
/// bounds (the property "terms stay below the search bound" says so); a mutated one may
/// reconnect forever (each refusal is a new term), and this keeps its search finite.
pub const MAX_TERM: u8 = 6;

/// A rule broken on purpose (one per switch of `src/mutations.rs` the model can express).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    ShardIgnoresEpochs,
    ShardAcceptsGaps,
    SplitCommit,
    QueueIgnoresTerms,
    RetentionIgnoresCursor,
}

#[derive(Clone)]
pub struct Delivery {
    pub entries: u8,
    pub max_epoch: u8,
    pub crashes: u8,
    pub breaks: u8,
    pub mutations: Vec<Mutation>,
}

/// An entry (or a watermark: an index with no data) for one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Item {
    pub index: u8,
    pub prev: u8,
    pub wm: bool,
}

/// The paper's four queue states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Q {
    N,
    RF,
    FC,
    S,
}

/// A recovery the queue asks for: read `(pos, to]` with `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reader {
    pub term: u8,
    /// The last index read (the next read starts after it).
    pub pos: u8,
    pub to: u8,
    /// The last entry pushed (the previous index of the next one).
    pub prev: u8,
}

/// One target's queue: `TargetQueue` with entries counted instead of bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Queue {
    pub q: Q,
    pub term: u8,
    pub normal: Vec<Item>,
    pub catchup: Vec<Item>,
    pub recovery_to: u8,
    pub last_taken: u8,
    pub last_ack: u8,
}

/// What a push did (`queue::Push`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    Dropped,
    /// An expired term, or not recovering: the reader stops (`DroppedStale`).
    Stale,
    Overflow(Reader),
}

/// One step of a recovery reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStep {
    Entry(Item),
    /// The range is read: the closing watermark (if any), then `read_done`.
    End(Option<Item>),
}

/// What a reader does after its range (`queue::ReadDone`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    Complete,
    Continue { from: u8, to: u8 },
    Stale,
}

impl Queue {
    pub fn new() -> Queue {
        Queue {
            q: Q::S,
            term: 0,
            normal: Vec::new(),
            catchup: Vec::new(),
            recovery_to: 0,
            last_taken: 0,
            last_ack: 0,
        }
    }

    pub fn suspend(&mut self) {
        self.q = Q::S;
        self.normal.clear();
        self.catchup.clear();
    }

    pub fn resume(&mut self, applied: u8, current: u8) -> Option<Reader> {
        self.suspend();
        self.term += 1;
        self.last_ack = applied;
        self.last_taken = applied;
        if applied < current {
            self.q = Q::RF;
            self.recovery_to = current;
            Some(self.reader(applied + 1, current))
        } else {
            self.q = Q::N;
            None
        }
    }

    fn reader(&self, from: u8, to: u8) -> Reader {
        Reader {
            term: self.term,
            pos: from - 1,
            to,
            prev: from - 1,
        }
    }

    fn start_recovery(&mut self, from: u8, to: u8) -> Reader {
        self.term += 1;
        self.q = Q::RF;
        self.recovery_to = to;
        self.reader(from, to)
    }

    pub fn push_normal(&mut self, item: Item) -> Push {
        if self.q == Q::S || item.index <= self.last_ack {
            return Push::Dropped;
        }
        let recovering = matches!(self.q, Q::RF | Q::FC);
        if recovering && item.index <= self.recovery_to {
            return Push::Dropped;
        }
        if self.normal.len() >= NORMAL_CAP {
            self.normal.clear();
            return match self.q {
                Q::RF => {
                    self.recovery_to = item.index;
                    Push::Dropped
                }
                Q::FC => Push::Overflow(self.start_recovery(self.recovery_to + 1, item.index)),
                _ => Push::Overflow(self.start_recovery(self.last_taken + 1, item.index)),
            };
        }
        self.normal.push(item);
        Push::Queued
    }

    pub fn push_catchup(&mut self, term: u8, item: Item, ignore_terms: bool) -> Push {
        if (term != self.term && !ignore_terms) || self.q != Q::RF {
            return Push::Stale;
        }
        if item.index <= self.last_ack {
            return Push::Dropped;
        }
        self.catchup.push(item);
        Push::Queued
    }

    pub fn read_done(&mut self, term: u8, read_to: u8) -> Done {
        if term != self.term || self.q != Q::RF {
            return Done::Stale;
        }
        if self.recovery_to > read_to {
            return Done::Continue {
                from: read_to + 1,
                to: self.recovery_to,
            };
        }
        self.q = if self.catchup.is_empty() { Q::N } else { Q::FC };
        Done::Complete
    }

    /// `next_batch(1, ..)`.
    pub fn take(&mut self) -> Option<Item> {
        let catchup = match self.q {
            Q::S => return None,
            Q::RF => true,
            Q::FC if self.catchup.is_empty() => {
                self.q = Q::N;
                false
            }
            Q::FC => true,
            Q::N => false,
        };
        let queue = if catchup {
            &mut self.catchup
        } else {
            &mut self.normal
        };
        let item = (!queue.is_empty()).then(|| queue.remove(0));
        if let Some(i) = item {
            self.last_taken = i.index;
        }
        if self.q == Q::FC && self.catchup.is_empty() {
            self.q = Q::N;
        }
        item
    }

    /// Whether `take` would return an item.
    fn has_next(&self) -> bool {
        match self.q {
            Q::S => false,
            Q::RF => !self.catchup.is_empty(),
            Q::FC => !self.catchup.is_empty() || !self.normal.is_empty(),
            Q::N => !self.normal.is_empty(),
        }
    }

    pub fn on_ack(&mut self, applied: u8) {
        self.last_ack = self.last_ack.max(applied);
    }
}

/// A message on a delivery stream: the sender's epoch and the item.
pub type Msg = (u8, Item);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stream {
    /// Player -> shard, in order.
    pub to_shard: Vec<Msg>,
    /// The latest cumulative ack, shard -> player.
    pub ack: Option<u8>,
    /// The epoch the stream was opened with.
    pub epoch: u8,
}

/// A player's view of one shard: its queue, recovery readers and stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub queue: Queue,
    pub readers: Vec<Reader>,
    pub stream: Option<Stream>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Player {
    /// The epoch this replica believes it leads with (it may be stale: a paused leader).
    pub leads: Option<u8>,
    /// The main stream: the last index dispatched, and per shard the last real one.
    pub dispatched: u8,
    pub last_real: [u8; SHARDS],
    pub since_watermark: u8,
    pub targets: [Target; SHARDS],
}

impl Player {
    fn idle() -> Player {
        let target = Target {
            queue: Queue::new(),
            readers: Vec::new(),
            stream: None,
        };
        Player {
            leads: None,
            dispatched: 0,
            last_real: [0; SHARDS],
            since_watermark: 0,
            targets: [target.clone(), target],
        }
    }
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
    /// A current sender's stream carried a duplicate or skipped an entry.
    pub bad_stream: bool,
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
    /// Player p acquires the lease: free, or (a fault) taken over from a holder that may be
    /// paused and still believe it leads.
    Acquire(u8),
    /// Player p's main stream dispatches the next entry into its target queues.
    Dispatch(u8),
    /// Player p opens a stream to shard s (Hello with its epoch; Welcome with applied).
    Connect(u8, u8),
    /// Reader r of player p's target s reads its next entry (or finishes its range).
    Read(u8, u8, u8),
    /// Player p's sender takes the next item of target s's queue onto the stream.
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

impl Action {
    /// Faults: what "faults stopped" stops.
    pub fn is_fault(&self, st: &State) -> bool {
        match self {
            Action::Break(..) | Action::CrashPlayer(_) | Action::CrashShard(_) => true,
            Action::Acquire(_) => st.holder.is_some(),
            _ => false,
        }
    }
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

impl Delivery {
    pub fn on(&self, m: Mutation) -> bool {
        self.mutations.contains(&m)
    }

    /// A shard takes one message (`ShardCore::apply`); `false` refuses it (the stream
    /// closes).
    pub fn receive(&self, shard: &mut Shard, (epoch, item): Msg) -> bool {
        if epoch < shard.highest {
            if !self.on(Mutation::ShardIgnoresEpochs) {
                return false;
            }
            shard.stale_commit = true;
        }
        let current = epoch >= shard.highest;
        if item.index <= shard.applied {
            shard.bad_stream |= current;
            return true; // already applied: skipped
        }
        if item.prev > shard.applied {
            shard.bad_stream |= current;
            if !self.on(Mutation::ShardAcceptsGaps) {
                return false;
            }
        }
        if !item.wm {
            shard.seq.push(item.index);
        }
        if self.on(Mutation::SplitCommit) {
            // The data is committed; the applied index follows in a second commit, which
            // a crash may prevent (`CrashShard` then keeps `half`).
            shard.half = true;
        }
        shard.applied = item.index;
        true
    }

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

    /// Every shard applied every entry the log will ever hold.
    pub fn delivered(&self, st: &State) -> bool {
        st.last == self.entries && (0..SHARDS).all(|s| st.shards[s].seq == expected(st.last, s))
    }

    fn target_actions(&self, st: &State, p: u8, s: u8, actions: &mut Vec<Action>) {
        let player = &st.players[p as usize];
        let t = &player.targets[s as usize];
        if st.holder == Some(p) {
            for r in 0..t.readers.len() {
                actions.push(Action::Read(p, s, r as u8));
            }
        }
        let Some(stream) = &t.stream else {
            if player.leads.is_some() {
                actions.push(Action::Connect(p, s));
            }
            return;
        };
        if t.queue.has_next() && stream.to_shard.len() < IN_FLIGHT {
            actions.push(Action::Send(p, s));
        }
        if !stream.to_shard.is_empty() {
            actions.push(Action::Receive(p, s));
        }
        if stream.ack.is_some() {
            actions.push(Action::Ack(p, s));
        }
        if st.breaks < self.breaks {
            actions.push(Action::Break(p, s));
        }
    }
}

impl Model for Delivery {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let shard = Shard {
            applied: 0,
            highest: 0,
            seq: Vec::new(),
            half: false,
            stale_commit: false,
            bad_stream: false,
        };
        vec![State {
            last: 0,
            first: 1,
            epoch: 0,
            holder: None,
            players: [Player::idle(), Player::idle()],
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
        for (pi, p) in st.players.iter().enumerate() {
            let pu = pi as u8;
            let free = st.holder.is_none();
            if st.holder != Some(pu) && (free || st.epoch < self.max_epoch) {
                actions.push(Action::Acquire(pu));
            }
            // A replica whose lease was taken over is paused: it still believes it leads
            // and its streams and queues live on (it connects and sends), but its main
            // stream and readers make no progress (a bound of the model: what they would
            // add is more of the same stale-epoch messages).
            let current = p.leads.is_some() && st.holder == Some(pu);
            if current {
                if p.dispatched < st.last {
                    actions.push(Action::Dispatch(pu));
                }
                let acked = p.targets.each_ref().map(|t| t.queue.last_ack);
                if acked.iter().zip(st.cursors).any(|(a, c)| *a > c) {
                    actions.push(Action::Checkpoint(pu));
                }
            }
            for s in 0..SHARDS as u8 {
                self.target_actions(st, pu, s, actions);
            }
            if st.crashes < self.crashes && *p != Player::idle() {
                actions.push(Action::CrashPlayer(pu));
            }
        }
        if self.lowest(st) + 1 > st.first {
            actions.push(Action::Retain);
        }
        if st.crashes < self.crashes {
            for s in 0..SHARDS as u8 {
                actions.push(Action::CrashShard(s));
            }
        }
    }

    fn within_boundary(&self, st: &State) -> bool {
        st.players
            .iter()
            .all(|p| p.targets.iter().all(|t| t.queue.term <= MAX_TERM))
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut st = last.clone();
        match action {
            Action::Append => st.last += 1,
            Action::Acquire(p) => self.acquire(&mut st, p),
            Action::Dispatch(p) => self.dispatch(&mut st, p)?,
            Action::Connect(p, s) => self.connect(&mut st, p, s as usize)?,
            Action::Read(p, s, r) => self.read(&mut st, p, s as usize, r as usize)?,
            Action::Send(p, s) => {
                let t = &mut st.players[p as usize].targets[s as usize];
                let item = t.queue.take()?;
                let stream = t.stream.as_mut()?;
                stream.to_shard.push((stream.epoch, item));
            }
            Action::Receive(p, s) => self.deliver(&mut st, p, s as usize)?,
            Action::Ack(p, s) => {
                let t = &mut st.players[p as usize].targets[s as usize];
                let a = t.stream.as_mut()?.ack.take()?;
                t.queue.on_ack(a);
            }
            Action::Break(p, s) => {
                st.breaks += 1;
                let t = &mut st.players[p as usize].targets[s as usize];
                t.stream = None;
                t.queue.suspend();
            }
            Action::Checkpoint(p) => {
                let acked = st.players[p as usize]
                    .targets
                    .each_ref()
                    .map(|t| t.queue.last_ack);
                for (cursor, a) in st.cursors.iter_mut().zip(acked) {
                    *cursor = (*cursor).max(a);
                }
            }
            Action::Retain => st.first = self.lowest(&st) + 1,
            Action::CrashPlayer(p) => {
                st.crashes += 1;
                st.players[p as usize] = Player::idle();
                if st.holder == Some(p) {
                    st.holder = None; // released on restart, or expired
                }
            }
            Action::CrashShard(s) => self.crash_shard(&mut st, s as usize),
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
            Property::always(
                "a stream carries each entry once, in order",
                |_, st: &State| st.shards.iter().all(|s| !s.bad_stream),
            ),
            Property::always("terms stay below the search bound", |_, st: &State| {
                st.players
                    .iter()
                    .all(|p| p.targets.iter().all(|t| t.queue.term < MAX_TERM))
            }),
            Property::sometimes(
                "every shard applied every entry",
                |m: &Delivery, st: &State| m.delivered(st),
            ),
        ]
    }
}

impl Delivery {
    fn acquire(&self, st: &mut State, p: u8) {
        st.epoch += 1;
        st.holder = Some(p);
        // A new leader starts afresh (`Player::start`): its main stream begins after the
        // lowest applied index the shards report. The old holder is not told: it may be
        // paused and still believe it leads.
        let start = st.shards.iter().map(|s| s.applied).min().unwrap_or(0);
        let mut player = Player::idle();
        player.leads = Some(st.epoch);
        player.dispatched = start;
        player.last_real = [start; SHARDS];
        st.players[p as usize] = player;
    }

    /// What `Shared::dispatch` pushes for the next entry: the entry into each touched
    /// target's normal queue, then watermarks for idle targets that are behind.
    pub fn dispatch_items(&self, player: &Player) -> Vec<(usize, Item)> {
        let index = player.dispatched + 1;
        let mut last_real = player.last_real;
        let mut pushes = Vec::new();
        for (s, last) in last_real.iter_mut().enumerate() {
            if touches(index, s) {
                let item = Item {
                    index,
                    prev: *last,
                    wm: false,
                };
                *last = index;
                pushes.push((s, item));
            }
        }
        if player.since_watermark + 1 >= WATERMARK_EVERY {
            for (s, last) in last_real.iter().enumerate() {
                let behind =
                    player.targets[s].queue.last_ack < index.saturating_sub(WATERMARK_EVERY);
                if behind && *last != index {
                    let item = Item {
                        index,
                        prev: *last,
                        wm: true,
                    };
                    pushes.push((s, item));
                }
            }
        }
        pushes
    }

    fn dispatch(&self, st: &mut State, p: u8) -> Option<()> {
        let index = st.players[p as usize].dispatched + 1;
        if index < st.first {
            return None; // reading below retention: the player stops
        }
        let pushes = self.dispatch_items(&st.players[p as usize]);
        let player = &mut st.players[p as usize];
        player.dispatched = index;
        player.since_watermark = (player.since_watermark + 1) % WATERMARK_EVERY;
        for (s, item) in pushes {
            if !item.wm {
                player.last_real[s] = index;
            }
            let t = &mut player.targets[s];
            if let Push::Overflow(reader) = t.queue.push_normal(item) {
                if t.readers.len() >= READERS {
                    return None; // bound: wait for a reader to finish
                }
                t.readers.push(reader);
            }
        }
        Some(())
    }

    fn connect(&self, st: &mut State, p: u8, s: usize) -> Option<()> {
        let epoch = st.players[p as usize].leads?;
        let shard = &mut st.shards[s];
        if epoch < shard.highest && !self.on(Mutation::ShardIgnoresEpochs) {
            self.step_down(st, p);
            return Some(());
        }
        shard.highest = shard.highest.max(epoch);
        let applied = shard.applied;
        let player = &mut st.players[p as usize];
        let dispatched = player.dispatched;
        let t = &mut player.targets[s];
        if let Some(reader) = t.queue.resume(applied, dispatched) {
            if t.readers.len() >= READERS {
                return None; // bound: wait for a reader to finish
            }
            t.readers.push(reader);
        }
        t.stream = Some(Stream {
            to_shard: Vec::new(),
            ack: None,
            epoch,
        });
        Some(())
    }

    /// What reader `r` of `t` does next (`Shared::recover`): push one entry of its range, or
    /// end the range (a watermark at `to` if the range's last entry is below it, then
    /// `read_done`). `None`: the log no longer holds the entry (the player stops).
    pub fn read_step(&self, st: &State, t: &Target, s: usize, r: usize) -> Option<ReadStep> {
        let reader = *t.readers.get(r)?;
        match (reader.pos + 1..=reader.to).find(|&i| touches(i, s)) {
            Some(index) if index < st.first => None,
            Some(index) => Some(ReadStep::Entry(Item {
                index,
                prev: reader.prev,
                wm: false,
            })),
            None => Some(ReadStep::End((reader.prev < reader.to).then_some(Item {
                index: reader.to,
                prev: reader.prev,
                wm: true,
            }))),
        }
    }

    fn read(&self, st: &mut State, p: u8, s: usize, r: usize) -> Option<()> {
        let step = self.read_step(st, &st.players[p as usize].targets[s], s, r)?;
        let ignore_terms = self.on(Mutation::QueueIgnoresTerms);
        let t = &mut st.players[p as usize].targets[s];
        let term = t.readers[r].term;
        match step {
            ReadStep::Entry(item) => {
                if t.queue.push_catchup(term, item, ignore_terms) == Push::Stale {
                    t.readers.remove(r); // stale: the reader stops
                } else {
                    t.readers[r].pos = item.index;
                    t.readers[r].prev = item.index;
                }
            }
            ReadStep::End(wm) => {
                if let Some(wm) = wm {
                    t.queue.push_catchup(term, wm, ignore_terms);
                }
                match t.queue.read_done(term, t.readers[r].to) {
                    Done::Continue { from, to } => {
                        t.readers[r].pos = from - 1;
                        t.readers[r].to = to;
                    }
                    Done::Complete | Done::Stale => {
                        t.readers.remove(r);
                    }
                }
            }
        }
        Some(())
    }

    /// The shard takes the first message of p's stream: applied and acked, or refused (the
    /// stream closes; a fenced replica steps down).
    fn deliver(&self, st: &mut State, p: u8, s: usize) -> Option<()> {
        let t = &mut st.players[p as usize].targets[s];
        let stream = t.stream.as_mut()?;
        let msg = stream.to_shard.remove(0);
        if self.receive(&mut st.shards[s], msg) {
            let applied = st.shards[s].applied;
            if let Some(stream) = st.players[p as usize].targets[s].stream.as_mut() {
                stream.ack = Some(applied);
            }
        } else if msg.0 < st.shards[s].highest {
            self.step_down(st, p);
        } else {
            let t = &mut st.players[p as usize].targets[s];
            t.stream = None;
            t.queue.suspend();
        }
        Some(())
    }

    /// A fenced replica steps down: it stops leading and releases the lease if it held it.
    fn step_down(&self, st: &mut State, p: u8) {
        st.players[p as usize] = Player::idle();
        if st.holder == Some(p) {
            st.holder = None;
        }
    }

    fn crash_shard(&self, st: &mut State, s: usize) {
        st.crashes += 1;
        for p in &mut st.players {
            p.targets[s].stream = None;
            p.targets[s].queue.suspend();
        }
        let shard = &mut st.shards[s];
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
