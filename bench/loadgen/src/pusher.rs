//! Pusher protocol 7 over a raw WebSocket at `/app/{key}` (connect, subscribe
//! to a public channel, answer pings, count `bench` events) and the Pusher
//! HTTP API's signed `POST /apps/{id}/events` over plain keep-alive HTTP/1.1:
//! the same load against switchboard and Soketi, no client library.
//!
//!   loadgen pusher-idle   --url ws://127.0.0.1:6001 --app-id A --key K --app-secret S --conns 5000
//!   loadgen pusher-fanout --url … --channels 1 --members 100 --publishers 10 --rate 50

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, mpsc},
    task::JoinSet,
    time::{MissedTickBehavior, timeout},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use crate::{
    Common, base_json, loadavg, loopback_targets,
    proc::Usage,
    proto::{CONNECT_TIMEOUT, Target},
    src_addr,
    stats::{Stats, message_text, now_us},
    usage_json,
};

/// The event name the publishers trigger and the subscribers count.
const EVENT: &str = "bench";

/// The app both servers are configured with.
#[derive(Args, Clone)]
pub struct App {
    #[arg(long, env = "PUSHER_APP_ID")]
    pub app_id: String,
    #[arg(long, env = "PUSHER_KEY")]
    pub key: String,
    #[arg(long, env = "PUSHER_SECRET", hide_env_values = true)]
    pub app_secret: String,
}

/// Keeps one subscriber's task alive; dropping it closes the socket.
pub struct Subscriber {
    _close: mpsc::Sender<()>,
}

type Ws = WebSocketStream<TcpStream>;

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => bail!("closed by server: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

async fn tcp_from(src: IpAddr, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))
        .with_context(|| format!("bind {src}"))?;
    let tcp = sock
        .connect(addr)
        .await
        .with_context(|| format!("tcp connect from {src}"))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Connects as pusher-js 8 does, waits for `pusher:connection_established`,
/// subscribes to the public `channel` and waits for its
/// `pusher_internal:subscription_succeeded`, then hands the socket to a task.
pub async fn subscribe(
    target: &Target,
    src: IpAddr,
    key: &str,
    channel: &str,
    stats: Arc<Stats>,
) -> anyhow::Result<Subscriber> {
    let tcp = tcp_from(src, target.addr).await?;
    let url = format!(
        "ws://{}/app/{key}?protocol=7&client=js&version=8.4.0&flash=false",
        target.host_header
    );
    let mut config = WebSocketConfig::default();
    config.write_buffer_size = 0;
    config.read_buffer_size = 4096;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .context("websocket handshake")?;
    let first = next_text(&mut ws).await?;
    if !first.contains("pusher:connection_established") {
        bail!("expected pusher:connection_established, got {first:.200}");
    }
    let sub = json!({ "event": "pusher:subscribe", "data": { "channel": channel } }).to_string();
    ws.send(Message::text(sub)).await?;
    loop {
        let text = next_text(&mut ws).await?;
        if text.contains("pusher_internal:subscription_succeeded") {
            break;
        } else if text.contains("pusher:ping") {
            ws.send(Message::text(PONG)).await?;
        } else if text.contains("pusher:error") || text.contains("pusher:subscription_error") {
            bail!("subscribe {channel} refused: {text:.200}");
        } else {
            stats.other_events.fetch_add(1, Relaxed);
        }
    }
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(run(ws, rx, stats));
    Ok(Subscriber { _close: tx })
}

const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// The subscriber's task: answers pings, hands `bench` events' data to [`Stats`].
async fn run(mut ws: Ws, mut close: mpsc::Receiver<()>, stats: Arc<Stats>) {
    const DATA: &str = "\"data\":\"";
    let reason: String = loop {
        tokio::select! {
            biased;
            inbound = ws.next() => match inbound {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    // Both servers write `"event":"bench"` with no space; the data is the
                    // marker text itself, a JSON string without escapes.
                    if t.contains("\"event\":\"bench\"") {
                        match t.find(DATA) {
                            Some(at) => stats.on_marker(&t[at + DATA.len()..]),
                            None => {
                                stats.bad_frames.fetch_add(1, Relaxed);
                            }
                        }
                    } else if t.contains("pusher:ping") {
                        if let Err(e) = ws.send(Message::text(PONG)).await {
                            break format!("write pong: {e}");
                        }
                    } else {
                        stats.other_events.fetch_add(1, Relaxed);
                    }
                }
                Some(Ok(Message::Close(f))) => break format!("close frame {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("read: {e}"),
                None => break "stream ended".into(),
            },
            _ = close.recv() => {
                let _ = ws.close(None).await;
                return;
            }
        }
    };
    if !stats.stopping.load(Relaxed) {
        stats.disconnected(&reason);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The query string of a signed Pusher HTTP API request (auth version 1.0):
/// the params sorted by name, then `auth_signature`, the HMAC-SHA256 of
/// `METHOD\nPATH\nsorted-query` under the app secret.
pub fn signed_query(app: &App, method: &str, path: &str, body: &[u8], timestamp: u64) -> String {
    let md5 = hex(&Md5::digest(body));
    let query = format!(
        "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={md5}",
        app.key
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(app.app_secret.as_bytes()).expect("hmac takes any key length");
    mac.update(format!("{method}\n{path}\n{query}").as_bytes());
    format!("{query}&auth_signature={}", hex(&mac.finalize().into_bytes()))
}

/// One HTTP/1.1 connection to the HTTP API, one request at a time; kept alive
/// where the server allows it (Soketi answers every request with
/// `Connection: close`, so its publishers reconnect for each trigger).
pub struct Publisher {
    conn: Option<BufReader<TcpStream>>,
    target: SocketAddr,
    src: IpAddr,
    host_header: String,
    app: App,
}

impl Publisher {
    pub async fn connect(target: &Target, src: IpAddr, app: App) -> anyhow::Result<Self> {
        let tcp = tcp_from(src, target.addr).await?;
        Ok(Self {
            conn: Some(BufReader::new(tcp)),
            target: target.addr,
            src,
            host_header: target.host_header.clone(),
            app,
        })
    }

    /// `POST /apps/{id}/events` for one channel; the answer's status, and its body when not 200.
    pub async fn trigger(&mut self, channel: &str, data: &str) -> anyhow::Result<(u16, String)> {
        let body = json!({ "name": EVENT, "channels": [channel], "data": data }).to_string();
        let path = format!("/apps/{}/events", self.app.app_id);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let query = signed_query(&self.app, "POST", &path, body.as_bytes(), ts);
        let req = format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host_header,
            body.len()
        );
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => BufReader::new(tcp_from(self.src, self.target).await?),
        };
        let conn = self.conn.insert(conn);
        conn.get_mut().write_all(req.as_bytes()).await?;
        let (status, body, close) = Self::read_response(conn).await?;
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }

    async fn read_response(conn: &mut BufReader<TcpStream>) -> anyhow::Result<(u16, String, bool)> {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed before the answer");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:.80}"))?;
        let (mut length, mut chunked, mut close) = (0usize, false, false);
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().context("bad content-length")?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await?;
                let size =
                    usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).context("bad chunk size")?;
                let mut chunk = vec![0; size + 2];
                conn.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            conn.read_exact(&mut body).await?;
        }
        let text = if status == 200 {
            String::new()
        } else {
            String::from_utf8_lossy(&body).into_owned()
        };
        Ok((status, text, close))
    }
}

/// Subscribes connection i to `channels[i]`, `concurrency` at a time.
async fn subscribe_all(
    common: &Common,
    app: &App,
    targets: &[Arc<Target>],
    channels: &[String],
    stats: &Arc<Stats>,
) -> (Vec<Subscriber>, u64, Vec<String>) {
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for (i, channel) in channels.iter().enumerate() {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let target = targets[i % targets.len()].clone();
        let (stats, key, channel, src) = (stats.clone(), app.key.clone(), channel.clone(), src_addr(common, i));
        set.spawn(async move {
            let _permit = permit;
            timeout(CONNECT_TIMEOUT, subscribe(&target, src, &key, &channel, stats))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("connect+subscribe timed out")))
        });
    }
    let (mut subs, mut failures, mut errors) = (Vec::new(), 0, Vec::new());
    while let Some(done) = set.join_next().await {
        match done.expect("subscribe task") {
            Ok(s) => subs.push(s),
            Err(e) => {
                failures += 1;
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    (subs, failures, errors)
}

/// N connections, each subscribed to a public channel (`channel_size` per
/// channel), held idle: server RSS per connection.
pub async fn idle(common: Common, app: App, conns: usize, channel_size: usize, nofile: u64) -> anyhow::Result<Value> {
    let targets = loopback_targets(&common.url)?;
    let stats = Arc::new(Stats::new());
    let mut out = base_json(
        "pusher-idle",
        &common,
        json!({ "conns": conns, "channel_size": channel_size, "src_addrs": common.src_addrs, "nofile_limit": nofile }),
    );
    let channels: Vec<String> = (0..conns)
        .map(|i| format!("idle-{}", i / channel_size.max(1)))
        .collect();
    let server_before = Usage::of_all(&common.server_pid)?;
    let me_before = Usage::of_self()?;
    let t0 = Instant::now();
    eprintln!("pusher-idle: connecting {conns} sockets");
    let (subs, failures, errors) = subscribe_all(&common, &app, &targets, &channels, &stats).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = subs.len();
    eprintln!(
        "pusher-idle: {connected} subscribed in {connect_secs:.2}s, holding {}s",
        common.duration
    );
    let server_connected = Usage::of_all(&common.server_pid)?;
    let me_connected = Usage::of_self()?;
    tokio::time::sleep(Duration::from_secs_f64(common.duration)).await;
    let server_after = Usage::of_all(&common.server_pid)?;
    let me_after = Usage::of_self()?;
    let o = out.as_object_mut().expect("object");
    o.insert("connected".into(), json!(connected));
    o.insert("connect_failures".into(), json!(failures));
    o.insert("connect_errors".into(), json!(errors));
    o.insert("connect_secs".into(), json!((connect_secs * 1000.0).round() / 1000.0));
    o.insert(
        "connects_per_s".into(),
        json!((connected as f64 / connect_secs).round()),
    );
    o.insert(
        "still_connected_at_end".into(),
        json!(connected as u64 - stats.disconnects.load(Relaxed).min(connected as u64)),
    );
    o.insert("disconnects".into(), json!(stats.disconnects.load(Relaxed)));
    o.insert(
        "disconnect_reasons".into(),
        json!(*stats.disconnect_reasons.lock().expect("lock")),
    );
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
    drop(subs);
    Ok(out)
}

/// C public channels × M subscribers; P publishers (each its own keep-alive
/// HTTP connection, channels round-robin) trigger at r/s each, open loop. A
/// delivery's latency runs from the trigger's scheduled time (so a publisher
/// held up by a slow answer still counts the wait) to its arrival.
pub async fn fanout(
    common: Common,
    app: App,
    channels: usize,
    members: usize,
    publishers: usize,
    rate: f64,
) -> anyhow::Result<Value> {
    if rate <= 0.0 {
        bail!("--rate must be positive");
    }
    if channels == 0 || members == 0 || publishers == 0 {
        bail!("--channels, --members and --publishers must be at least 1");
    }
    let targets = loopback_targets(&common.url)?;
    let stats = Arc::new(Stats::new());
    let params = json!({ "channels": channels, "members": members, "publishers": publishers,
        "rate_per_publisher": rate, "offered_msgs_per_s": publishers as f64 * rate,
        "offered_deliveries_per_s": publishers as f64 * rate * members as f64 });
    let mut out = base_json("pusher-fanout", &common, params);
    let names: Vec<String> = (0..channels * members)
        .map(|i| format!("fan-{}", i % channels))
        .collect();
    let t0 = Instant::now();
    eprintln!("pusher-fanout: connecting {} sockets", names.len());
    let (subs, failures, errors) = subscribe_all(&common, &app, &targets, &names, &stats).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    if failures > 0 {
        eprintln!("pusher-fanout: {failures} connections failed: {errors:?}");
    }
    let subscribed = subs.len();
    let mut pubs = Vec::with_capacity(publishers);
    for p in 0..publishers {
        let target = &targets[p % targets.len()];
        pubs.push(Publisher::connect(target, src_addr(&common, p), app.clone()).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let period = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let measure_start = start + Duration::from_secs_f64(common.warmup);
    let measure_end = measure_start + Duration::from_secs_f64(common.duration);
    let mut tasks = JoinSet::new();
    for (p, mut publisher) in pubs.into_iter().enumerate() {
        let channel = format!("fan-{}", p % channels);
        let stats = stats.clone();
        let pad = common.msg_bytes;
        let offset = period.mul_f64(p as f64 / publishers as f64);
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
                // The scheduled time on now_us()'s clock: a late tick counts its lateness.
                let late = tokio::time::Instant::now().saturating_duration_since(at);
                let sent = now_us().saturating_sub(late.as_micros() as u64);
                let text = message_text(measured, sent, p, seq, pad);
                stats.inflight.fetch_add(1, Relaxed);
                if measured {
                    stats.sent_measured.fetch_add(1, Relaxed);
                } else {
                    stats.sent_warmup.fetch_add(1, Relaxed);
                }
                match publisher.trigger(&channel, &text).await {
                    Ok((200, _)) => stats.on_published(Ok(()), measured, sent, members as u64),
                    Ok((status, body)) => {
                        stats.on_published(Err(format!("http {status}: {body:.80}")), measured, sent, 0)
                    }
                    Err(e) => {
                        stats.on_published(Err(format!("{e:#}")), measured, sent, 0);
                        break;
                    }
                }
            }
        });
    }
    tokio::time::sleep_until(measure_start).await;
    let measure_start_us = now_us();
    let server_a = Usage::of_all(&common.server_pid)?;
    let me_a = Usage::of_self()?;
    eprintln!("pusher-fanout: measuring for {}s", common.duration);
    tokio::time::sleep_until(measure_end).await;
    let server_b = Usage::of_all(&common.server_pid)?;
    let me_b = Usage::of_self()?;
    while tasks.join_next().await.is_some() {}

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
    let span = |last_us: u64| secs.max(last_us.saturating_sub(measure_start_us) as f64 / 1e6);
    let deliveries_span = span(stats.last_delivery_us());
    let acks_span = span(stats.last_ack_us.load(Relaxed));
    let o = out.as_object_mut().expect("object");
    o.insert("connections".into(), json!(subscribed));
    o.insert("connect_failures".into(), json!(failures));
    o.insert("connect_errors".into(), json!(errors));
    o.insert("connect_secs".into(), json!((connect_secs * 1000.0).round() / 1000.0));
    o.insert("duration_s".into(), json!(secs));
    o.insert("warmup_s".into(), json!(common.warmup));
    o.insert("drain_s_used".into(), json!((drain_secs * 1000.0).round() / 1000.0));
    o.insert("sent".into(), json!(stats.sent_measured.load(Relaxed)));
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
    drop(subs);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Pusher's HTTP API docs ("Authenticating requests").
    #[test]
    fn signs_like_pushers_docs() {
        let app = App {
            app_id: "3".into(),
            key: "278d425bdf160c739803".into(),
            app_secret: "7ad3773142a6692b25b8".into(),
        };
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = signed_query(&app, "POST", "/apps/3/events", body, 1353088179);
        assert_eq!(
            q,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
