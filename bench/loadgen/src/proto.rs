//! Engine.IO v4 / Socket.IO v5 over a raw WebSocket: just what the benchmark
//! needs (handshake with `auth.token`, pings, events, acks), no client library.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpSocket, sync::mpsc, time::timeout};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use crate::stats::Stats;

/// What the connection task is asked to do.
pub enum Out {
    /// `42<id>["event",data]`; the callback gets the ack's JSON array text.
    Emit {
        event: &'static str,
        data: String,
        ack: Option<AckFn>,
    },
}

pub type AckFn = Box<dyn FnOnce(&str) + Send>;

#[derive(Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<Out>,
}

impl Client {
    pub fn emit(&self, event: &'static str, data: String, ack: Option<AckFn>) -> bool {
        self.tx.send(Out::Emit { event, data, ack }).is_ok()
    }

    /// Emits and waits for the ack (its JSON array text).
    pub async fn call(&self, event: &'static str, data: String, wait: Duration) -> anyhow::Result<String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cb: AckFn = Box::new(move |s: &str| {
            let _ = tx.send(s.to_owned());
        });
        if !self.emit(event, data, Some(cb)) {
            bail!("connection closed");
        }
        timeout(wait, rx)
            .await
            .map_err(|_| anyhow!("no ack for {event} within {wait:?}"))?
            .map_err(|_| anyhow!("connection closed before the ack of {event}"))
    }
}

pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket from `src` (a loopback address, port chosen by the kernel),
/// runs the Engine.IO and Socket.IO handshakes with `token`, waits for the
/// `session` event, then hands the socket to a task of its own.
pub async fn connect(target: &Target, src: IpAddr, token: &str, stats: Arc<Stats>) -> anyhow::Result<Client> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))
        .with_context(|| format!("bind {src}"))?;
    sock.set_nodelay(true)?;
    let tcp = sock
        .connect(target.addr)
        .await
        .with_context(|| format!("tcp connect from {src}"))?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", target.host_header);
    let mut config = WebSocketConfig::default();
    config.write_buffer_size = 0;
    config.read_buffer_size = 4096;
    let (mut ws, _) = client_async_with(url, tcp, config)
        .await
        .context("websocket handshake")?;

    // Engine.IO open packet.
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected an Engine.IO open packet, got {open:.80}");
    }
    // Socket.IO connect to "/" with the token.
    let auth = serde_json::json!({ "token": token }).to_string();
    ws.send(Message::text(format!("40{auth}"))).await?;
    let mut connected = false;
    loop {
        let text = next_text(&mut ws).await?;
        if text == "2" {
            ws.send(Message::text("3")).await?;
        } else if text.starts_with("40") {
            connected = true;
        } else if text.starts_with("44") {
            bail!("connect refused: {text:.200}");
        } else if text.starts_with("42[\"session\"") {
            if !connected {
                bail!("session before connect");
            }
            break;
        } else {
            stats.other_events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(ws, rx, stats));
    Ok(Client { tx })
}

async fn client_async_with(
    url: String,
    tcp: tokio::net::TcpStream,
    config: WebSocketConfig,
) -> Result<(Ws, tokio_tungstenite::tungstenite::handshake::client::Response), tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await
}

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

/// The connection's own task: answers pings, writes emits, routes acks to
/// their callbacks and events to [`Stats`].
async fn run(mut ws: Ws, mut rx: mpsc::UnboundedReceiver<Out>, stats: Arc<Stats>) {
    let mut pending: HashMap<u64, AckFn> = HashMap::new();
    let mut next_id: u64 = 0;
    let reason: String = loop {
        tokio::select! {
            biased;
            inbound = ws.next() => match inbound {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    if t == "2" {
                        if let Err(e) = ws.send(Message::text("3")).await {
                            break format!("write pong: {e}");
                        }
                    } else if let Some(rest) = t.strip_prefix("43") {
                        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                        if let Ok(id) = rest[..digits].parse::<u64>()
                            && let Some(cb) = pending.remove(&id)
                        {
                            cb(&rest[digits..]);
                        }
                    } else if let Some(rest) = t.strip_prefix("42") {
                        stats.on_event(rest);
                    } else if t.starts_with("41") {
                        break "server sent a Socket.IO disconnect (41)".into();
                    } else if t == "1" {
                        break "server sent an Engine.IO close (1)".into();
                    }
                }
                Some(Ok(Message::Close(f))) => break format!("close frame {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("read: {e}"),
                None => break "stream ended".into(),
            },
            out = rx.recv() => match out {
                Some(Out::Emit { event, data, ack }) => {
                    let frame = match ack {
                        Some(cb) => {
                            next_id += 1;
                            pending.insert(next_id, cb);
                            format!("42{next_id}[\"{event}\",{data}]")
                        }
                        None => format!("42[\"{event}\",{data}]"),
                    };
                    if let Err(e) = ws.send(Message::text(frame)).await {
                        break format!("write: {e}");
                    }
                }
                None => {
                    let _ = ws.close(None).await;
                    return;
                }
            },
        }
    };
    if !stats.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        stats.disconnected(&reason);
    }
    stats
        .unacked_at_close
        .fetch_add(pending.len() as u64, std::sync::atomic::Ordering::Relaxed);
}

/// How long one connection may take to connect, authenticate and join.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
