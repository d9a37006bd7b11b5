//! The players' Lease against what the shards acknowledged: a Lease deleted or reset by
//! hand counts again from below, and the status says how far to raise it.

use super::*;

/// A shard that acknowledged an epoch above the Lease's: the Lease was deleted or reset,
/// and every player it elects is fenced. Said, with the epoch to raise it to; an
/// acknowledged epoch at or below the Lease's is the normal case.
#[test]
fn a_lease_counting_below_an_acknowledged_epoch_is_said_with_the_epoch_to_raise_it_to() {
    let behind = healthy_with(|o| {
        o.shards[1].acked_epoch = Some(41);
        o.shards[2].acked_epoch = Some(4);
    });
    let st = logplayer_status(&behind, &LogPlayerStatus::default(), now());
    let p = st
        .problems
        .iter()
        .find(|p| p.reason == "LeaseEpochBehind")
        .expect("LeaseEpochBehind");
    assert!(
        p.message
            .contains("at epoch 4 but Shard s1 acknowledged epoch 41")
            && p.message.contains("spec.leaseTransitions to 42"),
        "{}",
        p.message
    );
    let fine = healthy_with(|o| o.shards[1].acked_epoch = Some(4));
    let st = logplayer_status(&fine, &LogPlayerStatus::default(), now());
    assert!(st.problems.iter().all(|p| p.reason != "LeaseEpochBehind"));
}
