//! What a run reports: text for people, one JSON line for scripts; and the
//! load generator's own CPU use, so it can say when it was the bottleneck.

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// A latency histogram in microseconds (1 µs to 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// CPU seconds this process has used (user + system), from /proc.
pub fn self_cpu_seconds() -> f64 {
    cpu_seconds("/proc/self/stat")
}

/// CPU seconds the calling thread has used (user + system), from /proc.
pub fn thread_cpu_seconds() -> f64 {
    cpu_seconds("/proc/thread-self/stat")
}

/// User + system CPU seconds from a `/proc/.../stat` file (0 if unreadable).
fn cpu_seconds(stat_path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses): utime is the
    // 14th field overall, stime the 15th; in clock ticks (100 per second).
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[derive(Debug)]
pub struct Report {
    pub scenario: &'static str,
    fields: Map<String, Value>,
    warnings: Vec<String>,
    failed: bool,
}

impl Report {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            fields: Map::new(),
            warnings: Vec::new(),
            failed: false,
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    /// p50/p90/p99/p99.9/max of `h` (µs) as milliseconds under `prefix`.
    pub fn latency(&mut self, prefix: &str, h: &Histogram<u64>) {
        let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            self.set(&format!("{prefix}_{name}_ms"), ms(h.value_at_quantile(q)));
        }
        self.set(&format!("{prefix}_max_ms"), ms(h.max()));
        self.set(&format!("{prefix}_samples"), h.len());
    }

    pub fn warn(&mut self, w: impl Into<String>) {
        self.warnings.push(w.into());
    }

    pub fn fail(&mut self, why: impl Into<String>) {
        self.failed = true;
        self.warnings.push(why.into());
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Records the generator's CPU use over `wall` seconds, and warns when
    /// it used most of the machine: then the numbers measure it, not the
    /// server.
    pub fn loadgen_cpu(&mut self, cpu_seconds: f64, wall: f64) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let share = if wall > 0.0 { cpu_seconds / wall } else { 0.0 };
        self.set("loadgen_cpu_seconds", (cpu_seconds * 100.0).round() / 100.0);
        self.set("loadgen_cpu_cores", (share * 100.0).round() / 100.0);
        if share > 0.8 * cores.max(1.0) / 2.0 {
            self.warn(format!(
                "the load generator used {share:.2} of {cores} cores: it shares the machine with the servers and may be limiting the result"
            ));
        }
    }

    pub fn text(&self) -> String {
        let mut out = format!("== {}\n", self.scenario);
        for (k, v) in &self.fields {
            out += &format!("{k:>28}: {v}\n");
        }
        for w in &self.warnings {
            out += &format!("WARNING: {w}\n");
        }
        out
    }

    pub fn json(&self) -> String {
        let mut m = Map::new();
        m.insert("scenario".into(), json!(self.scenario));
        m.extend(self.fields.clone());
        m.insert("warnings".into(), json!(self.warnings));
        m.insert("ok".into(), json!(!self.failed));
        Value::Object(m).to_string()
    }
}
