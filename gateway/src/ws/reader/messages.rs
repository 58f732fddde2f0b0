//! The reader's handling of what a client stores in the room: messages and
//! room events (edits, deletes, reactions). Each is checked here (the
//! token's name, the shared budgets, the room-creation budget, the target
//! of a reply or event), then handed to the connection's [`Appender`], which
//! stores and acks it or refuses it in reading order.

use chat_shared::envelope::{EventKind, RoomEvent};
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::protocol::{ErrorCode, InboundMessage, ProtocolError};

use super::{Reader, WriterGone};
use crate::delivery::append::Draft;
use crate::rooms::events::{self as room_events, Change};
use crate::ws::appender::Appender;

impl Reader {
    /// Appends a message and acks it, or tells the sender it was not stored.
    pub(super) async fn on_message(&mut self, msg: InboundMessage) -> Result<(), WriterGone> {
        let client_id = msg.client_id.as_deref();
        let user_id = self.user_id().map(str::to_owned);
        let username = match (&self.identity, msg.username) {
            // With a token, the name is the token's: another one is forged.
            (Some(identity), Some(claimed)) if claimed != identity.name => {
                let err = ProtocolError::new(
                    ErrorCode::Forbidden,
                    "data.username differs from the token's name; omit it",
                );
                return self.refuse(err, client_id).await;
            }
            (Some(identity), _) => identity.name.clone(),
            (None, claimed) => claimed.unwrap_or_else(|| self.username.clone()),
        };
        let budget_key = self.budget_key();
        if !self.room_exists {
            if let Some(refused) = self.spend_room_creation(&budget_key).await {
                return self.refuse(refused, client_id).await;
            }
        }
        if let Some(limited) = self.spend_user_budget(&budget_key).await {
            return self.refuse(limited, client_id).await;
        }
        if let Some(reply_to) = &msg.reply_to {
            let exists = room_events::exists(&self.state.redis, &self.room, reply_to).await;
            if let Err(e) = exists {
                return self.refuse(e, client_id).await;
            }
        }
        let draft = Draft {
            reply_to: msg.reply_to,
            attachments: msg.attachments,
            ..Draft::message(username, user_id, msg.client_id, msg.message)
        };
        self.append(draft).await
    }

    /// Checks and appends an edit, a delete or a reaction; acks it like a
    /// message once it is in the stream.
    pub(super) async fn on_event(
        &mut self,
        event: RoomEvent,
        message: String,
        owned_client_id: Option<String>,
    ) -> Result<(), WriterGone> {
        let client_id = owned_client_id.as_deref();
        let (username, moderator) = match &self.identity {
            Some(i) => (i.name.clone(), i.moderator),
            None => (self.username.clone(), false),
        };
        let user_id = self.user_id().map(str::to_owned);
        let sender = user_id
            .clone()
            .unwrap_or_else(|| username.as_str().to_owned());
        if let Some(limited) = self.spend_user_budget(&self.budget_key()).await {
            return self.refuse(limited, client_id).await;
        }
        let allowed = match (event.kind, &event.emoji) {
            (EventKind::React, Some(emoji)) => {
                let adding = event.op != Some(chat_shared::protocol::ReactOp::Remove);
                room_events::check_reaction(
                    &self.state.redis,
                    &self.room,
                    &event.target,
                    emoji,
                    adding,
                )
                .await
            }
            _ => {
                room_events::check(
                    &self.state.redis,
                    &self.room,
                    &event.target,
                    &sender,
                    moderator,
                    Change::Own,
                )
                .await
            }
        };
        if let Err(e) = allowed {
            return self.refuse(e, client_id).await;
        }
        let draft = Draft {
            event: Some(event),
            ..Draft::message(username, user_id, owned_client_id, message)
        };
        self.append(draft).await
    }

    /// The key of the sender's shared budgets: its user id, else its IP.
    fn budget_key(&self) -> String {
        match &self.identity {
            Some(i) => i.user_id.clone(),
            None => format!("ip:{}", crate::edge::access::budget_ip(self.client_ip)),
        }
    }

    /// Spends one unit of the sender's budget shared by every gateway
    /// (`USER_RATE_LIMIT_PER_SEC`); returns the refusal when it is spent. A
    /// Redis failure lets the frame through to the append, which then fails
    /// the same way if Redis is really gone.
    async fn spend_user_budget(&self, key: &str) -> Option<ProtocolError> {
        let limit = self.state.user_limit?;
        if let Ok(false) = limit.allow(&self.state.redis, key).await {
            metrics::counter!(m::GW_RATE_LIMITED).increment(1);
            return Some(ProtocolError::new(
                ErrorCode::RateLimited,
                "this user sends faster than USER_RATE_LIMIT_PER_SEC allows",
            ));
        }
        None
    }

    /// Hands `draft` to the connection's appender (started on first use),
    /// which stores it and acks it, or tells the sender it was not stored.
    async fn append(&mut self, draft: Draft) -> Result<(), WriterGone> {
        self.appender().append(draft).await.map_err(|_| WriterGone)
    }

    /// Refuses a message or room event that failed a check here. The
    /// refusal goes through the appender, in reading order, because the
    /// send-order rule (DESIGN.md) applies to it: inside a window opened by
    /// an earlier refusal it becomes `unavailable`, and an `unavailable`
    /// one (a check that could not reach Redis) opens a window.
    async fn refuse(
        &mut self,
        err: ProtocolError,
        client_id: Option<&str>,
    ) -> Result<(), WriterGone> {
        let client_id = client_id.map(str::to_owned);
        self.appender()
            .refuse(err, client_id)
            .await
            .map_err(|_| WriterGone)
    }

    /// The connection's appender, started on first use.
    fn appender(&mut self) -> &Appender {
        self.appender.get_or_insert_with(|| {
            Appender::spawn(self.state.clone(), self.room.clone(), self.replies.clone())
        })
    }

    /// Before the first message of this connection: a room without history
    /// is created by it, which spends the user's room-creation budget.
    /// Returns the refusal when the budget is spent. Redis failures let the
    /// message through (the append fails the same way if Redis is gone).
    async fn spend_room_creation(&mut self, user: &str) -> Option<ProtocolError> {
        let Some(budget) = self.state.room_creation else {
            self.room_exists = true;
            return None;
        };
        let exists: Result<bool, _> = self
            .state
            .redis
            .query(redis::cmd("EXISTS").arg(keys::room_state(&self.room)))
            .await;
        if let Ok(true) = exists {
            self.room_exists = true;
            return None;
        }
        let key = keys::room_creation_budget(user);
        match budget.allow_key(&self.state.redis, &key).await {
            Ok(false) => {
                metrics::counter!(m::GW_ROOMS_REFUSED).increment(1);
                Some(ProtocolError::new(
                    ErrorCode::RateLimited,
                    "too many new rooms from this user; post to an existing room or retry later",
                ))
            }
            _ => {
                self.room_exists = true;
                None
            }
        }
    }
}
