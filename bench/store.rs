//! The store alone, without sockets: `cargo bench --bench store`.
//!
//! CALLERS concurrent callers (default 1,000) each append MESSAGES / CALLERS
//! messages (default 100,000 in all) to their own direct room, one after the
//! other, as chatting pairs do, each with a clientId (so the idempotency
//! index is written too). `CLIENT_IDS=temp` (the default) shapes them like the
//! legacy Pusher hook's temporary ids, `temp-<ms>-<random>`, time-ordered;
//! `CLIENT_IDS=uuid` makes them random (UUID v4 style), the worst case for an
//! index. Prints appends per second, append latency
//! percentiles, and the machine's steal time over the run: on a shared VM a
//! run with much steal is not comparable with one without.
//!
//! The store is a fresh SQLite file in a temporary folder, or
//! `BENCH_DATABASE_URL` (e.g. a throwaway Postgres database) when set.

use std::{sync::Arc, time::Instant};

use serde_json::json;
use switchboard::{
    domain::{Identity, MessageKind, Profile, RoomId, UserId},
    store::{self, NewMessage, Store},
};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Total and steal jiffies of all CPUs, from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    Some((fields.iter().take(8).sum(), *fields.get(7)?))
}

fn message(room: &RoomId, user: usize, n: usize) -> NewMessage {
    NewMessage {
        room: room.clone(),
        sender: Identity {
            user: UserId::from_json(&json!(user)).expect("an integer is an id"),
            profile: Profile {
                username: Some(format!("user{user}")),
                full_name: None,
                avatar: None,
            },
            token: "t".into(),
        },
        client_id: Some(client_id()),
        text: format!("message {n} from {user}: a line of ordinary chat text"),
        kind: MessageKind::Message,
        media: None,
        audio: None,
        timestamp: 1_764_000_000_000 + n as i64,
    }
}

fn client_id() -> String {
    if std::env::var("CLIENT_IDS").is_ok_and(|v| v == "uuid") {
        let r: u128 = rand::random();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            r >> 96,
            (r >> 80) & 0xffff,
            (r >> 68) & 0xfff,
            (r >> 52) & 0xffff,
            r & 0xffff_ffff_ffff
        )
    } else {
        format!(
            "temp-{}-{:06x}",
            switchboard::clock::now_ms(),
            rand::random::<u32>() & 0xff_ffff
        )
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let callers = env("CALLERS", 1_000).max(1);
    let total = env("MESSAGES", 100_000).max(callers);
    let per_caller = total / callers;
    let dir = tempfile::tempdir()?;
    let url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}/bench.sqlite", dir.path().display()));
    let engine = url.split(':').next().unwrap_or("?").to_owned();
    let store: Arc<dyn Store> = store::open(&url).await?;

    let cpu_before = cpu_jiffies();
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move {
                let (a, b) = (2 * c + 1, 2 * c + 2);
                let room = RoomId::parse(&format!("chat-{a}-{b}")).expect("a direct room");
                let mut latencies = Vec::with_capacity(per_caller);
                for n in 0..per_caller {
                    let sender = if n % 2 == 0 { a } else { b };
                    let t = Instant::now();
                    store.append(message(&room, sender, n)).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(per_caller * callers);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let steal = match (cpu_before, cpu_jiffies()) {
        (Some((t0, s0)), Some((t1, s1))) if t1 > t0 => 100.0 * (s1 - s0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };
    store.close().await;

    latencies.sort_by(f64::total_cmp);
    let n = latencies.len();
    println!(
        "store {engine} ({} ids): {n} appends from {callers} callers in {elapsed:.2} s = {:.0} msg/s; \
         append ms p50 {:.2} p99 {:.2} max {:.2}; steal {steal:.1}%",
        std::env::var("CLIENT_IDS").unwrap_or_else(|_| "temp".into()),
        n as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[n - 1],
    );
    Ok(())
}
