//! Liveness over the model's whole state graph: from every reachable state (faults
//! included), once faults stop, every schedule of the remaining actions ends in a state where
//! every shard holds every entry.
//!
//! Stateright's `eventually` is checked only at terminal states of its search and may miss
//! a violation where paths join (its own FIXME), so this explores the graph itself: it keeps
//! each state's fault-free successors, then requires (1) that no fault-free terminal state
//! misses an entry and (2) that the fault-free graph has no cycle outside the delivered
//! states (no livelock), which together mean every fault-free path reaches delivery whatever
//! the scheduler does. Stuttering steps (an action that leaves the state as it was) are not
//! progress and not a cycle.

use std::collections::{HashMap, VecDeque};

use stateright::Model;

use super::queues::{Action, Delivery, State};

/// Checks liveness; `Ok(states explored)`, or the path to a state from which some
/// fault-free schedule never delivers everything.
pub fn check(m: &Delivery) -> Result<usize, String> {
    let mut ids: HashMap<State, u32> = HashMap::new();
    let mut states: Vec<State> = Vec::new();
    // How each state was first reached: its parent and the action.
    let mut parent: Vec<Option<(u32, Action)>> = Vec::new();
    let mut fault_free: Vec<Vec<u32>> = Vec::new();
    let mut pending = VecDeque::new();
    for init in m.init_states() {
        ids.insert(init.clone(), 0);
        states.push(init);
        parent.push(None);
        fault_free.push(Vec::new());
        pending.push_back(0u32);
    }
    let mut actions = Vec::new();
    while let Some(id) = pending.pop_front() {
        let st = states[id as usize].clone();
        m.actions(&st, &mut actions);
        let mut next_ids = Vec::new();
        for action in actions.drain(..) {
            let fault = action.is_fault(&st);
            let Some(next) = m.next_state(&st, action.clone()) else {
                continue;
            };
            if next == st || !m.within_boundary(&next) {
                continue; // stuttering, or beyond the search bound
            }
            let nid = match ids.get(&next) {
                Some(&n) => n,
                None => {
                    let n = states.len() as u32;
                    ids.insert(next.clone(), n);
                    states.push(next);
                    parent.push(Some((id, action)));
                    fault_free.push(Vec::new());
                    pending.push_back(n);
                    n
                }
            };
            if !fault {
                next_ids.push(nid);
            }
        }
        fault_free[id as usize] = next_ids;
    }
    drop(ids);
    let delivered: Vec<bool> = states.iter().map(|s| m.delivered(s)).collect();
    let trace = |id: u32, why: &str| {
        let mut path = Vec::new();
        let mut at = id;
        while let Some((p, a)) = &parent[at as usize] {
            path.push(format!("  {a:?}"));
            at = *p;
        }
        path.reverse();
        format!(
            "liveness violated: {why}\npath (faults included) to the state:\n{}\nstate: {:#?}",
            path.join("\n"),
            states[id as usize]
        )
    };
    for (id, next) in fault_free.iter().enumerate() {
        if !delivered[id] && next.is_empty() {
            return Err(trace(
                id as u32,
                "with faults stopped, nothing can happen, and some shard misses an entry",
            ));
        }
    }
    // Peel the undelivered states whose fault-free successors all reach delivery; what is
    // left lies on, or only leads to, a cycle of undelivered states.
    let n = states.len();
    let mut remaining: Vec<usize> = vec![0; n];
    let mut preds: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (id, next) in fault_free.iter().enumerate() {
        if delivered[id] {
            continue;
        }
        for &nid in next {
            if !delivered[nid as usize] {
                remaining[id] += 1;
                preds[nid as usize].push(id as u32);
            }
        }
    }
    let mut done: Vec<bool> = delivered.clone();
    let mut ready: Vec<u32> = (0..n as u32)
        .filter(|&i| !delivered[i as usize] && remaining[i as usize] == 0)
        .collect();
    while let Some(id) = ready.pop() {
        done[id as usize] = true;
        for &p in &preds[id as usize] {
            remaining[p as usize] -= 1;
            if remaining[p as usize] == 0 {
                ready.push(p);
            }
        }
    }
    if let Some(stuck) = done.iter().position(|d| !d) {
        return Err(trace(
            stuck as u32,
            "with faults stopped, a schedule can cycle forever without delivering every entry",
        ));
    }
    Ok(n)
}
