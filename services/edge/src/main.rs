//! `roomcast-edge`: load settings, build the backend, serve until SIGTERM.

// The command line prints usage, version and --print-config to stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::{Context, bail};
use roomcast_edge::{Deps, Settings};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: roomcast-edge [--config PATH] [--print-config] [--healthcheck]

--healthcheck: exit 0 if a server on 127.0.0.1:$PORT answers GET /health with 200
(for container HEALTHCHECKs in images without a shell or curl).

Settings come from defaults < the TOML file (--config or ROOMCAST_CONFIG) <
ROOMCAST__SECTION__KEY variables < PORT, REDIS_URL, NODE_ID, ENVIRONMENT,
FRONTEND_URL, ALLOW_*_AUTO_*, JWT_SECRET, JWT_PUBLIC_KEY_FILE, PUBLISH_API_KEY.";

struct Args {
    config: Option<PathBuf>,
    print_config: bool,
    healthcheck: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        config: std::env::var_os("ROOMCAST_CONFIG").map(PathBuf::from),
        print_config: false,
        healthcheck: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => out.config = Some(it.next().context("--config needs a path")?.into()),
            "--print-config" => out.print_config = true,
            "--healthcheck" => out.healthcheck = true,
            "--version" | "-V" => {
                println!("roomcast-edge {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(out)
}

fn init_logs(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if settings.log.format == "json" {
        fmt.json().with_current_span(true).init();
    } else {
        fmt.init();
    }
}

async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    token.cancel();
}

/// Binds `addr` with the given accept backlog (tokio's `bind` uses 1024).
async fn listen(addr: &str, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// `GET /health` on the local port, with a short deadline.
async fn healthcheck(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let check = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(&head == b"HTTP/1.1 200")
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(3), check).await,
        Ok(Some(true))
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let settings = match Settings::load(args.config.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("roomcast-edge: {e}");
            std::process::exit(2);
        }
    };
    if args.healthcheck {
        std::process::exit(if healthcheck(settings.server.port).await {
            0
        } else {
            1
        });
    }
    if args.print_config {
        print!("{}", settings.to_masked_toml());
        return Ok(());
    }
    init_logs(&settings);
    let addr = format!("{}:{}", settings.server.host, settings.server.port);
    let listener = listen(&addr, settings.server.listen_backlog)
        .await
        .with_context(|| format!("cannot listen on {addr} (PORT / server.host)"))?;
    // The one line on standard output: where the node listens (with PORT=0,
    // the port the system chose; tests and scripts read it from here).
    if let Ok(bound) = listener.local_addr() {
        println!("listening on {bound}");
    }
    let token = CancellationToken::new();
    tokio::spawn(shutdown_signal(token.clone()));
    // The backend's own tasks stop after the drain, not at its start: the
    // drain still publishes `user_left` and updates presence.
    let backend_token = CancellationToken::new();
    let built = if settings.redis_target().is_some() {
        Deps::redis(settings, backend_token.clone()).map(|(d, t)| (d, Some(t)))
    } else {
        Deps::memory(settings).map(|d| (d, None))
    };
    let (deps, tasks) = match built {
        Ok(d) => d,
        Err(e) => {
            eprintln!("roomcast-edge: {e}");
            std::process::exit(2);
        }
    };
    let telemetry = deps.telemetry.clone();
    if let Err(e) = roomcast_edge::run(listener, deps, token).await {
        eprintln!("roomcast-edge: {e}");
        std::process::exit(2);
    }
    backend_token.cancel();
    if let Some(tasks) = tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), tasks.wait()).await;
    }
    telemetry.shutdown();
    Ok(())
}
