//! `roomcast-loadgen`: drives roomcast nodes with many WebSocket clients and
//! reports what they saw, as text and as one JSON line.
//!
//! ```text
//! roomcast-loadgen fanout --urls http://127.0.0.1:8001,http://127.0.0.1:8002 \
//!     --rooms 1 --members 1000 --publishers 1 --rate 100 --duration 10
//! roomcast-loadgen idle   --urls http://127.0.0.1:8001 --connections 10000 --hold 5
//! roomcast-loadgen churn  --urls http://127.0.0.1:8001,http://127.0.0.1:8002 --connections 1000 --rate 200 --duration 10
//! roomcast-loadgen floor  --connections 500 --rate 100 --duration 10 --size 200
//! roomcast-loadgen multiroom --urls http://127.0.0.1:8001 --connections 5000 --rooms 1000 --rooms-per-conn 20 --rate 100
//! roomcast-loadgen delay-proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:6379 --delay-ms 1
//! roomcast-loadgen hook-receiver --listen 127.0.0.1:0
//! ```
//!
//! Rooms and users are created over REST first (any server configuration
//! works); `--auto` skips that and relies on the server's auto-create.

#![allow(clippy::print_stdout)]

mod cli;
mod client;
mod delay;
mod floor;
mod receiver;
mod report;
mod rest;
mod scenario;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("delay-proxy") {
        return delay_proxy(&args[1..]).await;
    }
    if args.first().map(String::as_str) == Some("hook-receiver") {
        let listen = args
            .iter()
            .position(|a| a == "--listen")
            .and_then(|i| args.get(i + 1))
            .map_or("127.0.0.1:0", String::as_str);
        return match receiver::run(listen).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("roomcast-loadgen hook-receiver: {e}");
                ExitCode::from(1)
            }
        };
    }
    let opts = match cli::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("roomcast-loadgen: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let result = match opts.scenario {
        cli::Scenario::Fanout => scenario::fanout(&opts).await,
        cli::Scenario::Idle => scenario::idle(&opts).await,
        cli::Scenario::Churn => scenario::churn(&opts).await,
        cli::Scenario::Floor => floor::floor(&opts).await,
        cli::Scenario::Multiroom => scenario::multiroom(&opts).await,
    };
    match result {
        Ok(report) => {
            print!("{}", report.text());
            println!("{}", report.json());
            if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("roomcast-loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

/// `delay-proxy --listen ADDR --upstream ADDR --delay-ms N [--hold-match TEXT]`.
async fn delay_proxy(args: &[String]) -> ExitCode {
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (Some(upstream), Some(delay)) = (get("--upstream"), get("--delay-ms")) else {
        eprintln!(
            "usage: roomcast-loadgen delay-proxy --upstream HOST:PORT --delay-ms N [--listen HOST:PORT] [--hold-match TEXT]"
        );
        return ExitCode::from(2);
    };
    let Ok(delay) = delay.parse::<f64>() else {
        eprintln!("roomcast-loadgen: --delay-ms: expected milliseconds, got {delay:?}");
        return ExitCode::from(2);
    };
    let listen = get("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let delay = std::time::Duration::from_secs_f64(delay.max(0.0) / 1000.0);
    let hold = get("--hold-match").map(|pattern| {
        let (release, released) = tokio::sync::watch::channel(false);
        // Standard input is read on a thread of its own: it blocks.
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                match line {
                    Ok(l) if l.trim() == "release" => {
                        let _ = release.send(true);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        delay::Hold {
            pattern: pattern.into_bytes().into(),
            released,
        }
    });
    match delay::run(&listen, &upstream, delay, hold).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast-loadgen delay-proxy: {e}");
            ExitCode::from(1)
        }
    }
}
