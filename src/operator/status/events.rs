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
    out
}
