//! `EntryLimitMismatch`: entry limits of the LogStore, the players and the shards that
//! cannot work together.

use super::*;

#[test]
fn entry_limits_that_cannot_work_together_degrade_naming_each() {
    // The log accepts more than the players take: they refuse to start on it.
    let s = status(&healthy_with(|o| {
        o.log_max_entry_bytes = Some(LIMIT * 2);
        for s in &mut o.shards {
            s.max_entry_bytes = Some(LIMIT * 2);
        }
    }));
    let big = format!(
        "the LogStore accepts entries of up to {} bytes, more than spec.maxEntryBytes {LIMIT}: \
         the players refuse to read it; set spec.maxEntryBytes to {}",
        LIMIT * 2,
        LIMIT * 2
    );
    assert_degraded_unready(&s.conditions, "EntryLimitMismatch", &big, &big);
    // Shards that take less than the log accepts refuse every delivery, named in order.
    let s = status(&healthy_with(|o| {
        o.shards[0].max_entry_bytes = Some(LIMIT - 1);
        o.shards[2].max_entry_bytes = Some(1024);
    }));
    assert_degraded(
        &s.conditions,
        "EntryLimitMismatch",
        &format!(
            "shard s0 takes entries of up to {} bytes, shard s2 takes entries of up to 1024 \
             bytes, less than the LogStore's {LIMIT}: such a shard refuses every delivery; \
             raise its --max-entry-bytes to that (a managed shard takes spec.maxEntryBytes \
             when its pod is made again)",
            LIMIT - 1
        ),
    );
    // Fine: a log taking less than the players and a shard more; a server that did not
    // say its limit (an older version); a shard while the log's limit is not known.
    for fine in [
        healthy_with(|o| o.log_max_entry_bytes = Some(LIMIT / 2)),
        healthy_with(|o| {
            o.log_max_entry_bytes = Some(LIMIT / 2);
            o.shards[1].max_entry_bytes = Some(LIMIT / 2);
        }),
        healthy_with(|o| o.shards[1].max_entry_bytes = Some(LIMIT * 2)),
        healthy_with(|o| {
            o.log_max_entry_bytes = None;
            o.shards[1].max_entry_bytes = None;
        }),
        healthy_with(|o| {
            o.log_max_entry_bytes = None;
            o.shards[1].max_entry_bytes = Some(1024);
        }),
    ] {
        assert_eq!(
            get(&status(&fine).conditions, condition::DEGRADED).status,
            "False",
            "{fine:?}"
        );
    }
}

#[test]
fn a_shard_taking_smaller_entries_than_its_log_is_not_ready() {
    let s = first_shard_status(&shard_obs_with(|o| {
        o.entry_limits = (Some(1024), Some(LIMIT))
    }));
    let why = format!(
        "this shard takes entries of up to 1024 bytes, less than its LogStore's {LIMIT}: it \
         refuses every delivery; raise its --max-entry-bytes to {LIMIT} (a managed shard \
         takes its LogPlayer's spec.maxEntryBytes when its pod is made again)"
    );
    assert_degraded_unready(&s.conditions, "EntryLimitMismatch", &why, &why);
    assert_eq!(s.ready, Some(false));
    // Equal or larger, or either not known: serving.
    for limits in [
        (Some(LIMIT), Some(LIMIT)),
        (Some(LIMIT * 2), Some(LIMIT)),
        (None, Some(LIMIT)),
        (Some(1024), None),
    ] {
        let s = first_shard_status(&shard_obs_with(|o| o.entry_limits = limits));
        assert_eq!(
            get(&s.conditions, condition::READY).reason,
            "Serving",
            "{limits:?}"
        );
    }
}
