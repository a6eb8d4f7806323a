//! Load generator for switchboard (and the Node reference server): speaks
//! Engine.IO v4 / Socket.IO v5 over raw WebSockets, runs one bounded scenario
//! against a loopback address, prints one JSON object on stdout.
//!
//!   loadgen idle   --url ws://127.0.0.1:7071 --secret S --server-pid PID --conns 19000
//!   loadgen fanout --url … --rooms 1 --members 100 --senders 10 --rate 50
//!   loadgen dm     --url … --pairs 200 --rate 10
//!   loadgen pusher-idle / pusher-fanout: the same over Pusher protocol 7 (see pusher.rs)

mod proc;
mod proto;
mod pusher;
mod stats;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::{Args, Parser, Subcommand};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::{sync::Semaphore, task::JoinSet, time::MissedTickBehavior};

use crate::{
    proc::Usage,
    proto::{Client, Target},
    stats::{Stats, message_text, now_us},
};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Socket.IO and Pusher-protocol load generator for switchboard benchmarks (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N authenticated connections, each joined to a room, then held idle.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Members per room (connections are grouped into rooms of this size).
        #[arg(long, default_value_t = 10)]
        room_size: usize,
    },
    /// R rooms × C members; S senders each at r msg/s; every member counts deliveries.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Senders in all (spread over the rooms round-robin).
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Messages per second per sender.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// P two-person rooms `chat-A-B`, both sides sending at r msg/s each.
    Dm {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages per second per user.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// N Pusher-protocol connections at /app/{key}, each subscribed to a public channel, held idle.
    PusherIdle {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        app: pusher::App,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Subscribers per channel.
        #[arg(long, default_value_t = 10)]
        channel_size: usize,
    },
    /// C public channels × M Pusher-protocol subscribers; P publishers trigger
    /// through the signed HTTP API at r/s each; every subscriber counts deliveries.
    PusherFanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        app: pusher::App,
        #[arg(long, default_value_t = 1)]
        channels: usize,
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Publishers in all, each one keep-alive HTTP connection (channels round-robin).
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        /// Triggers per second per publisher.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Server address, ws://127.x.y.z:PORT (loopback only). Several,
    /// comma-separated, are the nodes of one cluster: connection i goes to the
    /// (i mod n)-th, so in `dm` the two sides of every pair are on different nodes.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:7071")]
    url: Vec<String>,
    /// HS256 secret the server verifies tokens with (the Socket.IO scenarios).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, default_value = "")]
    secret: String,
    /// Server process id(s), comma-separated, for their CPU (/proc/PID/stat)
    /// and RSS (/proc/PID/status), summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Measured seconds (idle: the hold after everyone is connected).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before the measured window (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds to wait after the last send for outstanding deliveries.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Source addresses 127.0.0.1 .. 127.0.0.K, round-robin.
    #[arg(long, default_value_t = 8)]
    src_addrs: u8,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Message text length (the marker padded with 'x').
    #[arg(long, default_value_t = 64)]
    msg_bytes: usize,
    /// First user id (users are numbered from here).
    #[arg(long, default_value_t = 1)]
    first_user: u64,
    /// Free text copied into the JSON (e.g. which server this is).
    #[arg(long, default_value = "")]
    label: String,
}

fn token(secret: &str, sub: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(json!({ "sub": sub }).to_string());
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key length");
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

fn loopback_targets(urls: &[String]) -> anyhow::Result<Vec<Arc<Target>>> {
    if urls.is_empty() {
        bail!("--url names no server");
    }
    urls.iter().map(|u| loopback_target(u).map(Arc::new)).collect()
}

fn loopback_target(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("ws://")
        .context("--url must be ws://HOST:PORT (plain WebSocket)")?;
    let host_port = rest.split('/').next().unwrap_or_default();
    let addr: SocketAddr = host_port
        .to_socket_addrs()
        .with_context(|| format!("resolve {host_port}"))?
        .find(SocketAddr::is_ipv4)
        .context("no IPv4 address")?;
    if !addr.ip().is_loopback() {
        bail!("refusing {addr}: the load generator only targets loopback (127.0.0.0/8)");
    }
    Ok(Target {
        addr,
        host_header: host_port.to_owned(),
    })
}

fn src_addr(common: &Common, i: usize) -> IpAddr {
    let k = common.src_addrs.max(1) as usize;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % k) as u8))
}

/// Connects `users` (one connection each), `concurrency` at a time, and joins
/// connection i to `rooms[i]`. Returns the clients (None where it failed) and
/// the first few errors.
async fn connect_all(
    common: &Common,
    targets: &[Arc<Target>],
    users: Vec<u64>,
    rooms: Vec<String>,
    stats: &Arc<Stats>,
) -> (Vec<Option<Client>>, u64, Vec<String>) {
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for (i, (user, room)) in users.into_iter().zip(rooms).enumerate() {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let target = targets[i % targets.len()].clone();
        let (stats, tok, src) = (stats.clone(), token(&common.secret, user), src_addr(common, i));
        set.spawn(async move {
            let _permit = permit;
            let r = tokio::time::timeout(proto::CONNECT_TIMEOUT, async {
                let client = proto::connect(&target, src, &tok, stats).await?;
                let data = json!({ "roomId": room }).to_string();
                let ack = client.call("join-room", data, proto::CONNECT_TIMEOUT).await?;
                if !ack.contains("\"ok\":true") {
                    bail!("join-room {room} refused: {ack:.200}");
                }
                anyhow::Ok(client)
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("connect+join timed out")));
            (i, r)
        });
    }
    let mut out: Vec<Option<Client>> = Vec::new();
    let mut failures = 0;
    let mut errors = Vec::new();
    while let Some(done) = set.join_next().await {
        let (i, r) = done.expect("connect task");
        if out.len() <= i {
            out.resize_with(i + 1, || None);
        }
        match r {
            Ok(c) => out[i] = Some(c),
            Err(e) => {
                failures += 1;
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    (out, failures, errors)
}

fn loadavg() -> Value {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = s.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    json!(v)
}

fn base_json(name: &str, common: &Common, params: Value) -> Value {
    json!({
        "scenario": name,
        "label": common.label,
        "url": common.url,
        "params": params,
        "loadavg_start": loadavg(),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    })
}

/// A clientId shaped like the legacy Pusher hook's temporary ids,
/// `temp-<ms>-<random>`, as a migrated app sends them (time-ordered, which is
/// what the server's idempotency index is laid out for); unique per sender.
fn client_id(sender: usize, seq: u64) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("temp-{ms}-{sender:x}z{seq:x}")
}

fn usage_json(server: Option<(&Usage, &Usage)>, me: (&Usage, &Usage)) -> Value {
    let cores = |a: &Usage, b: &Usage| {
        let wall = b.at.duration_since(a.at).as_secs_f64();
        ((b.cpu_secs - a.cpu_secs) / wall * 1000.0).round() / 1000.0
    };
    json!({
        "server_cpu_cores": server.map(|(a, b)| cores(a, b)),
        "server_rss_kb_start": server.map(|(a, _)| a.rss_kb),
        "server_rss_kb_end": server.map(|(_, b)| b.rss_kb),
        "loadgen_cpu_cores": cores(me.0, me.1),
        "loadgen_rss_kb_end": me.1.rss_kb,
        "steal_pct": Usage::steal_pct(me.0, me.1),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    now_us();
    let nofile = proc::raise_nofile();
    let result = match cli.scenario {
        Scenario::Idle {
            common,
            conns,
            room_size,
        } => idle(common, conns, room_size, nofile).await?,
        Scenario::Fanout {
            common,
            rooms,
            members,
            senders,
            rate,
        } => {
            if senders > rooms * members {
                bail!("--senders must be at most rooms × members");
            }
            let users: Vec<usize> = (0..rooms * members).collect();
            let room_of = |i: usize| i % rooms;
            // Sender j: the (j / rooms)-th member of room j % rooms, i.e. connection j.
            let senders: Vec<usize> = (0..senders).collect();
            let room_names = users.iter().map(|&i| format!("fan-{}", room_of(i))).collect();
            let params = json!({ "rooms": rooms, "members": members, "senders": senders.len(), "rate_per_sender": rate,
                "offered_msgs_per_s": senders.len() as f64 * rate,
                "offered_deliveries_per_s": senders.len() as f64 * rate * members as f64 });
            traffic("fanout", common, params, room_names, senders, rate, members as u64).await?
        }
        Scenario::PusherIdle {
            common,
            app,
            conns,
            channel_size,
        } => pusher::idle(common, app, conns, channel_size, nofile).await?,
        Scenario::PusherFanout {
            common,
            app,
            channels,
            members,
            publishers,
            rate,
        } => pusher::fanout(common, app, channels, members, publishers, rate).await?,
        Scenario::Dm { common, pairs, rate } => {
            let mut room_names = Vec::with_capacity(pairs * 2);
            for p in 0..pairs {
                let (a, b) = (common.first_user + 2 * p as u64, common.first_user + 2 * p as u64 + 1);
                room_names.push(format!("chat-{a}-{b}"));
                room_names.push(format!("chat-{a}-{b}"));
            }
            let senders: Vec<usize> = (0..pairs * 2).collect();
            let params = json!({ "pairs": pairs, "rate_per_user": rate,
                "offered_msgs_per_s": (pairs * 2) as f64 * rate,
                "offered_deliveries_per_s": (pairs * 2) as f64 * rate * 2.0 });
            traffic("dm", common, params, room_names, senders, rate, 2).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    // Don't wait for thousands of sockets to close politely.
    std::process::exit(0);
}

async fn idle(common: Common, conns: usize, room_size: usize, nofile: u64) -> anyhow::Result<Value> {
    if common.secret.is_empty() {
        bail!("--secret (JWT_SECRET) is required");
    }
    let targets = loopback_targets(&common.url)?;
    let stats = Arc::new(Stats::new());
    let mut out = base_json(
        "idle",
        &common,
        json!({ "conns": conns, "room_size": room_size, "src_addrs": common.src_addrs, "nofile_limit": nofile }),
    );
    let server_before = Usage::of_all(&common.server_pid)?;
    let me_before = Usage::of_self()?;
    let users: Vec<u64> = (0..conns as u64).map(|i| common.first_user + i).collect();
    let rooms: Vec<String> = (0..conns).map(|i| format!("idle-{}", i / room_size.max(1))).collect();
    let t0 = Instant::now();
    eprintln!("idle: connecting {conns} sockets");
    let (clients, failures, errors) = connect_all(&common, &targets, users, rooms, &stats).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = clients.iter().filter(|c| c.is_some()).count();
    eprintln!(
        "idle: {connected} connected in {connect_secs:.2}s, holding {}s",
        common.duration
    );
    let server_connected = Usage::of_all(&common.server_pid)?;
    let me_connected = Usage::of_self()?;
    tokio::time::sleep(Duration::from_secs_f64(common.duration)).await;
    let server_after = Usage::of_all(&common.server_pid)?;
    let me_after = Usage::of_self()?;
    let still = connected as u64 - stats.disconnects.load(Relaxed).min(connected as u64);
    let o = out.as_object_mut().expect("object");
    o.insert("connected".into(), json!(connected));
    o.insert("connect_failures".into(), json!(failures));
    o.insert("connect_errors".into(), json!(errors));
    o.insert("connect_secs".into(), json!((connect_secs * 1000.0).round() / 1000.0));
    o.insert(
        "connects_per_s".into(),
        json!((connected as f64 / connect_secs).round()),
    );
    o.insert("still_connected_at_end".into(), json!(still));
    o.insert("disconnects".into(), json!(stats.disconnects.load(Relaxed)));
    o.insert(
        "disconnect_reasons".into(),
        json!(*stats.disconnect_reasons.lock().expect("lock")),
    );
    o.insert("events_received".into(), json!(stats.other_events.load(Relaxed)));
    if let (Some(b), Some(a)) = (&server_before, &server_after) {
        let per_conn = (a.rss_kb as f64 - b.rss_kb as f64) * 1024.0 / connected.max(1) as f64;
        o.insert("server_rss_kb_before".into(), json!(b.rss_kb));
        o.insert("server_rss_kb_after".into(), json!(a.rss_kb));
        o.insert("server_rss_bytes_per_conn".into(), json!(per_conn.round()));
    }
    o.insert(
        "connect_phase".into(),
        usage_json(
            server_before.as_ref().zip(server_connected.as_ref()),
            (&me_before, &me_connected),
        ),
    );
    o.insert(
        "hold_phase".into(),
        usage_json(
            server_connected.as_ref().zip(server_after.as_ref()),
            (&me_connected, &me_after),
        ),
    );
    o.insert("loadavg_end".into(), loadavg());
    stats.stopping.store(true, Relaxed);
    drop(clients);
    Ok(out)
}

/// Shared by `fanout` and `dm`: connect everyone into their rooms, then each
/// sender emits `send-message` (with ack) at `rate`/s, open loop, through a
/// warm-up and the measured window; then drain.
async fn traffic(
    name: &str,
    common: Common,
    params: Value,
    rooms: Vec<String>,
    senders: Vec<usize>,
    rate: f64,
    room_size: u64,
) -> anyhow::Result<Value> {
    if rate <= 0.0 {
        bail!("--rate must be positive");
    }
    if common.secret.is_empty() {
        bail!("--secret (JWT_SECRET) is required");
    }
    let targets = loopback_targets(&common.url)?;
    let stats = Arc::new(Stats::new());
    let mut out = base_json(name, &common, params);
    let users: Vec<u64> = (0..rooms.len() as u64).map(|i| common.first_user + i).collect();
    let t0 = Instant::now();
    eprintln!("{name}: connecting {} sockets", users.len());
    let (clients, failures, errors) = connect_all(&common, &targets, users, rooms.clone(), &stats).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = clients.iter().filter(|c| c.is_some()).count();
    if failures > 0 {
        eprintln!("{name}: {failures} connections failed: {errors:?}");
    }
    // Let the join-time user-online bursts settle.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let period = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let measure_start = start + Duration::from_secs_f64(common.warmup);
    let measure_end = measure_start + Duration::from_secs_f64(common.duration);
    let mut tasks = JoinSet::new();
    for (n, &s) in senders.iter().enumerate() {
        let Some(client) = clients.get(s).cloned().flatten() else {
            continue;
        };
        let room = rooms[s].clone();
        let stats = stats.clone();
        let pad = common.msg_bytes;
        // Spread the senders' ticks over one period.
        let offset = period.mul_f64(n as f64 / senders.len() as f64);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval_at(start + offset, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut seq = 0u64;
            loop {
                let at = tick.tick().await;
                if at >= measure_end {
                    break;
                }
                let measured = at >= measure_start;
                seq += 1;
                let sent = now_us();
                let text = message_text(measured, sent, s, seq, pad);
                let data = json!({ "roomId": room, "clientId": client_id(s, seq), "message": text }).to_string();
                let st = stats.clone();
                let cb: proto::AckFn = Box::new(move |ack: &str| st.on_send_ack(ack, measured, sent, room_size));
                stats.inflight.fetch_add(1, Relaxed);
                if measured {
                    stats.sent_measured.fetch_add(1, Relaxed);
                } else {
                    stats.sent_warmup.fetch_add(1, Relaxed);
                }
                if !client.emit("send-message", data, Some(cb)) {
                    stats.inflight.fetch_sub(1, Relaxed);
                    break;
                }
            }
        });
    }
    let server_pid = common.server_pid.clone();
    tokio::time::sleep_until(measure_start).await;
    let measure_start_us = now_us();
    let server_a = Usage::of_all(&server_pid)?;
    let me_a = Usage::of_self()?;
    eprintln!("{name}: measuring for {}s", common.duration);
    tokio::time::sleep_until(measure_end).await;
    let server_b = Usage::of_all(&server_pid)?;
    let me_b = Usage::of_self()?;
    while tasks.join_next().await.is_some() {}

    // Drain: every ack back and every expected delivery in, or time out.
    let drain_start = Instant::now();
    let drain_limit = Duration::from_secs_f64(common.drain);
    loop {
        let done =
            stats.inflight.load(Relaxed) <= 0 && stats.received_measured() >= stats.expected_measured.load(Relaxed);
        if done || drain_start.elapsed() >= drain_limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    stats.stopping.store(true, Relaxed);

    let secs = common.duration;
    let received = stats.received_measured();
    let expected = stats.expected_measured.load(Relaxed);
    let acked = stats.acked_ok_measured.load(Relaxed);
    let sent = stats.sent_measured.load(Relaxed);
    // Rates over the measured window, or over the time it actually took to get
    // the window's messages through when the server fell behind.
    let span = |last_us: u64| secs.max(last_us.saturating_sub(measure_start_us) as f64 / 1e6);
    let deliveries_span = span(stats.last_delivery_us());
    let acks_span = span(stats.last_ack_us.load(Relaxed));
    let o = out.as_object_mut().expect("object");
    o.insert("connections".into(), json!(connected));
    o.insert("connect_failures".into(), json!(failures));
    o.insert("connect_errors".into(), json!(errors));
    o.insert("connect_secs".into(), json!((connect_secs * 1000.0).round() / 1000.0));
    o.insert("duration_s".into(), json!(secs));
    o.insert("warmup_s".into(), json!(common.warmup));
    o.insert("drain_s_used".into(), json!((drain_secs * 1000.0).round() / 1000.0));
    o.insert("sent".into(), json!(sent));
    o.insert("acked_ok".into(), json!(acked));
    o.insert("ack_errors".into(), json!(*stats.ack_errors.lock().expect("lock")));
    o.insert("unacked".into(), json!(stats.inflight.load(Relaxed).max(0)));
    o.insert("expected_deliveries".into(), json!(expected));
    o.insert("received_deliveries".into(), json!(received));
    o.insert("lost_deliveries".into(), json!(expected.saturating_sub(received)));
    o.insert("extra_deliveries".into(), json!(received.saturating_sub(expected)));
    o.insert(
        "loss_ratio".into(),
        json!(if expected > 0 {
            expected.saturating_sub(received) as f64 / expected as f64
        } else {
            0.0
        }),
    );
    o.insert("msgs_acked_per_s".into(), json!((acked as f64 / acks_span).round()));
    o.insert(
        "deliveries_per_s".into(),
        json!((received as f64 / deliveries_span).round()),
    );
    o.insert(
        "rate_span_s".into(),
        json!({ "acks": acks_span, "deliveries": deliveries_span }),
    );
    o.insert("latency".into(), Stats::latency_json(&stats.latency()));
    o.insert(
        "ack_latency".into(),
        Stats::latency_json(&stats.ack_latency.lock().expect("lock")),
    );
    o.insert("disconnects".into(), json!(stats.disconnects.load(Relaxed)));
    o.insert(
        "disconnect_reasons".into(),
        json!(*stats.disconnect_reasons.lock().expect("lock")),
    );
    o.insert("bad_frames".into(), json!(stats.bad_frames.load(Relaxed)));
    o.insert("other_events".into(), json!(stats.other_events.load(Relaxed)));
    o.insert(
        "usage".into(),
        usage_json(server_a.as_ref().zip(server_b.as_ref()), (&me_a, &me_b)),
    );
    o.insert("loadavg_end".into(), loadavg());
    drop(clients);
    Ok(out)
}
