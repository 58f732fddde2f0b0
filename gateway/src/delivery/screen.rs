//! The pre-publish hook's stage of an append: a batch's drafts are judged by
//! the application ([`crate::hook`]) before any of them is stamped.
//!
//! **Why the whole batch at once, then in order.** A connection's appender
//! keeps one batch in flight, and a batch is stored by one script call in
//! its order. The hook is asked about every message and edit of the batch
//! concurrently, and the batch goes on to the script only when every answer
//! is in. So the stored (and delivered) order is the send order whatever
//! order the hook answers in, and a pipelining client pays about one hook
//! round trip per batch instead of one per message. (Asking the hook one
//! message at a time per connection would keep the order too, but cap a
//! pipelining client at one message per hook round trip.)
//!
//! **Refusals keep the append's rules.** A rejected draft is left out and
//! the others are stored: a rejection is final for that message alone. A
//! hook failure (failing closed) refuses its draft `unavailable` and the
//! drafts behind it too ([`AppendError::AfterFailure`]), as a full backlog
//! does: storing them would put them before its resend (DESIGN.md's send
//! order after a refusal). Deletes and reactions are not asked about.

use chat_shared::ids::RoomId;

use super::draft::{AppendError, Appended, Draft};
use crate::hook::{Decision, PublishHook, Subject};

/// A batch after the hook.
#[derive(Debug)]
pub struct Screened {
    /// The drafts to store, in order; a modified text replaces the draft's.
    pub passed: Vec<Draft>,
    /// One per draft of the batch, in order: `None` when it is in `passed`,
    /// else why it is refused.
    pub refusals: Vec<Option<AppendError>>,
}

/// Asks the hook about every draft of `room` at once and applies the
/// answers.
pub async fn screen(hook: &PublishHook, room: &RoomId, drafts: Vec<Draft>) -> Screened {
    let decisions: Vec<Option<Decision>> = {
        let subjects: Vec<Option<Subject<'_>>> = drafts.iter().map(|d| d.subject(room)).collect();
        let asked: Vec<Subject<'_>> = subjects.iter().flatten().cloned().collect();
        let mut answers = hook.screen_all(&asked).await.into_iter();
        subjects
            .iter()
            .map(|s| s.as_ref().and_then(|_| answers.next()))
            .collect()
    };
    apply(drafts, decisions)
}

/// Applies one decision per draft (`None`: not asked, stored as is).
fn apply(drafts: Vec<Draft>, decisions: Vec<Option<Decision>>) -> Screened {
    let mut passed = Vec::with_capacity(drafts.len());
    let mut refusals = Vec::with_capacity(drafts.len());
    let mut stopped = false;
    for (mut draft, decision) in drafts.into_iter().zip(decisions) {
        let refusal = match decision {
            _ if stopped => Some(AppendError::AfterFailure),
            None | Some(Decision::Accept) => None,
            Some(Decision::Modify(text)) => {
                draft.message = text;
                None
            }
            Some(Decision::Reject(reason)) => Some(AppendError::Rejected(reason)),
            Some(Decision::Unavailable) => {
                stopped = true;
                Some(AppendError::HookFailed)
            }
        };
        if refusal.is_none() {
            passed.push(draft);
        }
        refusals.push(refusal);
    }
    Screened { passed, refusals }
}

/// One result per draft of the batch, in order: its refusal, or the result
/// of storing it (`stored` holds one per passed draft, in order).
pub fn merge(
    refusals: Vec<Option<AppendError>>,
    stored: Vec<Result<Appended, AppendError>>,
) -> Vec<Result<Appended, AppendError>> {
    let mut stored = stored.into_iter();
    refusals
        .into_iter()
        .map(|refusal| match refusal {
            Some(e) => Err(e),
            // The store answers every draft it is given; a missing answer
            // would be a bug, never an ack.
            None => stored.next().unwrap_or(Err(AppendError::Redis)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chat_shared::envelope::{EventKind, RoomEvent};
    use chat_shared::ids::Username;

    use super::*;

    fn draft(text: &str) -> Draft {
        let name = Username::parse("ann").unwrap();
        Draft::message(name, None, Some(text.to_owned()), text.to_owned())
    }

    fn texts(drafts: &[Draft]) -> Vec<&str> {
        drafts.iter().map(|d| d.message.as_str()).collect()
    }

    #[test]
    fn a_rejection_leaves_out_its_draft_alone_and_a_modification_replaces_the_text() {
        let drafts = vec![draft("a"), draft("b"), draft("c")];
        let decisions = vec![
            Some(Decision::Accept),
            Some(Decision::Reject("no".into())),
            Some(Decision::Modify("C!".into())),
        ];
        let s = apply(drafts, decisions);
        assert_eq!(texts(&s.passed), ["a", "C!"]);
        assert_eq!(
            s.refusals,
            [None, Some(AppendError::Rejected("no".into())), None]
        );
    }

    #[test]
    fn a_hook_failure_refuses_the_drafts_behind_it() {
        let drafts = vec![draft("a"), draft("b"), draft("c"), draft("d")];
        let decisions = vec![
            Some(Decision::Accept),
            Some(Decision::Unavailable),
            Some(Decision::Accept),
            Some(Decision::Reject("no".into())),
        ];
        let s = apply(drafts, decisions);
        assert_eq!(texts(&s.passed), ["a"]);
        assert_eq!(
            s.refusals,
            [
                None,
                Some(AppendError::HookFailed),
                Some(AppendError::AfterFailure),
                Some(AppendError::AfterFailure)
            ]
        );
    }

    #[test]
    fn results_come_back_in_the_batchs_order() {
        let ok = |id: &str| {
            Ok(Appended {
                id: id.into(),
                timestamp: "t".into(),
                repeat: false,
            })
        };
        let refusals = vec![None, Some(AppendError::Rejected("no".into())), None];
        let merged = merge(refusals, vec![ok("1"), ok("3")]);
        assert_eq!(
            merged,
            [ok("1"), Err(AppendError::Rejected("no".into())), ok("3")]
        );
        // A store that answered too few is never taken for an ack.
        assert_eq!(merge(vec![None], vec![]), [Err(AppendError::Redis)]);
    }

    #[test]
    fn only_messages_and_edits_are_asked_about() {
        let room = RoomId::parse("r").unwrap();
        let mut edit = draft("new text");
        edit.event = Some(RoomEvent::new(EventKind::Edit, "m1".into()));
        let subject = edit.subject(&room).unwrap();
        assert_eq!(subject.id, Some("m1"));
        assert_eq!(subject.message, "new text");
        let mut delete = draft("");
        delete.event = Some(RoomEvent::new(EventKind::Delete, "m1".into()));
        assert!(delete.subject(&room).is_none());
        assert_eq!(draft("hi").subject(&room).unwrap().id, None);
    }
}
