//! A chunk's two keys through redirects. A put writes a chunk's payload and then its
//! metadata in one command or on one connection (`cmd::put`), so a reader that finds
//! the metadata can expect the payload. A redirect (MOVED, ASK) answers each key on its
//! own; followed one by one, the small metadata could reach the new node on another
//! part, group or connection before a multi-MiB payload. So a payload redirected while
//! its metadata's reply is still due is held until that reply is read: a redirect of
//! the metadata to the same place sends both together (one forwarded part, one group,
//! payload first); any other outcome releases the payload's redirect alone. A held
//! payload stays `Pending`, so the part's deadline resolves it like any other unit.

use crate::batch::{Role, Slot};
use crate::cluster::NodeId;

use super::parts::{Group, PUnit};

/// Where a redirect sends a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Redirect {
    pub to: NodeId,
    /// After ASKING (an ASK redirect); a MOVED one otherwise.
    pub asking: bool,
}

/// A payload's redirect waiting for the reply of its chunk's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    pub payload: u32,
    pub meta: u32,
    pub redirect: Redirect,
}

/// The held payload redirects of one part (empty but during a redirect of a pair).
#[derive(Debug, Default)]
pub(super) struct HeldRedirects {
    held: Vec<Held>,
    /// Released by their metadata resolving some other way; followed alone by
    /// `Shard::follow_released` (`part`, from `maybe_complete`, which runs after every reply).
    released: Vec<Held>,
}

impl HeldRedirects {
    pub(super) fn hold(&mut self, h: Held) {
        self.held.push(h);
    }

    /// The held redirect of the payload whose metadata is `meta`, taken.
    pub(super) fn take_for_meta(&mut self, meta: u32) -> Option<Held> {
        let i = self.held.iter().position(|h| h.meta == meta)?;
        Some(self.held.swap_remove(i))
    }

    /// Unit `u` was resolved: a payload waiting on it as its metadata is released; a
    /// held payload resolved itself (the part's deadline) is forgotten.
    pub(super) fn on_resolved(&mut self, u: u32) {
        if self.held.is_empty() && self.released.is_empty() {
            return;
        }
        if let Some(h) = self.take_for_meta(u) {
            self.released.push(h);
        }
        self.held.retain(|h| h.payload != u);
        self.released.retain(|h| h.payload != u);
    }

    /// The redirects released since the last call, to follow alone.
    pub(super) fn take_released(&mut self) -> Vec<Held> {
        std::mem::take(&mut self.released)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.held.is_empty() && self.released.is_empty()
    }
}

/// The metadata unit whose reply a redirected payload `u` waits for: the same chunk's,
/// still pending and neither queued nor waiting for a retry, so its command is in
/// flight (pairs go out together, payload first) and its reply is still to be read.
pub(super) fn meta_in_flight(
    units: &[PUnit],
    groups: &[Group],
    u: u32,
    delayed: impl Fn(u32) -> bool,
) -> Option<u32> {
    let pu = units.get(u as usize)?;
    if pu.role != Role::Payload {
        return None;
    }
    let is_meta = |m: &u32| {
        let mu = &units[*m as usize];
        mu.chunk == pu.chunk && mu.role == Role::Meta
    };
    // The put's unit order puts the metadata right after its payload.
    let next = u + 1;
    let m = if (next as usize) < units.len() && is_meta(&next) {
        next
    } else {
        (0..units.len() as u32).find(is_meta)?
    };
    let pending = matches!(units[m as usize].slot, Slot::Pending);
    let queued = groups.iter().any(|g| g.queue.contains(&m));
    (pending && !queued && !delayed(m)).then_some(m)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn unit(chunk: u32, role: Role) -> PUnit {
        PUnit {
            chunk,
            role,
            buf: None,
            attempts: 0,
            slot: Slot::Pending,
            hslot: 7,
            node: 0,
            lent: false,
        }
    }

    /// Two chunks as a put orders them: payload, metadata, payload, metadata.
    fn put_units() -> Vec<PUnit> {
        vec![
            unit(0, Role::Payload),
            unit(0, Role::Meta),
            unit(1, Role::Payload),
            unit(1, Role::Meta),
        ]
    }

    fn group(queue: &[u32]) -> Group {
        Group {
            node: 0,
            slot: 7,
            queue: VecDeque::from(queue.to_vec()),
            asking: false,
        }
    }

    const R: Redirect = Redirect {
        to: 3,
        asking: true,
    };

    #[test]
    fn a_payload_waits_only_for_metadata_in_flight() {
        let mut units = put_units();
        let none = |_| false;
        // Both sent, no reply yet: the payload's redirect waits for its own metadata.
        assert_eq!(meta_in_flight(&units, &[], 0, none), Some(1));
        assert_eq!(meta_in_flight(&units, &[], 2, none), Some(3));
        // A metadata unit's redirect never waits.
        assert_eq!(meta_in_flight(&units, &[], 1, none), None);
        // Metadata still queued, waiting for a retry, or answered: nothing to wait for.
        assert_eq!(meta_in_flight(&units, &[group(&[1])], 0, none), None);
        assert_eq!(meta_in_flight(&units, &[], 0, |m| m == 1), None);
        units[1].slot = Slot::Ok;
        assert_eq!(meta_in_flight(&units, &[], 0, none), None);
        // Found wherever it sits in the part.
        let units = vec![
            unit(0, Role::Meta),
            unit(1, Role::Payload),
            unit(0, Role::Payload),
        ];
        assert_eq!(meta_in_flight(&units, &[], 2, none), Some(0));
        assert_eq!(meta_in_flight(&units, &[], 1, none), None);
    }

    #[test]
    fn the_metadata_redirect_takes_its_payload_along() {
        let mut h = HeldRedirects::default();
        h.hold(Held {
            payload: 0,
            meta: 1,
            redirect: R,
        });
        h.hold(Held {
            payload: 2,
            meta: 3,
            redirect: R,
        });
        let got = h.take_for_meta(3).expect("chunk 1's payload is held");
        assert_eq!((got.payload, got.redirect), (2, R));
        assert_eq!(h.take_for_meta(3), None);
        // Resolving a payload's metadata redirect-wise leaves nothing to release.
        h.on_resolved(3);
        assert!(h.take_released().is_empty());
        assert_eq!(h.take_for_meta(1).map(|x| x.payload), Some(0));
        assert!(h.is_empty());
    }

    #[test]
    fn metadata_resolved_otherwise_releases_the_payload_alone() {
        let mut h = HeldRedirects::default();
        h.hold(Held {
            payload: 0,
            meta: 1,
            redirect: R,
        });
        // The metadata succeeded (or failed) where it was sent.
        h.on_resolved(1);
        let rel = h.take_released();
        assert_eq!(rel.len(), 1);
        assert_eq!((rel[0].payload, rel[0].redirect), (0, R));
        assert!(h.is_empty());
    }

    #[test]
    fn a_held_payload_resolved_by_its_deadline_is_forgotten() {
        let mut h = HeldRedirects::default();
        h.hold(Held {
            payload: 0,
            meta: 1,
            redirect: R,
        });
        // The deadline resolves every pending unit, in unit order: payload first...
        h.on_resolved(0);
        assert!(h.is_empty());
        h.on_resolved(1);
        assert!(h.take_released().is_empty());
        // ...or metadata first: the release is dropped when the payload resolves.
        h.hold(Held {
            payload: 2,
            meta: 1,
            redirect: R,
        });
        h.on_resolved(1);
        h.on_resolved(2);
        assert!(h.take_released().is_empty());
        assert!(h.is_empty());
    }
}
