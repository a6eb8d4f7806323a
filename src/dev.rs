//! What `--dev` prints so a newcomer can connect at once (the generated
//! secret, a ready-to-paste token and a `socket.io-client` snippet), and the
//! `--healthcheck` probe container images use.

use std::net::SocketAddr;

use crate::{
    auth,
    config::{JwtKey, Settings},
};

pub fn announce(settings: &Settings, addr: SocketAddr) {
    if !settings.dev {
        return;
    }
    let JwtKey::Hs256(secret) = &settings.jwt else {
        println!("dev mode: tokens are verified with JWT_PUBLIC_KEY; sign one with your private key");
        return;
    };
    let token = match auth::dev_token(secret.as_bytes()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dev mode: could not sign a dev token: {e}");
            return;
        }
    };
    let host = if addr.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        addr.ip().to_string()
    };
    let url = format!("http://{host}:{}", addr.port());
    if settings.generated_secret {
        println!("dev secret: {secret}   (set JWT_SECRET to keep tokens valid across restarts)");
    }
    println!("database: {}", settings.database_url);
    println!("dev token: {token}");
    println!(
        "\nconnect from Node or the browser (npm i socket.io-client):\n\n  \
         import {{ io }} from 'socket.io-client'\n  \
         const socket = io('{url}', {{ auth: {{ token: '{token}' }} }})\n  \
         socket.on('new-message', (m) => console.log(m))\n  \
         socket.emit('join-room', {{ roomId: 'lobby' }}, (ack) => {{\n    \
         console.log(ack)\n    \
         socket.emit('send-message', {{ roomId: 'lobby', message: 'hello' }}, console.log)\n  \
         }})\n"
    );
}

/// `GET /healthz` on loopback; success only on a 200 within three seconds.
pub async fn healthcheck(port: u16) -> std::process::ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        std::io::Result::Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
        Ok(Ok(true)) => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}
