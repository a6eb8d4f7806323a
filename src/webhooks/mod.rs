//! Pusher-style webhooks: `channel_occupied`, `channel_vacated`,
//! `member_added`, `member_removed` and `client_event`, POSTed as
//! `{"time_ms", "events"}` with `X-Pusher-Key` and `X-Pusher-Signature`
//! (hex HMAC-SHA256 of the raw body with the app secret).
//!
//! [`Webhooks::push`] never waits: events go into a queue per URL bounded in
//! events and bytes, and one task per URL sends them (batched when
//! `WEBHOOK_BATCH_MS` > 0). A full queue drops the event and counts it, so a
//! slow or dead receiver can never slow room delivery. A failed request is
//! retried with exponential backoff on its own task for up to
//! `WEBHOOK_RETRY_SECS`, so it does not hold the requests behind it either.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::{clock, domain::RoomId, metrics::Metrics, pusher::Credentials};

/// Most events in one batched request.
pub const MAX_BATCH_EVENTS: usize = 100;
/// Requests being retried at once, per URL; past it a failed request is given up.
const MAX_RETRYING: usize = 256;
/// First retry delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The event names Pusher sends, which `WEBHOOK_EVENTS` may list.
pub const EVENT_NAMES: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

/// Webhook settings for the one app.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub urls: Vec<url::Url>,
    /// Event names sent; empty sends all.
    pub events: HashSet<String>,
    /// Zero: one request per event.
    pub batch: Duration,
    pub retry_for: Duration,
    pub timeout: Duration,
    pub queue_events: usize,
    pub queue_bytes: usize,
}

/// The delay before retry number `attempt` (1-based): 1 s, 2 s, 4 s … capped at a minute.
pub fn backoff(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// One queued event: its JSON, already encoded.
struct Queued(String);

struct Target {
    tx: mpsc::Sender<Queued>,
    /// Bytes of events queued for this URL, bounded by `queue_bytes`.
    bytes: Arc<AtomicUsize>,
}

struct Inner {
    targets: Vec<Target>,
    events: HashSet<String>,
    queue_bytes: usize,
    metrics: Arc<Metrics>,
}

/// The webhook sink; cheap to clone. [`Webhooks::disabled`] accepts and ignores everything.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

impl Webhooks {
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Starts one sender task per URL (must run inside a Tokio runtime).
    pub fn start(settings: &WebhookSettings, credentials: Credentials, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        if settings.urls.is_empty() {
            return Ok(Self::disabled());
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let sender = Arc::new(Sender {
            client,
            credentials,
            metrics: metrics.clone(),
            retry_for: settings.retry_for,
        });
        let targets = settings
            .urls
            .iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(settings.queue_events.max(1));
                let bytes = Arc::new(AtomicUsize::new(0));
                let worker = Worker {
                    url: url.clone(),
                    rx,
                    bytes: bytes.clone(),
                    batch: settings.batch,
                    sender: sender.clone(),
                    retrying: Arc::new(Semaphore::new(MAX_RETRYING)),
                };
                tokio::spawn(worker.run());
                Target { tx, bytes }
            })
            .collect();
        Ok(Self {
            inner: Some(Arc::new(Inner {
                targets,
                events: settings.events.clone(),
                queue_bytes: settings.queue_bytes,
                metrics,
            })),
        })
    }

    fn wants(&self, name: &str) -> Option<&Inner> {
        let inner = self.inner.as_deref()?;
        (inner.events.is_empty() || inner.events.contains(name)).then_some(inner)
    }

    /// Queues `event` for every URL; never waits. Dropped (and counted) when a queue is full.
    fn push(&self, name: &'static str, event: impl FnOnce() -> Value) {
        let Some(inner) = self.wants(name) else { return };
        let encoded = event().to_string();
        for target in &inner.targets {
            let size = encoded.len();
            let queued = target.bytes.fetch_add(size, Ordering::Relaxed);
            let fits = queued + size <= inner.queue_bytes;
            if !fits || target.tx.try_send(Queued(encoded.clone())).is_err() {
                target.bytes.fetch_sub(size, Ordering::Relaxed);
                inner.metrics.webhooks_dropped.inc();
                let dropped = inner.metrics.webhooks_dropped.get();
                // Once, then every thousandth: a dead receiver must not flood the log too.
                if dropped == 1 || dropped % 1000 == 0 {
                    tracing::warn!(event = name, dropped, "webhook queue full; dropping events");
                }
            }
        }
    }

    pub fn channel_occupied(&self, room: &RoomId) {
        self.push(
            "channel_occupied",
            || json!({ "name": "channel_occupied", "channel": room }),
        );
    }

    pub fn channel_vacated(&self, room: &RoomId) {
        self.push(
            "channel_vacated",
            || json!({ "name": "channel_vacated", "channel": room }),
        );
    }

    /// Presence channels only, as Pusher: other rooms have no member list to report.
    pub fn member(&self, room: &RoomId, user_id: &str, added: bool) {
        if room.kind() != crate::domain::RoomKind::Presence {
            return;
        }
        let name = if added { "member_added" } else { "member_removed" };
        self.push(name, || json!({ "name": name, "channel": room, "user_id": user_id }));
    }

    /// A Pusher client event (`client-*`); `data` is sent as a string, as Pusher does.
    pub fn client_event(&self, room: &RoomId, event: &str, data: &Value, socket_id: &str, user_id: Option<&str>) {
        self.push("client_event", || {
            let data = match data {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut body = json!({
                "name": "client_event",
                "channel": room,
                "event": event,
                "data": data,
                "socket_id": socket_id,
            });
            if let Some(user) = user_id {
                body["user_id"] = Value::String(user.to_owned());
            }
            body
        });
    }
}

/// Builds and signs the request body for a batch of encoded events.
pub fn body(time_ms: i64, events: &[String]) -> String {
    format!("{{\"time_ms\":{time_ms},\"events\":[{}]}}", events.join(","))
}

struct Sender {
    client: reqwest::Client,
    credentials: Credentials,
    metrics: Arc<Metrics>,
    retry_for: Duration,
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("receiver answered {0}")]
    Status(reqwest::StatusCode),
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
}

impl Sender {
    async fn post(&self, url: &url::Url, body: &str) -> Result<(), SendError> {
        let response = self
            .client
            .post(url.clone())
            .header("Content-Type", "application/json")
            .header("X-Pusher-Key", &self.credentials.key)
            .header("X-Pusher-Signature", self.credentials.sign(body))
            .body(body.to_owned())
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::Status(status))
        }
    }

    /// Retries `body` with backoff until it is accepted or `retry_for` has passed.
    async fn retry(&self, url: &url::Url, body: String) {
        let started = tokio::time::Instant::now();
        let mut attempt = 1;
        loop {
            let wait = backoff(attempt);
            if started.elapsed() + wait > self.retry_for {
                self.metrics.webhooks_failed.inc();
                tracing::warn!(%url, attempts = attempt, "webhook given up after the retry window");
                return;
            }
            tokio::time::sleep(wait).await;
            self.metrics.webhooks_retried.inc();
            match self.post(url, &body).await {
                Ok(()) => {
                    self.metrics.webhooks_sent.inc();
                    return;
                }
                Err(e) => tracing::debug!(%url, attempt, error = %e, "webhook retry failed"),
            }
            attempt += 1;
        }
    }
}

struct Worker {
    url: url::Url,
    rx: mpsc::Receiver<Queued>,
    bytes: Arc<AtomicUsize>,
    batch: Duration,
    sender: Arc<Sender>,
    retrying: Arc<Semaphore>,
}

impl Worker {
    /// Sends queued events in order until every [`Webhooks`] handle is gone.
    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut events = vec![self.take(first)];
            if !self.batch.is_zero() {
                let deadline = tokio::time::Instant::now() + self.batch;
                while events.len() < MAX_BATCH_EVENTS {
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(next)) => events.push(self.take(next)),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            let body = body(clock::now_ms(), &events);
            match self.sender.post(&self.url, &body).await {
                Ok(()) => {
                    self.sender.metrics.webhooks_sent.inc();
                }
                Err(e) => {
                    tracing::info!(url = %self.url, error = %e, "webhook failed; retrying with backoff");
                    // Retries run on their own, so one bad request does not hold the
                    // ones behind it; past MAX_RETRYING the oldest are still going
                    // and this one is given up.
                    match self.retrying.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (sender, url) = (self.sender.clone(), self.url.clone());
                            tokio::spawn(async move {
                                sender.retry(&url, body).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            self.sender.metrics.webhooks_failed.inc();
                            tracing::warn!(url = %self.url, "too many webhooks retrying; giving this one up");
                        }
                    }
                }
            }
        }
    }

    fn take(&self, queued: Queued) -> String {
        self.bytes.fetch_sub(queued.0.len(), Ordering::Relaxed);
        queued.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_up_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(200), MAX_BACKOFF, "no overflow");
    }

    #[test]
    fn body_is_pusher_shaped() {
        let events = vec![json!({ "name": "channel_occupied", "channel": "a" }).to_string()];
        let parsed: Value = serde_json::from_str(&body(42, &events)).expect("json");
        assert_eq!(
            parsed,
            json!({ "time_ms": 42, "events": [{ "name": "channel_occupied", "channel": "a" }] })
        );
    }

    fn settings(queue_events: usize, queue_bytes: usize) -> WebhookSettings {
        WebhookSettings {
            // Nothing listens on port 9 of the loopback; the worker's requests fail fast.
            urls: vec![url::Url::parse("http://127.0.0.1:9/hook").expect("url")],
            events: HashSet::new(),
            batch: Duration::from_secs(3600),
            retry_for: Duration::ZERO,
            timeout: Duration::from_secs(1),
            queue_events,
            queue_bytes,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let metrics = Arc::new(Metrics::new());
        let hooks =
            Webhooks::start(&settings(4, 1 << 20), Credentials::new("1", "k", "s"), metrics.clone()).expect("start");
        let room = RoomId::parse("lobby").expect("room");
        // The worker holds the first event in its batch window; the queue takes 4 more.
        for _ in 0..20 {
            hooks.channel_occupied(&room);
        }
        let dropped = metrics.webhooks_dropped.get();
        assert!((15..=16).contains(&dropped), "dropped {dropped}");
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_the_queue_too() {
        let metrics = Arc::new(Metrics::new());
        let hooks =
            Webhooks::start(&settings(1000, 200), Credentials::new("1", "k", "s"), metrics.clone()).expect("start");
        let room = RoomId::parse("lobby").expect("room");
        for _ in 0..20 {
            hooks.channel_vacated(&room);
        }
        // Each event is 50 bytes: four fit in 200 (one more may already be taken by the worker).
        let dropped = metrics.webhooks_dropped.get();
        assert!((15..=16).contains(&dropped), "dropped {dropped}");
    }

    #[test]
    fn member_events_are_for_presence_channels_only() {
        let metrics = Arc::new(Metrics::new());
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let _guard = rt.enter();
        let hooks =
            Webhooks::start(&settings(1, 1 << 20), Credentials::new("1", "k", "s"), metrics.clone()).expect("start");
        let plain = RoomId::parse("lobby").expect("room");
        for _ in 0..5 {
            hooks.member(&plain, "5", true);
        }
        assert_eq!(
            metrics.webhooks_dropped.get(),
            0,
            "nothing queued for a non-presence room"
        );
        let presence = RoomId::parse("presence-lobby").expect("room");
        for _ in 0..3 {
            hooks.member(&presence, "5", true);
        }
        // The worker never ran (nothing drives this runtime): one queued, two dropped.
        assert_eq!(metrics.webhooks_dropped.get(), 2);
    }
}
