//! The Events that go with a change of conditions: one per transition, warnings for
//! problems appearing, normal events for recoveries.

use crate::crd::condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// An Event to publish about a change of conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human text.
    pub note: String,
}

/// The Event's `action`: `Reconcile` and a digest of its note. kube-runtime's `Recorder`
/// folds an Event into an earlier one of the same type, action, reason and object for six
/// minutes (a `series`), keeping the earlier one's note: a second `ApplyFailed` naming
/// another field, or a new leader, would show only as a count on the old words. With the note
/// in the action, only the same words make a series.
pub fn event_action(note: &str) -> String {
    format!(
        "Reconcile/{:08x}",
        xxhash_rust::xxh3::xxh3_64(note.as_bytes()) as u32
    )
}

/// Events for what changed between two condition lists: a `Degraded` problem appearing or
/// changing, its message included (Warning, with its reason), recovering (`Recovered`), a new leader or the loss
/// of one, and `Ready` turning True.
pub fn events_for(old: &[Condition], new: &[Condition]) -> Vec<EventNote> {
    let find = |list: &[Condition], t: &str| list.iter().find(|c| c.type_ == t).cloned();
    let mut out = Vec::new();
    let degraded = (
        find(old, condition::DEGRADED),
        find(new, condition::DEGRADED),
    );
    if let (prev, Some(now)) = degraded {
        let was = prev.as_ref().is_some_and(|c| c.status == "True");
        // A changed message is new facts (another object, another field, another pod), so
        // it is a new Warning; an identical one is not repeated here (and the recorder
        // aggregates identical events into a series when a problem comes back).
        let changed = prev.as_ref().is_none_or(|p| {
            p.status != now.status || p.reason != now.reason || p.message != now.message
        });
        if now.status == "True" && changed {
            out.push(EventNote {
                warning: true,
                reason: now.reason.clone(),
                note: now.message.clone(),
            });
        } else if now.status == "False" && was {
            out.push(EventNote {
                warning: false,
                reason: "Recovered".into(),
                note: "no longer degraded".into(),
            });
        }
    }
    if let (prev, Some(now)) = (
        find(old, condition::LEADER_ELECTED),
        find(new, condition::LEADER_ELECTED),
    ) {
        let changed = prev
            .as_ref()
            .is_none_or(|p| p.status != now.status || p.message != now.message);
        if changed {
            out.push(EventNote {
                warning: now.status != "True",
                reason: if now.status == "True" {
                    "LeaderElected".into()
                } else {
                    now.reason.clone()
                },
                note: now.message.clone(),
            });
        }
    }
    if let (prev, Some(now)) = (find(old, condition::READY), find(new, condition::READY))
        && now.status == "True"
        && prev.as_ref().is_none_or(|p| p.status != "True")
    {
        out.push(EventNote {
            warning: false,
            reason: "Ready".into(),
            note: now.message.clone(),
        });
    }
    for e in &mut out {
        cut_note(&mut e.note);
    }
    out
}

/// The longest Event note the API server takes (`events.k8s.io/v1`), in bytes: a longer one
/// is refused, and the Event is lost (a Degraded message naming several crash-looping pods
/// passes it).
pub const MAX_NOTE_BYTES: usize = 1024;

/// Cuts `note` to [`MAX_NOTE_BYTES`] (the condition keeps the whole message).
fn cut_note(note: &mut String) {
    cut_text(note, MAX_NOTE_BYTES);
}

/// Cuts `text` to at most `max` bytes at a character boundary, ending it with `…` when cut.
pub fn cut_text(text: &mut String, max: usize) {
    const MORE: &str = "…";
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(MORE.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MORE);
}

#[cfg(test)]
mod action_tests {
    use super::{MAX_NOTE_BYTES, event_action, events_for};

    /// A Degraded message longer than an Event note may be (several crash-looping pods, each
    /// with its last words) is cut to fit, at a character boundary; the API server refused
    /// the whole Event.
    #[test]
    fn a_long_message_makes_a_note_the_api_server_takes() {
        let degraded =
            |message: String| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: crate::crd::condition::DEGRADED.into(),
                status: "True".into(),
                reason: "CrashLoopBackOff".into(),
                message,
                observed_generation: Some(1),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
            };
        for message in ["é".repeat(700), "x".repeat(2000), "short".to_owned()] {
            let events = events_for(&[], &[degraded(message.clone())]);
            let note = &events[0].note;
            assert!(note.len() <= MAX_NOTE_BYTES, "{}", note.len());
            if message.len() <= MAX_NOTE_BYTES {
                assert_eq!(note, &message);
            } else {
                assert!(
                    note.ends_with('…') && note.len() > MAX_NOTE_BYTES - 8,
                    "{note}"
                );
            }
        }
    }

    #[test]
    fn only_the_same_words_share_an_action() {
        let a = event_action("pod demo-player-aaa leads with epoch 1");
        assert_eq!(a, event_action("pod demo-player-aaa leads with epoch 1"));
        assert_ne!(a, event_action("pod demo-player-bbb leads with epoch 2"));
        assert!(a.starts_with("Reconcile/") && a.len() <= 128, "{a}");
    }
}
