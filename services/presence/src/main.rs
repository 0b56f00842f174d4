//! `roomcast-presence`: the dead-node presence sweeper as a service.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let env: Vec<(String, String)> = std::env::vars().collect();
    let file = std::env::var_os("ROOMCAST_CONFIG").map(std::path::PathBuf::from);
    let opts = match roomcast_presence::Options::load(file.as_deref(), &env) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("roomcast-presence: {e}");
            std::process::exit(2);
        }
    };
    let port = match std::env::var("PORT") {
        // 0: a free port, printed on standard output.
        Ok(p) => match p.trim().parse::<u16>() {
            Ok(p) => p,
            _ => {
                eprintln!(
                    "roomcast-presence: invalid setting PORT: expected a port number 0-65535, got {p:?}"
                );
                std::process::exit(2);
            }
        },
        Err(_) => 8001,
    };
    let host = std::env::var("HOST").unwrap_or_else(|_| "0.0.0.0".into());
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port} (PORT / HOST)"))?;
    if let Ok(bound) = listener.local_addr() {
        #[allow(clippy::print_stdout)]
        {
            println!("listening on {bound}");
        }
    }
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            t.cancel();
        }
    });
    if let Err(e) = roomcast_presence::run(listener, opts, token).await {
        eprintln!("roomcast-presence: {e}");
        std::process::exit(2);
    }
    Ok(())
}
