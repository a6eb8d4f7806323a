//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection (one task per
//! connection, a switchboard patch) and to handle upgrade from polling to ws

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, socket::InternalRx, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    tokio::spawn(async move {
        let conn = hyper::upgrade::on(req)
            .await
            .map(hyper_util::rt::TokioIo::new);

        let res = match conn {
            Ok(conn) => on_init(engine.clone(), conn, protocol, sid, parts).await,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return;
            }
        };

        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws, heartbeat) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                // Its heartbeat already runs, since its polling days.
                (socket, ws, None)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        // switchboard patch: the heartbeat of a session that starts on
        // websocket runs inside this connection's task (see `run`), not in a
        // task of its own.
        let heartbeat = (engine.config.ping_interval, engine.config.ping_timeout);
        (socket, ws, Some(heartbeat))
    };
    run(&engine, ws, socket, heartbeat).await
}

/// What the read side of [`run`] asks of the loop after a frame.
enum Read {
    Continue,
    /// The client closed the session (close packet or close frame).
    Closed,
}

/// switchboard patch (PATCHES.md, "one task per connection"): reads the
/// websocket, writes the socket's queued packets to it and, for a session
/// that began on websocket, runs its heartbeat, all in the one task that
/// handles the upgrade. Upstream splits the stream and runs a writer task and
/// a heartbeat task beside the reader; that costs two more tasks, a lock
/// around the split halves and a cross-task wakeup for every packet sent.
async fn run<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    mut ws: WebSocketStream<S>,
    socket: Arc<Socket<H::Data>>,
    heartbeat: Option<(std::time::Duration, std::time::Duration)>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A polling request that was in progress during the upgrade may still hold the lock.
    let Some(mut internal_rx) = socket
        .internal_rx
        .lock()
        .with_cancellation_token(&socket.cancellation_token)
        .await
    else {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "session closed before starting the ws loop");
        return Ok(());
    };
    let InternalRx {
        buffered_rx,
        volatile_rx,
        ..
    } = &mut *internal_rx;

    let heartbeat = async {
        match heartbeat {
            Some((interval, timeout)) => socket.run_heartbeat(interval, timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(heartbeat);
    // A finished future must not be polled again.
    let mut beating = true;

    // `None`: the session was closed (cancelled) from elsewhere.
    let mut outcome: Option<Result<(), Error>> = None;
    loop {
        tokio::select! {
            biased;
            items = buffered_rx.recv() => match items {
                Some(packets) => {
                    write_packets(&socket, &mut ws, packets).await;
                    while let Ok(packets) = buffered_rx.try_recv() {
                        write_packets(&socket, &mut ws, packets).await;
                    }
                }
                None => break,
            },
            _ = socket.cancellation_token.cancelled() => break,
            Ok(()) = volatile_rx.changed() => {
                let val = volatile_rx.borrow_and_update().clone();
                if let Some(packets) = val {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = ?socket.id, "ws volatile flush: {} packets", packets.len());
                    write_packets(&socket, &mut ws, packets).await;
                }
            },
            msg = ws.next() => {
                let read = match msg {
                    None => Ok(Read::Closed),
                    Some(Err(e)) => Err(Error::from(e)),
                    Some(Ok(msg)) => on_message(engine, msg, &socket),
                };
                match read {
                    Ok(Read::Continue) => {}
                    Ok(Read::Closed) => {
                        outcome = Some(Ok(()));
                        break;
                    }
                    Err(e) => {
                        outcome = Some(Err(e));
                        break;
                    }
                }
            },
            // The heartbeat closes the session itself when it fails; the
            // cancellation branch then ends the loop.
            () = &mut heartbeat, if beating => beating = false,
        }
        #[cfg(feature = "tracing")]
        tracing::trace!(sid = %socket.id, "ws flush");
        ws.flush().await.ok();
    }

    match outcome {
        Some(Err(ref e)) => {
            let reason =
                Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);
            #[cfg(feature = "tracing")]
            tracing::debug!("error when handling packet: {:?}", e);
            engine.close_session(socket.id, reason);
        }
        Some(Ok(())) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws transport was closed");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
        }
        None => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
        }
    }

    // What the session queued before it closed (a disconnect packet) still
    // goes out before the close frame, as with upstream's writer task. The
    // client may be gone or not reading: bound the wait.
    let drain = async {
        while let Ok(packets) = buffered_rx.try_recv() {
            write_packets(&socket, &mut ws, packets).await;
        }
        ws.flush().await.ok();
        ws.close(None).await.ok();
    };
    tokio::time::timeout(engine.config.ping_timeout, drain).await.ok();
    Ok(())
}

/// Handles one frame read from the websocket.
fn on_message<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    msg: Message,
    socket: &Arc<Socket<H::Data>>,
) -> Result<Read, Error> {
    match msg {
        Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
            Packet::Close => {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] closing session", socket.id);
                Ok(Read::Closed)
            }
            Packet::Pong | Packet::Ping => {
                // A full channel means that the client is already known to be alive.
                socket.heartbeat_tx.try_send(()).ok();
                Ok(Read::Continue)
            }
            Packet::Message(msg) => {
                engine.handler.on_message(msg, socket.clone());
                Ok(Read::Continue)
            }
            p => Err(Error::BadPacket(p)),
        },
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
            Ok(Read::Continue)
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            Ok(Read::Closed)
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
            Ok(Read::Continue)
        }
    }
}

/// Feeds packets to the websocket (flushed by the caller once the queue is drained).
async fn write_packets<D, S>(socket: &Socket<D>, ws: &mut WebSocketStream<S>, packets: PacketBuf)
where
    D: Default + Send + Sync + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for item in packets {
        let res = match item {
            Packet::Binary(bin) | Packet::BinaryV3(bin) => {
                if socket.protocol == ProtocolVersion::V3 {
                    // v3 protocol requires packet type as the first byte.
                    // This requires a new buffer. This is OK as it is only for the V3 protocol.
                    let mut buff = Vec::with_capacity(bin.len() + 1);
                    buff.push(0x04);
                    buff.extend(bin);
                    ws.feed(Message::Binary(buff.into())).await
                } else {
                    ws.feed(Message::Binary(bin)).await
                }
            }
            // A Noop Packet maybe sent by the server to upgrade from a polling connection
            // In the case that the packet was not poll in time it will remain in the buffer and therefore
            // it should be discarded here
            Packet::Noop => Ok(()),
            item => match String::try_from(item) {
                Ok(packet) => ws.feed(Message::Text(packet.into())).await,
                Err(_) => Ok(()),
            },
        };
        if let Err(_e) = res {
            #[cfg(feature = "tracing")]
            tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
        }
    }
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(smallvec![Packet::Noop])
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    fn engine() -> Arc<EngineIo<StubHandler>> {
        Arc::new(EngineIo::new(Arc::new(StubHandler), EngineIoConfig::default()))
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;

        let polling = socket.internal_rx.lock().await;
        let engine = engine();
        let sock = socket.clone();
        let writer = tokio::spawn(async move { run(&engine, server, sock, None).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;

        let _polling = socket.internal_rx.lock().await;
        let engine = engine();
        let sock = socket.clone();
        let writer = tokio::spawn(async move { run(&engine, server, sock, None).await });
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap()
            .unwrap();
    }

    /// One task reads, writes and runs the heartbeat: a ping is written, the
    /// pong read back keeps the session, and a message read reaches the
    /// handler while packets queued meanwhile are written.
    #[tokio::test(start_paused = true)]
    async fn one_task_reads_writes_and_beats() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let engine = engine();
        let sock = socket.clone();
        let interval = Duration::from_secs(25);
        let conn = tokio::spawn(async move {
            run(&engine, server, sock, Some((interval, Duration::from_secs(20)))).await
        });

        for _ in 0..3 {
            let ping = tokio::time::timeout(interval * 2, client.next())
                .await
                .expect("a ping each interval")
                .unwrap()
                .unwrap();
            assert_eq!(ping, Message::text("2"));
            client.send(Message::text("3")).await.unwrap();
        }
        socket.emit(Str::from("hello")).unwrap();
        let msg = client.next().await.unwrap().unwrap();
        assert_eq!(msg, Message::text("4hello"));
        assert!(!conn.is_finished());
        assert!(!socket.cancellation_token.is_cancelled());
    }

    /// Without a pong the heartbeat closes the session and the loop ends,
    /// sending a close frame.
    #[tokio::test(start_paused = true)]
    async fn a_missing_pong_ends_the_loop() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let engine = engine();
        let sock = socket.clone();
        let conn = tokio::spawn(async move {
            run(&engine, server, sock, Some((Duration::from_secs(1), Duration::from_secs(1)))).await
        });
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text("2"));
        // The test socket's close_fn does nothing; the engine would cancel it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, conn).await.expect("the loop should end").unwrap().unwrap();
        // The engine.io close packet queued by the heartbeat goes out first.
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text("1"));
        let last = client.next().await;
        assert!(matches!(last, Some(Ok(Message::Close(_)))), "{last:?}");
    }
}
