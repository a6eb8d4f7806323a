//! The `switchboard` binary: read the settings, start the server, run until
//! Ctrl-C or SIGTERM.

use clap::Parser;
use switchboard::{config::Config, dev, startup, telemetry};

// Every broadcast allocates on the emitting worker and frees on each socket's
// writer task, often on the other thread: glibc's allocator then contends on
// its arena locks. mimalloc frees across threads without them (fanout knee
// 720k -> 960k deliveries/s, docs/performance.md) for ~8% more per idle socket.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::init();
    let config = Config::parse();
    if config.healthcheck {
        return dev::healthcheck(config.port).await;
    }
    let settings = match config.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    let result = async {
        let app = startup::Application::build(settings.clone()).await?;
        dev::announce(&settings, app.local_addr()?);
        app.run(startup::shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
