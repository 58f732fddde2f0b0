//! The reader's handling of the ephemeral room features: `presence`
//! requests, `typing` and `read` receipts. Each spends the connection's
//! rate-limit token like any data frame (done before parsing), and errors
//! keep the connection open.

use std::time::Instant;

use chat_shared::ephemeral::{self, EphemeralEvent};
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::presence::PresenceUser;
use chat_shared::protocol::{ErrorCode, ProtocolError};

use super::{Reader, WriterGone};
use crate::rooms::presence_events;
use crate::rooms::receipts::{self, Raise};
use crate::rooms::typing::TypingThrottle;

/// What a connection's reader keeps for the room features.
#[derive(Debug, Default)]
pub(in crate::ws) struct RoomFeatures {
    /// This connection's `<gateway>/<conn>` member: the sender excluded
    /// from its own `typing`.
    member: String,
    typing: TypingThrottle,
}

impl Reader {
    /// Names the connection's Redis member (`<conn>` part), so its own
    /// `typing` frames are not echoed to it.
    pub(in crate::ws) fn with_conn_key(mut self, conn_key: &str) -> Self {
        self.features.member = keys::connection_member(&self.state.gateway_id, conn_key);
        self
    }

    /// The user behind this connection, keyed as presence keys it.
    fn presence_user(&self) -> PresenceUser {
        match &self.identity {
            Some(i) => PresenceUser::new(i.name.as_str(), Some(&i.user_id)),
            None => PresenceUser::new(self.username.as_str(), self.anon_id.as_deref()),
        }
    }

    /// Answers a `presence` request to this connection only.
    pub(super) async fn on_presence(&mut self) -> Result<(), WriterGone> {
        match presence_events::snapshot(&self.state.redis, &self.room).await {
            Ok(p) => {
                metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => "accepted").increment(1);
                self.reply(p.frame()).await
            }
            Err(_) => {
                let err = ProtocolError::new(
                    ErrorCode::Unavailable,
                    "presence unavailable: Redis unreachable",
                );
                self.reply_error(&err, None).await
            }
        }
    }

    /// Forwards a `typing` frame to the room's other connections, at most
    /// one per connection per second; extra ones are dropped silently.
    pub(super) async fn on_typing(&mut self, active: bool) -> Result<(), WriterGone> {
        metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => "accepted").increment(1);
        if !self.features.typing.allow(Instant::now()) {
            metrics::counter!(m::GW_TYPING_THROTTLED).increment(1);
            return Ok(());
        }
        let event = EphemeralEvent {
            room: self.room.as_str().to_owned(),
            frame: ephemeral::typing_frame(self.room.as_str(), &self.presence_user(), active),
            except_conn: Some(self.features.member.clone()),
        };
        self.publish("typing", event).await;
        Ok(())
    }

    /// Raises the user's read receipt and announces it to the room; a
    /// receipt that does not raise it is ignored.
    pub(super) async fn on_read(&mut self, seq: u64) -> Result<(), WriterGone> {
        let user = self.presence_user();
        match receipts::raise(&self.state.redis, &self.room, &user.key, seq).await {
            Ok(Raise::BeyondLatest) => {
                let err = ProtocolError::new(
                    ErrorCode::InvalidParameter,
                    "read data.seq is above the room's latest seq",
                );
                self.reply_error(&err, None).await
            }
            Ok(raised) => {
                metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => "accepted").increment(1);
                if raised == Raise::Raised {
                    let event = EphemeralEvent {
                        room: self.room.as_str().to_owned(),
                        frame: ephemeral::read_frame(self.room.as_str(), &user, seq),
                        except_conn: None,
                    };
                    self.publish("read", event).await;
                }
                Ok(())
            }
            Err(_) => {
                let err = ProtocolError::new(
                    ErrorCode::Unavailable,
                    "read receipt not stored: Redis unavailable; retry",
                );
                self.reply_error(&err, None).await
            }
        }
    }

    /// Publishes one ephemeral event; a failure is counted, not reported to
    /// the client (the events are best-effort).
    async fn publish(&self, kind: &'static str, event: EphemeralEvent) {
        if let Err(e) = ephemeral::publish(&self.state.redis, &self.room, vec![event]).await {
            metrics::counter!(m::GW_EPHEMERAL_PUBLISH_ERRORS, "kind" => kind).increment(1);
            tracing::debug!(error = %e, kind, "Cannot publish an ephemeral event");
        }
    }
}
