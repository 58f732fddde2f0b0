//! The ordering cursor of one connection: which live message to send, skip,
//! or precede with a gap fill.
//!
//! Pure bookkeeping, no I/O: the writer asks it what to do with each live
//! delivery and acts on the answer. `last_seq` is the newest `seq` the client
//! has; deliveries at or below it are repeats (at-least-once delivery), one
//! above it is next, and anything further ahead means deliveries were missed
//! and must be filled from history first. `seq` only compares within one
//! epoch: a delivery of another epoch means the room's sequence restarted.

/// What to do with a live delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The next message: send it (the cursor has advanced to it).
    Send,
    /// A repeat of something the client has: drop it.
    Skip,
    /// Messages between `last_seq` and this one are missing: fill them from
    /// history, then offer this delivery again.
    FillGap,
    /// The room's sequence restarted: the client needs a reset.
    Reset,
}

/// Position of one client in its room's sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Cursor {
    /// Newest `seq` the client has (0 before the first).
    last_seq: u64,
    /// The epoch `last_seq` belongs to; `None` until the room has one.
    epoch: Option<String>,
}

impl Cursor {
    /// A cursor at `last_seq` of `epoch`.
    pub(super) fn new(last_seq: u64, epoch: Option<String>) -> Self {
        Self { last_seq, epoch }
    }

    /// Newest `seq` the client has.
    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The epoch the cursor is in.
    pub(super) fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// Decides what to do with a live delivery of `seq` in `epoch`; advances
    /// the cursor when the answer is [`Step::Send`].
    pub(super) fn on_live(&mut self, seq: u64, epoch: &str) -> Step {
        match &self.epoch {
            None => self.epoch = Some(epoch.to_owned()),
            Some(ours) if ours != epoch => return Step::Reset,
            Some(_) => {}
        }
        if seq <= self.last_seq {
            Step::Skip
        } else if seq == self.last_seq + 1 {
            self.last_seq = seq;
            Step::Send
        } else {
            Step::FillGap
        }
    }

    /// Whether a stored record with `seq` belongs in a gap fill that stops
    /// before `upto`; advances the cursor when it does.
    pub(super) fn fill(&mut self, seq: u64, upto: u64) -> bool {
        if seq > self.last_seq && seq < upto {
            self.last_seq = seq;
            true
        } else {
            false
        }
    }

    /// Moves past messages that history no longer holds (trimmed before the
    /// gap could be filled): the client cannot get them from this room.
    pub(super) fn skip_to(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Adopts `epoch` when the cursor has none yet. Returns `false` when the
    /// cursor is in another epoch (the room's sequence restarted).
    pub(super) fn same_epoch(&mut self, epoch: Option<&str>) -> bool {
        match (&self.epoch, epoch) {
            (Some(ours), Some(theirs)) => ours == theirs,
            (None, Some(theirs)) => {
                self.epoch = Some(theirs.to_owned());
                true
            }
            (_, None) => true,
        }
    }

    /// Restarts the cursor after a reset: the client now has everything up to
    /// `latest_seq` of `epoch`.
    pub(super) fn reset(&mut self, latest_seq: u64, epoch: Option<String>) {
        self.last_seq = latest_seq;
        self.epoch = epoch;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_sent_repeats_are_skipped() {
        let mut c = Cursor::new(3, Some("e".into()));
        assert_eq!(c.on_live(3, "e"), Step::Skip);
        assert_eq!(c.on_live(1, "e"), Step::Skip);
        assert_eq!(c.on_live(4, "e"), Step::Send);
        assert_eq!(c.last_seq(), 4);
        assert_eq!(c.on_live(4, "e"), Step::Skip);
    }

    #[test]
    fn a_jump_asks_for_a_gap_fill_without_advancing() {
        let mut c = Cursor::new(3, Some("e".into()));
        assert_eq!(c.on_live(6, "e"), Step::FillGap);
        assert_eq!(c.last_seq(), 3, "nothing is skipped before the fill");
        assert!(c.fill(4, 6));
        assert!(!c.fill(4, 6), "a record is filled once");
        assert!(c.fill(5, 6));
        assert!(
            !c.fill(6, 6),
            "the live message itself is not part of the fill"
        );
        assert_eq!(c.on_live(6, "e"), Step::Send);
    }

    #[test]
    fn another_epoch_is_a_reset() {
        let mut c = Cursor::new(9, Some("old".into()));
        assert_eq!(c.on_live(1, "new"), Step::Reset);
        assert_eq!(c.last_seq(), 9);
        c.reset(2, Some("new".into()));
        assert_eq!(c.on_live(2, "new"), Step::Skip);
        assert_eq!(c.on_live(3, "new"), Step::Send);
    }

    #[test]
    fn the_first_epoch_seen_is_adopted() {
        let mut c = Cursor::default();
        assert_eq!(c.on_live(1, "e"), Step::Send);
        assert_eq!(c.epoch(), Some("e"));
        let mut c = Cursor::default();
        assert!(c.same_epoch(Some("e")));
        assert!(!c.same_epoch(Some("f")));
        assert!(c.same_epoch(None));
    }

    #[test]
    fn skip_to_never_moves_back() {
        let mut c = Cursor::new(5, None);
        c.skip_to(3);
        assert_eq!(c.last_seq(), 5);
        c.skip_to(8);
        assert_eq!(c.last_seq(), 8);
    }
}
