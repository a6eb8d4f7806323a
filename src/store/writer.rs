//! Group commit, for both engines: appends queue up for a writer, which
//! stores whatever is queued in one statement (one commit, one fsync for many
//! messages) and answers each caller with its own message once it is on disk.
//!
//! The engine supplies the commit ([`Batches`]); this module owns the queue,
//! pairing stored rows with callers, and the fallback: when a batch fails
//! nothing of it was stored, so each message is stored alone and one bad row
//! fails only its own caller.

use tokio::sync::{mpsc, oneshot};

use super::{Appended, NewMessage, StoreError};
use crate::domain::StoredMessage;

/// Most messages stored by one statement.
pub const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

// Nearly every job is an append: boxing it would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Job {
    Append(NewMessage, Reply),
    /// Everything queued before has been written: close the connection.
    Close(oneshot::Sender<()>),
}

/// What an engine does for its writer.
pub trait Batches: Send {
    /// Stores the batch in one commit, skipping messages whose idempotency
    /// key is taken (earlier, or by an earlier message of the batch), with ids
    /// in the batch's order. Returns the stored rows. On error nothing was
    /// stored.
    fn insert_batch(&mut self, batch: &[&NewMessage])
    -> impl Future<Output = Result<Vec<Inserted>, StoreError>> + Send;

    /// Stores one message by itself (the fallback when a batch fails).
    fn append_one(&mut self, m: &NewMessage) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// The stored original of a message whose idempotency key was taken.
    fn by_key(&mut self, m: &NewMessage) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Queues an append and waits for its answer.
pub async fn submit(writer: &mpsc::Sender<Job>, m: NewMessage) -> Result<Appended, StoreError> {
    let (reply, answer) = oneshot::channel();
    writer.send(Job::Append(m, reply)).await.map_err(|_| closed())?;
    answer.await.map_err(|_| closed())?
}

/// Lets the writer finish what is queued before, then close its connection.
pub async fn close(writer: &mpsc::Sender<Job>) {
    let (done, closed) = oneshot::channel();
    if writer.send(Job::Close(done)).await.is_ok() {
        let _ = closed.await;
    }
}

fn closed() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

/// Stores queued appends in batches until the store is closed or dropped.
pub async fn write_loop(mut engine: impl Batches, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut batch: Vec<(NewMessage, Reply)> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let mut closing = None;
        for job in jobs.drain(..) {
            match job {
                Job::Append(m, reply) => batch.push((m, reply)),
                Job::Close(done) => closing = Some(done),
            }
        }
        if !batch.is_empty() {
            write(&mut engine, &mut batch).await;
        }
        if let Some(done) = closing {
            engine.close().await;
            let _ = done.send(());
            return;
        }
    }
}

/// Answers every caller of `batch` (and empties it).
async fn write(engine: &mut impl Batches, batch: &mut Vec<(NewMessage, Reply)>) {
    let messages: Vec<&NewMessage> = batch.iter().map(|(m, _)| m).collect();
    let inserted = engine.insert_batch(&messages).await;
    let mut inserted = match inserted {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, size = batch.len(), "batch insert failed: storing one by one");
            for (message, reply) in batch.drain(..) {
                let _ = reply.send(engine.append_one(&message).await);
            }
            return;
        }
    };
    // From here on the rows are committed: no error may lead back to a retry.
    // Neither engine promises RETURNING's order; ids are the insertion order.
    inserted.sort_unstable_by_key(|r| r.id);
    let ids = match_ids(batch.iter().map(|(m, _)| m), &inserted);
    for ((message, reply), id) in batch.drain(..).zip(ids) {
        let result = match id {
            Some(id) => Ok(Appended {
                message: stored(message, id),
                created: true,
            }),
            None => engine.by_key(&message).await,
        };
        let _ = reply.send(result);
    }
}

/// What a batch statement returns of each stored row.
#[derive(Debug, PartialEq)]
pub struct Inserted {
    pub id: i64,
    pub room: String,
    pub user_key: String,
    pub client_id: Option<String>,
}

impl Inserted {
    /// Reads `id, room_id, user_key, client_id`.
    pub fn read<R>(r: &R) -> Result<Self, sqlx::Error>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
            id: r.try_get(0)?,
            room: r.try_get(1)?,
            user_key: r.try_get(2)?,
            client_id: r.try_get(3)?,
        })
    }
}

/// The id each message of the batch was stored under, or `None` where its
/// idempotency key was taken (earlier, or by an earlier message of the same
/// batch). The inserted rows, by id, are the batch in order less those, so
/// a message was stored exactly when it matches the next inserted row.
fn match_ids<'a>(batch: impl Iterator<Item = &'a NewMessage>, inserted: &[Inserted]) -> Vec<Option<i64>> {
    let mut next = inserted.iter().peekable();
    batch
        .map(|m| {
            let row = next.next_if(|r| {
                r.room == m.room.as_str() && r.user_key == m.sender.user.key() && r.client_id == m.client_id
            })?;
            Some(row.id)
        })
        .collect()
}

/// The message as stored: what the caller sent, under its new id.
pub fn stored(m: NewMessage, id: i64) -> StoredMessage {
    StoredMessage {
        id,
        room_id: m.room.as_str().to_owned(),
        user_id: m.sender.user.json().clone(),
        username: m.sender.profile.username,
        full_name: m.sender.profile.full_name,
        avatar: m.sender.profile.avatar,
        client_id: m.client_id,
        message: m.text,
        kind: m.kind,
        media: m.media,
        audio: m.audio,
        timestamp: m.timestamp,
    }
}

#[cfg(test)]
pub mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::{Identity, MessageKind, Profile, RoomId, UserId};

    pub fn message(room: &str, user: &str, client_id: Option<&str>) -> NewMessage {
        NewMessage {
            room: RoomId::parse(room).expect("room"),
            sender: Identity {
                user: UserId::from_json(&json!(user)).expect("id"),
                profile: Profile::default(),
                token: "t".into(),
            },
            client_id: client_id.map(str::to_owned),
            text: "hi".into(),
            kind: MessageKind::Message,
            media: None,
            audio: None,
            timestamp: 1,
        }
    }

    /// What an engine's batch must do, on its own (not behind the
    /// one-by-one fallback, which would hide a broken statement behind
    /// correct but slow answers).
    pub async fn a_batch_skips_taken_keys(engine: &mut impl Batches) {
        let batch = [
            message("lobby", "1", Some("a")),
            message("lobby", "1", Some("a")),
            message("lobby", "2", None),
            message("chat-1-2", "1", Some("a")),
        ];
        let refs: Vec<&NewMessage> = batch.iter().collect();
        let mut inserted = engine.insert_batch(&refs).await.expect("one commit");
        inserted.sort_unstable_by_key(|r| r.id);
        assert_eq!(inserted.len(), 3);
        assert!(inserted[0].id < inserted[1].id && inserted[1].id < inserted[2].id);
        assert_eq!(
            match_ids(batch.iter(), &inserted),
            [Some(inserted[0].id), None, Some(inserted[1].id), Some(inserted[2].id)]
        );
        let again = engine.insert_batch(&refs).await.expect("one commit");
        assert_eq!(again.len(), 1, "only the keyless message is new");
    }

    fn row(id: i64, room: &str, user: &str, client_id: Option<&str>) -> Inserted {
        Inserted {
            id,
            room: room.into(),
            user_key: user.into(),
            client_id: client_id.map(str::to_owned),
        }
    }

    #[test]
    fn ids_go_to_the_messages_that_were_stored() {
        let batch = [
            message("lobby", "1", None),
            message("lobby", "1", Some("a")), // taken before this batch
            message("lobby", "2", Some("a")),
            message("lobby", "2", Some("a")), // taken earlier in this batch
            message("lobby", "1", None),
            message("chat-1-2", "1", Some("a")),
        ];
        let inserted = [
            row(10, "lobby", "1", None),
            row(11, "lobby", "2", Some("a")),
            row(12, "lobby", "1", None),
            row(13, "chat-1-2", "1", Some("a")),
        ];
        assert_eq!(
            match_ids(batch.iter(), &inserted),
            [Some(10), None, Some(11), None, Some(12), Some(13)]
        );
    }

    #[test]
    fn nothing_inserted_means_every_key_was_taken() {
        let batch = [message("lobby", "1", Some("a")), message("lobby", "1", Some("b"))];
        assert_eq!(match_ids(batch.iter(), &[]), [None, None]);
    }
}
