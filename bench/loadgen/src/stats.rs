//! Counters and latency histograms shared by every connection task. The
//! per-delivery tallies live in per-thread shards, summed when read.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process's first call: the clock embedded in message
/// text and read back at the receivers (one process, one monotonic clock).
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The marker leading every benchmark message: `M` (measured) or `W` (warm-up).
pub fn message_text(measured: bool, sent_us: u64, sender: usize, seq: u64, pad_to: usize) -> String {
    let mut s = format!("{}{sent_us}.{sender}.{seq}.", if measured { 'M' } else { 'W' });
    while s.len() < pad_to {
        s.push('x');
    }
    s
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// One thread's tallies of `new-message` deliveries. At a million deliveries a
/// second, counters and a histogram shared by both cores cost the load
/// generator more than parsing the frames (their cache lines bounce between
/// the cores); each worker thread writes its own shard instead, and only the
/// report reads them all. Aligned so two shards never share a cache line.
#[repr(align(128))]
struct Shard {
    received_measured: AtomicU64,
    last_delivery_us: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Every shard ever made; one run per process, so one list per process.
static SHARDS: Mutex<Vec<Arc<Shard>>> = Mutex::new(Vec::new());

thread_local! {
    static SHARD: Arc<Shard> = {
        let shard = Arc::new(Shard {
            received_measured: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        });
        SHARDS.lock().expect("shards lock").push(shard.clone());
        shard
    };
}

fn shards() -> Vec<Arc<Shard>> {
    SHARDS.lock().expect("shards lock").clone()
}

pub struct Stats {
    pub ack_latency: Mutex<Histogram<u64>>,
    pub sent_measured: AtomicU64,
    pub sent_warmup: AtomicU64,
    pub acked_ok_measured: AtomicU64,
    pub acked_ok_warmup: AtomicU64,
    pub expected_measured: AtomicU64,
    pub ack_errors: Mutex<BTreeMap<String, u64>>,
    pub inflight: AtomicI64,
    pub last_ack_us: AtomicU64,
    pub disconnects: AtomicU64,
    pub disconnect_reasons: Mutex<Vec<String>>,
    pub other_events: AtomicU64,
    pub unacked_at_close: AtomicU64,
    pub stopping: AtomicBool,
    pub bad_frames: AtomicU64,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            ack_latency: Mutex::new(histogram()),
            sent_measured: AtomicU64::new(0),
            sent_warmup: AtomicU64::new(0),
            acked_ok_measured: AtomicU64::new(0),
            acked_ok_warmup: AtomicU64::new(0),
            expected_measured: AtomicU64::new(0),
            ack_errors: Mutex::new(BTreeMap::new()),
            inflight: AtomicI64::new(0),
            last_ack_us: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            disconnect_reasons: Mutex::new(Vec::new()),
            other_events: AtomicU64::new(0),
            unacked_at_close: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            bad_frames: AtomicU64::new(0),
        }
    }

    /// `rest` is a `42` packet without its type: `["event",data]`.
    pub fn on_event(&self, rest: &str) {
        if !rest.starts_with("[\"new-message\"") {
            self.other_events.fetch_add(1, Relaxed);
            return;
        }
        const KEY: &str = "\"message\":\"";
        let Some(at) = rest.find(KEY) else {
            self.bad_frames.fetch_add(1, Relaxed);
            return;
        };
        self.on_marker(&rest[at + KEY.len()..]);
    }

    /// A delivered benchmark text (from its marker on, to the end of the
    /// frame): a measured one counts, with its latency; a warm-up one doesn't.
    pub fn on_marker(&self, text: &str) {
        let measured = match text.as_bytes().first() {
            Some(b'M') => true,
            Some(b'W') => false,
            _ => {
                self.other_events.fetch_add(1, Relaxed);
                return;
            }
        };
        let digits = text[1..].bytes().take_while(u8::is_ascii_digit).count();
        let Ok(sent) = text[1..1 + digits].parse::<u64>() else {
            self.bad_frames.fetch_add(1, Relaxed);
            return;
        };
        // Warm-up deliveries count for nothing.
        if !measured {
            return;
        }
        let now = now_us();
        SHARD.with(|shard| {
            shard.received_measured.fetch_add(1, Relaxed);
            shard.last_delivery_us.fetch_max(now, Relaxed);
            let _ = shard
                .latency
                .lock()
                .expect("latency lock")
                .record(now.saturating_sub(sent).max(1));
        });
    }

    /// Measured `new-message` deliveries received so far, on every thread.
    pub fn received_measured(&self) -> u64 {
        shards().iter().map(|s| s.received_measured.load(Relaxed)).sum()
    }

    /// When the last measured delivery arrived (µs on [`now_us`]'s clock).
    pub fn last_delivery_us(&self) -> u64 {
        shards()
            .iter()
            .map(|s| s.last_delivery_us.load(Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// The delivery latencies of every thread, in one histogram.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in shards() {
            all.add(&*shard.latency.lock().expect("latency lock"))
                .expect("histograms of the same bounds add");
        }
        all
    }

    /// An ack to `send-message`: `[{"ok":true,…}]` or `[{"ok":false,"error":{"code":…}}]`.
    pub fn on_send_ack(&self, ack: &str, measured: bool, sent_us: u64, room_size: u64) {
        let result = if ack.contains("\"ok\":true") {
            Ok(())
        } else {
            Err(serde_json::from_str::<Value>(ack)
                .ok()
                .and_then(|v| v[0]["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("unparsed: {ack:.60}")))
        };
        self.on_published(result, measured, sent_us, room_size);
    }

    /// A send's outcome (an ack, or an HTTP API answer): on success the
    /// `fanout` deliveries it owes become expected; a failure is tallied by its code.
    pub fn on_published(&self, result: Result<(), String>, measured: bool, sent_us: u64, fanout: u64) {
        self.inflight.fetch_sub(1, Relaxed);
        let now = now_us();
        if let Err(code) = result {
            *self.ack_errors.lock().expect("errors lock").entry(code).or_default() += 1;
        } else {
            if measured {
                self.acked_ok_measured.fetch_add(1, Relaxed);
                self.expected_measured.fetch_add(fanout, Relaxed);
                self.last_ack_us.fetch_max(now, Relaxed);
                let _ = self
                    .ack_latency
                    .lock()
                    .expect("ack lock")
                    .record(now.saturating_sub(sent_us).max(1));
            } else {
                self.acked_ok_warmup.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn disconnected(&self, reason: &str) {
        self.disconnects.fetch_add(1, Relaxed);
        let mut reasons = self.disconnect_reasons.lock().expect("reasons lock");
        if reasons.len() < 5 {
            reasons.push(reason.to_owned());
        }
    }

    pub fn latency_json(h: &Histogram<u64>) -> Value {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        if h.is_empty() {
            return json!(null);
        }
        json!({
            "count": h.len(),
            "p50_ms": ms(h.value_at_quantile(0.50)),
            "p90_ms": ms(h.value_at_quantile(0.90)),
            "p99_ms": ms(h.value_at_quantile(0.99)),
            "p999_ms": ms(h.value_at_quantile(0.999)),
            "max_ms": ms(h.max()),
            "mean_ms": (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
        })
    }
}
