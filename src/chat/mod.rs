//! The chat domain: rooms, messages, typing and presence, independent of the
//! transport a request came by. Socket.IO handlers and REST routes call
//! [`Chat`]; it checks access, writes through the [`Store`] and announces
//! through the [`Broadcaster`].

pub mod access;
mod membership;
pub mod presence;
pub mod sessions;
pub mod typing;

use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use crate::{
    auth::{AuthError, TokenVerifier},
    broadcast::{Audience, Broadcaster},
    clock,
    cluster::Redis,
    domain::{Draft, Identity, Member, RoomId, RoomKind, StoredMessage},
    error::ChatError,
    metrics::Metrics,
    pusher::{AuthShim, ChannelAuth, Forwarded, PresentedAuth, auth_shim::ShimError},
    ratelimit::RateLimit,
    store::{Appended, NewMessage, Page, PageQuery, Store},
    webhooks::Webhooks,
};
pub use access::Seeker;
pub use membership::Membership;
use presence::{Left, Presence, RoomStats};
use sessions::Sessions;
use typing::Typing;

/// Messages returned by a join without `since`.
pub const HISTORY_LATEST: u32 = 50;
/// Most messages returned by a join with `since`, and by one REST page.
pub const HISTORY_MAX: u32 = 500;
/// Most bytes of messages (as JSON) in one page, whatever their count: 500
/// messages of 4,000 characters would otherwise be a 2 MB answer to a
/// 45-byte request. A page cut short says `hasMore`, and the client pages on.
pub const HISTORY_MAX_BYTES: usize = 256 * 1024;

/// One connection's view: who it is and which rooms it has joined, with the
/// member identity it holds in each. Kept in the socket's extensions.
pub struct Conn {
    pub identity: Identity,
    /// Pusher-format socket id (`123.456`), unique per connection.
    pub socket_id: String,
    /// The handshake's Cookie and Authorization, for the Pusher auth shim.
    pub forwarded: Forwarded,
    /// std `Mutex`: a few map operations, never held across an await.
    rooms: Mutex<HashMap<RoomId, Member>>,
}

impl Conn {
    pub fn new(identity: Identity, socket_id: String, forwarded: Forwarded) -> Self {
        Self {
            identity,
            socket_id,
            forwarded,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Member>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn seeker(&self) -> Seeker<'_> {
        Seeker {
            identity: &self.identity,
            socket_id: &self.socket_id,
            forwarded: &self.forwarded,
        }
    }

    pub fn joined(&self, room: &RoomId) -> bool {
        self.rooms().contains_key(room)
    }

    /// Records the room; false when it was already joined.
    pub fn insert(&self, room: RoomId, member: Member) -> bool {
        self.rooms().insert(room, member).is_none()
    }

    pub fn remove(&self, room: &RoomId) -> Option<Member> {
        self.rooms().remove(room)
    }

    pub fn drain(&self) -> Vec<(RoomId, Member)> {
        self.rooms().drain().collect()
    }
}

pub struct Chat {
    pub store: Arc<dyn Store>,
    pub verifier: TokenVerifier,
    pub metrics: Arc<Metrics>,
    /// The cluster's Redis, when there are many nodes (readiness checks it).
    pub redis: Option<Redis>,
    presence: Arc<dyn Presence>,
    shim: Option<AuthShim>,
    /// Checks auth endpoint answers a browser presents (with Pusher credentials).
    signed: Option<ChannelAuth>,
    /// Presence channel that identifies connections without a token.
    identity_channel: Option<String>,
    typing: Arc<Typing>,
    broadcaster: Broadcaster,
    limiter: RateLimit,
    typing_timeout: Duration,
    max_event_bytes: usize,
    /// Message writes in flight; shutdown waits for them.
    writes: TaskTracker,
    /// Connection state recovery: the window and this node's live sessions.
    sessions: Sessions,
    /// Told of every occupied/vacated and presence member change this node decides.
    webhooks: Webhooks,
}

pub struct ChatParts {
    pub store: Arc<dyn Store>,
    pub verifier: TokenVerifier,
    pub metrics: Arc<Metrics>,
    pub redis: Option<Redis>,
    pub presence: Arc<dyn Presence>,
    pub shim: Option<AuthShim>,
    pub signed: Option<ChannelAuth>,
    pub identity_channel: Option<String>,
    pub broadcaster: Broadcaster,
    pub limiter: RateLimit,
    pub typing: Typing,
    pub typing_timeout: Duration,
    pub max_event_bytes: usize,
    /// How long a disconnected session may be resumed; zero disables recovery.
    pub recovery_window: Duration,
    pub webhooks: Webhooks,
}

impl Chat {
    pub fn new(p: ChatParts) -> Self {
        Self {
            store: p.store,
            verifier: p.verifier,
            metrics: p.metrics,
            redis: p.redis,
            presence: p.presence,
            shim: p.shim,
            signed: p.signed,
            identity_channel: p.identity_channel,
            typing: Arc::new(p.typing),
            broadcaster: p.broadcaster,
            limiter: p.limiter,
            typing_timeout: p.typing_timeout,
            max_event_bytes: p.max_event_bytes,
            writes: TaskTracker::new(),
            sessions: Sessions::new(p.recovery_window),
            webhooks: p.webhooks,
        }
    }

    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    pub fn broadcaster(&self) -> &Broadcaster {
        &self.broadcaster
    }

    /// Every client event passes here first: per-user rate limit, then size.
    pub async fn gate(&self, identity: &Identity, size: usize) -> Result<(), ChatError> {
        if !self.limiter.check(identity.user.key()).await {
            return Err(ChatError::RateLimited);
        }
        if size > self.max_event_bytes {
            return Err(ChatError::TooLarge(format!(
                "event is {size} bytes; at most {} are allowed",
                self.max_event_bytes
            )));
        }
        Ok(())
    }

    /// Periodic upkeep, off the request path, until the task is dropped:
    /// forgets rate-limit state of idle users, and (many nodes) heartbeats and
    /// announces offline the users of nodes that died.
    pub async fn housekeeping(self: Arc<Self>) {
        const PRUNE_EVERY: Duration = Duration::from_secs(60);
        let every = self.presence.tick_every().unwrap_or(PRUNE_EVERY).min(PRUNE_EVERY);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            if self.presence.tick_every().is_some() {
                self.cluster_tick().await;
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                self.limiter.prune();
                last_prune = tokio::time::Instant::now();
            }
            self.sessions_upkeep().await;
        }
    }

    async fn cluster_tick(&self) {
        let tick = match self.presence.tick().await {
            Ok(tick) => tick,
            Err(e) => {
                self.metrics.redis_up.set(0);
                tracing::error!(error = %e, "cluster heartbeat failed");
                return;
            }
        };
        self.metrics.redis_up.set(1);
        self.metrics.cluster_nodes.set(tick.live_nodes as i64);
        if tick.dead_nodes > 0 {
            self.metrics.dead_nodes.inc_by(tick.dead_nodes as u64);
            tracing::warn!(
                nodes = tick.dead_nodes,
                users = tick.offline.len(),
                "reaped nodes that stopped sending heartbeats"
            );
        }
        for (room, member) in &tick.offline {
            self.webhooks.member(room, member.key(), false);
            self.announce_online(Audience::room(room), member, false).await;
        }
        // After the members: member_removed goes before channel_vacated.
        for room in &tick.vacated {
            self.webhooks.channel_vacated(room);
        }
        if tick.forgotten {
            tracing::error!("the cluster took this node for dead; reconnecting its sockets so they count again");
            self.broadcaster.disconnect_here().await;
        }
    }

    /// This node is leaving the cluster (shutdown).
    pub async fn goodbye(&self) {
        self.presence.goodbye().await;
    }

    /// Admission for `identity` to `room`; the member as the room shows them.
    pub async fn admit(&self, who: Seeker<'_>, room: &RoomId) -> Result<Member, ChatError> {
        access::admit(self.store.as_ref(), self.shim.as_ref(), who, room).await
    }

    /// Who a connection without a token is, by the app's own session: the auth
    /// endpoint is asked about the identity channel for `socket_id`. Without an
    /// endpoint or an identity channel a token is simply missing.
    pub async fn identify(&self, socket_id: &str, forwarded: &Forwarded) -> Result<Identity, AuthError> {
        let (Some(shim), Some(channel)) = (&self.shim, &self.identity_channel) else {
            return Err(AuthError::Missing);
        };
        shim.identify(socket_id, channel, forwarded).await.map_err(|e| {
            if matches!(e, ShimError::Failed(_)) {
                tracing::warn!(error = %e, "Pusher auth endpoint failed at connect time");
            }
            AuthError::Session(e.to_string())
        })
    }

    /// Admission as [`Chat::admit`], except that a `private-`/`presence-` room
    /// with an auth answer the browser `presented` is decided by that answer.
    pub async fn admit_presented(
        &self,
        who: Seeker<'_>,
        room: &RoomId,
        presented: Option<&PresentedAuth>,
    ) -> Result<Member, ChatError> {
        match (presented, room.kind()) {
            (Some(p), RoomKind::Private | RoomKind::Presence) => {
                access::admit_presented(self.signed.as_ref(), who, room, p)
            }
            _ => self.admit(who, room).await,
        }
    }

    /// Occupancy of one room: distinct users and sockets.
    pub async fn room_stats(&self, room: &RoomId) -> Result<RoomStats, ChatError> {
        self.presence
            .stats(room)
            .await
            .map_err(|e| ChatError::internal("presence registry failed", &e))
    }

    /// Every occupied room with its occupancy.
    pub async fn occupied(&self) -> Result<Vec<(RoomId, RoomStats)>, ChatError> {
        self.presence
            .occupied()
            .await
            .map_err(|e| ChatError::internal("presence registry failed", &e))
    }

    /// Takes every socket of a user out of `room` at once, on every node (e.g.
    /// removed from a group). Presence changes before this returns, so every
    /// node's `members` agrees as soon as the caller answers.
    pub async fn evict(&self, room: &RoomId, user_key: &str) -> Result<(), ChatError> {
        let left = self
            .presence
            .evict(room, user_key)
            .await
            .map_err(|e| ChatError::internal("presence registry failed", &e))?;
        self.hook_left(room, &left);
        self.broadcaster.leave_room(user_key, room).await;
        if let Some(member) = left.gone {
            if self.typing.stop(room, user_key).await {
                self.broadcaster
                    .emit(
                        Audience::room(room).except_user(user_key),
                        "typing",
                        &json!({ "roomId": room, "userId": member.user, "isTyping": false }),
                    )
                    .await;
            }
            self.announce_online(Audience::room(room).except_user(user_key), &member, false)
                .await;
        }
        self.metrics.rooms.set(self.presence.occupied_rooms() as i64);
        Ok(())
    }

    /// A socket entered `room`: count it, and announce the user when it is their first socket there.
    pub async fn entered(&self, conn: &Conn, room: &RoomId, member: &Member) -> Result<(), ChatError> {
        let joined = self
            .presence
            .join(room, member, &conn.socket_id)
            .await
            .map_err(|e| ChatError::internal("presence registry failed", &e))?;
        self.metrics.rooms.set(self.presence.occupied_rooms() as i64);
        // Occupied before member_added, as Pusher orders them.
        if joined.occupied {
            self.webhooks.channel_occupied(room);
        }
        if joined.first {
            self.webhooks.member(room, member.key(), true);
        }
        if joined.first {
            self.announce_online(Audience::room(room).except_user(conn.identity.user.key()), member, true)
                .await;
        }
        Ok(())
    }

    /// A socket left `room` (or disconnected): stop its typing, and announce
    /// the user offline there when it was their last socket.
    pub async fn left(&self, conn: &Conn, room: &RoomId, member: &Member) {
        let user = conn.identity.user.key();
        if self.typing.stop(room, user).await {
            self.announce_typing(room, &conn.identity, false).await;
        }
        match self.presence.leave(room, member.key(), &conn.socket_id).await {
            Ok(left) => {
                self.hook_left(room, &left);
                if let Some(gone) = left.gone {
                    self.announce_online(Audience::room(room).except_user(user), &gone, false)
                        .await;
                }
            }
            Err(e) => tracing::error!(error = %e, %room, "presence leave failed"),
        }
        self.metrics.rooms.set(self.presence.occupied_rooms() as i64);
    }

    /// Webhooks for a departure: member_removed before channel_vacated.
    fn hook_left(&self, room: &RoomId, left: &Left) {
        if let Some(gone) = &left.gone {
            self.webhooks.member(room, gone.key(), false);
        }
        if left.vacated {
            self.webhooks.channel_vacated(room);
        }
    }

    pub async fn members(&self, room: &RoomId) -> Result<Vec<Member>, ChatError> {
        self.presence
            .members(room)
            .await
            .map_err(|e| ChatError::internal("presence registry failed", &e))
    }

    /// Join history: the latest 50, or everything after `since` (up to 500).
    pub async fn history(&self, room: &RoomId, since: Option<i64>) -> Result<Page, ChatError> {
        let query = match since {
            Some(after) => PageQuery {
                after: Some(after),
                before: None,
                limit: HISTORY_MAX,
            },
            None => PageQuery {
                after: None,
                before: None,
                limit: HISTORY_LATEST,
            },
        };
        self.page(room, query).await
    }

    pub async fn page(&self, room: &RoomId, query: PageQuery) -> Result<Page, ChatError> {
        let page = self
            .store
            .page(room, query)
            .await
            .map_err(|e| ChatError::internal("could not read messages", &e))?;
        Ok(cap_bytes(page, query.after.is_some(), HISTORY_MAX_BYTES))
    }

    /// Stores the message (before anyone hears of it), then broadcasts it to
    /// every socket in the room. A retry returns the stored original unannounced.
    pub async fn send(&self, identity: &Identity, room: &RoomId, draft: Draft) -> Result<Appended, ChatError> {
        self.store_and_announce(identity, room, draft, None).await
    }

    /// A message the app's backend triggered through the Pusher HTTP API on the
    /// sender's behalf (the backend is trusted for `sender`): stored and announced
    /// exactly as [`Chat::send`], except to the socket the trigger excludes.
    pub async fn send_triggered(
        &self,
        sender: &Identity,
        room: &RoomId,
        draft: Draft,
        except_socket: Option<&str>,
    ) -> Result<Appended, ChatError> {
        self.store_and_announce(sender, room, draft, except_socket).await
    }

    async fn store_and_announce(
        &self,
        identity: &Identity,
        room: &RoomId,
        draft: Draft,
        except_socket: Option<&str>,
    ) -> Result<Appended, ChatError> {
        if let (Some(target), RoomKind::Direct { a, b }) = (&draft.target_id, room.kind())
            && *target != a
            && *target != b
        {
            return Err(ChatError::InvalidPayload(format!("targetId {target} is not in {room}")));
        }
        let new = NewMessage {
            room: room.clone(),
            sender: identity.clone(),
            client_id: draft.client_id,
            text: draft.text,
            kind: draft.kind,
            media: draft.media,
            audio: draft.audio,
            timestamp: clock::now_ms(),
        };
        // The write runs to completion even if the caller goes away, and
        // shutdown waits for it: an acked message is always a stored one.
        let store = self.store.clone();
        let write = self.writes.spawn(async move { store.append(new).await });
        let appended = write
            .await
            .map_err(|e| ChatError::internal("message write task failed", &e))?
            .map_err(|e| ChatError::internal("could not store the message", &e))?;
        if appended.created {
            self.metrics.messages_in.inc();
            if self.typing.stop(room, identity.user.key()).await {
                self.announce_typing(room, identity, false).await;
            }
            self.broadcaster
                .emit_message(Audience::room(room).except_socket(except_socket), &appended.message)
                .await;
        }
        Ok(appended)
    }

    /// `typing` from a user: tell the room's other users, and arm the expiry.
    pub async fn typing(self: &Arc<Self>, identity: &Identity, room: &RoomId, is_typing: bool) {
        let user = identity.user.key();
        if !is_typing {
            if self.typing.stop(room, user).await {
                self.announce_typing(room, identity, false).await;
            }
            return;
        }
        let generation = self.typing.start(room, user).await;
        let chat = Arc::clone(self);
        let (expiring_room, expiring) = (room.clone(), identity.clone());
        tokio::spawn(async move {
            tokio::time::sleep(chat.typing_timeout).await;
            if chat
                .typing
                .expire(&expiring_room, expiring.user.key(), &generation)
                .await
            {
                chat.announce_typing(&expiring_room, &expiring, false).await;
            }
        });
        self.announce_typing(room, identity, true).await;
    }

    /// `user-online`, and in presence rooms Pusher's `pusher:member_added` /
    /// `pusher:member_removed` to the same audience, for hooks that kept their
    /// pusher-js handlers. Every first-in / last-out path (join, leave, eviction,
    /// a dead node's users) comes through here, so the pair always goes together.
    async fn announce_online(&self, audience: Audience<'_>, member: &Member, online: bool) {
        let room = audience.room;
        self.broadcaster
            .emit(
                audience,
                "user-online",
                &json!({ "roomId": room, "userId": member.user, "online": online }),
            )
            .await;
        if room.kind() == RoomKind::Presence {
            let event = if online {
                "pusher:member_added"
            } else {
                "pusher:member_removed"
            };
            self.broadcaster
                .emit(
                    audience,
                    event,
                    &json!({ "roomId": room, "id": member.key(), "info": member.info }),
                )
                .await;
        }
    }

    async fn announce_typing(&self, room: &RoomId, identity: &Identity, is_typing: bool) {
        self.broadcaster
            .emit(
                Audience::room(room).except_user(identity.user.key()),
                "typing",
                &json!({ "roomId": room, "userId": identity.user, "isTyping": is_typing }),
            )
            .await;
    }

    /// Waits (up to `timeout`) for message writes in flight; used at shutdown.
    pub async fn drain_writes(&self, timeout: Duration) -> bool {
        self.writes.close();
        tokio::time::timeout(timeout, self.writes.wait()).await.is_ok()
    }
}

/// Cuts a page down to `max` bytes of JSON, keeping the messages nearest to
/// where the client reads from: the oldest when paging forward (`after`),
/// else the newest. At least one message is kept, so paging always advances.
fn cap_bytes(mut page: Page, forward: bool, max: usize) -> Page {
    let sizes: Vec<usize> = page
        .messages
        .iter()
        .map(|m| serde_json::to_vec(m).map_or(0, |v| v.len()))
        .collect();
    if sizes.iter().sum::<usize>() <= max {
        return page;
    }
    let fits = |order: &mut dyn Iterator<Item = &usize>| {
        let mut total = 0;
        order
            .take_while(|n| {
                total += **n;
                total <= max
            })
            .count()
            .max(1)
    };
    if forward {
        let keep = fits(&mut sizes.iter());
        page.messages.truncate(keep);
    } else {
        let keep = fits(&mut sizes.iter().rev());
        page.messages.drain(..page.messages.len() - keep);
    }
    page.has_more = true;
    page
}

/// The `join-room` ack body; presence rooms add Pusher's member set.
pub fn join_reply(room: &RoomId, members: &[Member], page: &Page) -> Value {
    let mut reply = json!({
        "ok": true,
        "roomId": room,
        "members": members,
        "history": page.messages,
        "hasMore": page.has_more,
    });
    if room.kind() == RoomKind::Presence {
        reply["presence"] = presence_of(members);
    }
    reply
}

/// Pusher's `pusher:subscription_succeeded` data: `{ count, ids, hash }`, ids as strings.
fn presence_of(members: &[Member]) -> Value {
    let ids: Vec<&str> = members.iter().map(Member::key).collect();
    let hash: serde_json::Map<String, Value> = members
        .iter()
        .map(|m| (m.key().to_owned(), Value::Object(m.info.clone())))
        .collect();
    json!({ "count": members.len(), "ids": ids, "hash": hash })
}

pub fn message_reply(message: &StoredMessage) -> Value {
    json!({ "ok": true, "message": message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MessageKind;

    fn message(id: i64, chars: usize) -> StoredMessage {
        StoredMessage {
            id,
            room_id: "lobby".into(),
            user_id: json!(5),
            username: None,
            full_name: None,
            avatar: None,
            client_id: None,
            message: "x".repeat(chars),
            kind: MessageKind::Message,
            media: None,
            audio: None,
            timestamp: 0,
        }
    }

    fn page(n: i64, chars: usize) -> Page {
        Page {
            messages: (1..=n).map(|id| message(id, chars)).collect(),
            has_more: false,
        }
    }

    fn ids(page: &Page) -> Vec<i64> {
        page.messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn a_page_within_the_cap_is_untouched() {
        let capped = cap_bytes(page(3, 10), true, 10_000);
        assert_eq!((ids(&capped), capped.has_more), (vec![1, 2, 3], false));
    }

    #[test]
    fn paging_forward_keeps_the_oldest_and_says_there_is_more() {
        // each message is a little over 1,000 bytes of JSON
        let capped = cap_bytes(page(10, 1000), true, 3_500);
        assert_eq!((ids(&capped), capped.has_more), (vec![1, 2, 3], true));
    }

    #[test]
    fn the_latest_page_keeps_the_newest() {
        let capped = cap_bytes(page(10, 1000), false, 3_500);
        assert_eq!((ids(&capped), capped.has_more), (vec![8, 9, 10], true));
    }

    #[test]
    fn one_message_is_always_kept_so_paging_advances() {
        let capped = cap_bytes(page(2, 5000), true, 100);
        assert_eq!(ids(&capped), vec![1]);
    }

    #[test]
    fn the_default_cap_bounds_a_page_of_the_largest_messages() {
        let capped = cap_bytes(page(HISTORY_MAX as i64, 4000), true, HISTORY_MAX_BYTES);
        let bytes: usize = capped
            .messages
            .iter()
            .map(|m| serde_json::to_vec(m).map_or(0, |v| v.len()))
            .sum();
        assert!(bytes <= HISTORY_MAX_BYTES && capped.has_more);
    }
}
