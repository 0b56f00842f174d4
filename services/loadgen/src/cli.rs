//! Command-line options.

use std::time::Duration;

pub const USAGE: &str =
    "usage: roomcast-loadgen <fanout|idle|churn|multiroom> --urls URL[,URL...] [options]
       roomcast-loadgen floor [--connections N --rate ROUNDS/S --duration SECS --size BYTES]

common:   --urls       node base URLs (http://host:port), clients spread over them round-robin
          --auto       skip REST setup (the server auto-creates rooms and users)
          --connect-concurrency N   handshakes in flight (default 256)
fanout:   --rooms R --members N --publishers P (per room) --rate MSG/S (per publisher)
          --duration SECS --size BYTES (content, default 100) --drain SECS (default 3)
          --ready-file PATH (written when publishing starts) --done-file PATH (when it ends)
          --reconnect  a member whose socket the server closes (a drain) reconnects to
          another node with since=<last offset seen>
idle:     --connections C --room-size K (default 10) --hold SECS (default 3)
          --ready-file PATH (written once all are connected)
churn:    --connections C --rate CONNECTS/S --duration SECS --room-size K (default 10)
          --msg-rate MSG/S (traffic while churning, default 50)
multiroom: --connections C multiplexed sockets (/ws), each subscribed to --rooms-per-conn K
          of --rooms R; one publisher per room, --rate MSG/S in all, spread in time;
          --duration SECS --size BYTES --drain SECS; --ready-file PATH (all subscribed),
          --publish-file PATH (publishing starts), --done-file PATH (publishing over)
floor:    no server: one --size-byte loopback TCP write to each of --connections sockets,
          --rate rounds per second; the kernel's CPU per write (the fan-out floor)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Fanout,
    Idle,
    Churn,
    Floor,
    Multiroom,
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub scenario: Scenario,
    pub urls: Vec<String>,
    pub auto: bool,
    pub connect_concurrency: usize,
    pub rooms: usize,
    pub members: usize,
    pub publishers: usize,
    pub rate: f64,
    pub duration: Duration,
    pub size: usize,
    pub drain: Duration,
    pub connections: usize,
    pub room_size: usize,
    pub hold: Duration,
    pub msg_rate: f64,
    /// Written once every idle connection is open (for scripts that measure
    /// the server while the load is held).
    pub ready_file: Option<String>,
    /// Written when the measured phase is over, before teardown (fanout).
    pub done_file: Option<String>,
    /// Written when publishing starts (multiroom).
    pub publish_file: Option<String>,
    pub rooms_per_conn: usize,
    /// fanout: members closed by the server reconnect elsewhere with `since`.
    pub reconnect: bool,
}

pub fn parse(args: &[String]) -> Result<Opts, String> {
    let scenario = match args.first().map(String::as_str) {
        Some("fanout") => Scenario::Fanout,
        Some("idle") => Scenario::Idle,
        Some("churn") => Scenario::Churn,
        Some("floor") => Scenario::Floor,
        Some("multiroom") => Scenario::Multiroom,
        Some(other) => return Err(format!("unknown scenario {other:?}")),
        None => return Err("a scenario is required".into()),
    };
    let mut o = Opts {
        scenario,
        urls: Vec::new(),
        auto: false,
        connect_concurrency: 256,
        rooms: 1,
        members: 100,
        publishers: 1,
        rate: 10.0,
        duration: Duration::from_secs(10),
        size: 100,
        drain: Duration::from_secs(3),
        connections: 1000,
        room_size: 10,
        hold: Duration::from_secs(3),
        msg_rate: 50.0,
        ready_file: None,
        done_file: None,
        publish_file: None,
        rooms_per_conn: 10,
        reconnect: false,
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        if flag == "--auto" {
            o.auto = true;
            continue;
        }
        if flag == "--reconnect" {
            o.reconnect = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|n| *n > 0.0)
                .ok_or_else(|| format!("{flag}: expected a positive number, got {v:?}"))
        };
        let int = |v: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: expected a positive integer, got {v:?}"))
        };
        match flag.as_str() {
            "--urls" => {
                o.urls = value
                    .split(',')
                    .map(|u| u.trim().trim_end_matches('/').to_owned())
                    .filter(|u| !u.is_empty())
                    .collect()
            }
            "--connect-concurrency" => o.connect_concurrency = int(value)?,
            "--rooms" => o.rooms = int(value)?,
            "--members" => o.members = int(value)?,
            "--publishers" => o.publishers = int(value)?,
            "--rate" => o.rate = num(value)?,
            "--duration" => o.duration = Duration::from_secs_f64(num(value)?),
            "--size" => o.size = int(value)?,
            "--drain" => o.drain = Duration::from_secs_f64(num(value)?),
            "--connections" => o.connections = int(value)?,
            "--room-size" => o.room_size = int(value)?,
            "--hold" => o.hold = Duration::from_secs_f64(num(value)?),
            "--msg-rate" => o.msg_rate = num(value)?,
            "--ready-file" => o.ready_file = Some(value.clone()),
            "--done-file" => o.done_file = Some(value.clone()),
            "--publish-file" => o.publish_file = Some(value.clone()),
            "--rooms-per-conn" => o.rooms_per_conn = int(value)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.urls.is_empty() && scenario != Scenario::Floor {
        return Err("--urls is required".into());
    }
    for u in &o.urls {
        if !u.starts_with("http://") {
            return Err(format!("--urls: expected http://host:port, got {u:?}"));
        }
    }
    if o.publishers > o.members {
        return Err("--publishers cannot exceed --members".into());
    }
    Ok(o)
}
