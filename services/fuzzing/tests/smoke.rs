//! The fuzz smoke run: every harness over the checked-in corpus, then a few
//! seconds of deterministic mutations of it (bit flips, byte edits, splices,
//! dictionary tokens). Seconds, not a real fuzzing campaign: `fuzz/` runs
//! the same harnesses under libFuzzer for that. A failing input is written
//! to target/fuzz-failures/ and printed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DICTIONARY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\"type\"",
    b"\"message\"",
    b"\"content\"",
    b"\"client_id\"",
    b"\"typing\"",
    b"\"is_typing\"",
    b"true",
    b"null",
    b"-1",
    b"1e309",
    b"18446744073709551616",
    b"%",
    b"%00",
    b"%FF",
    b"&",
    b"=",
    b"|",
    b".",
    b"eyJ",
    b"T",
    b"Z",
    b"+99:99",
    b"\xff",
    b"\xc3\xa9",
    b"\xf0\x9f\x98\x80",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seeds: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let tok = DICTIONARY[rng.below(DICTIONARY.len())];
                v.splice(i..i, tok.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(8)).min(len);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(v.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[rng.below(other.len() + 1)..]);
            }
            _ => v.truncate(rng.below(len + 1)),
        }
    }
    v
}

#[test]
fn every_harness_survives_the_corpus_and_its_mutations() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seconds: f64 = std::env::var("ROOMCAST_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    // Panics are expected to be caught and reported here, not printed as noise.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for (i, (name, harness)) in roomcast_fuzzing::TARGETS.iter().enumerate() {
        let dir = root.join(name);
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|f| std::fs::read(f.unwrap().path()).unwrap())
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "{name}: empty corpus");
        let mut rng = Rng(0x5EED_0000 + i as u64 * 7919);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut runs = 0u64;
        let inputs = seeds.clone().into_iter().chain(std::iter::from_fn(|| {
            (Instant::now() < deadline).then(|| mutate(&seeds, &mut rng))
        }));
        for input in inputs {
            runs += 1;
            if catch_unwind(AssertUnwindSafe(|| harness(&input))).is_err() {
                let out =
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
                let _ = std::fs::create_dir_all(&out);
                let file = out.join(format!("{name}-{runs}"));
                let _ = std::fs::write(&file, &input);
                failures.push(format!(
                    "{name}: input {:?} (saved to {})",
                    String::from_utf8_lossy(&input),
                    file.display()
                ));
                break;
            }
        }
        eprintln!("fuzz smoke {name}: {runs} inputs");
    }
    let _ = std::panic::take_hook();
    assert!(
        failures.is_empty(),
        "harness failures:\n{}",
        failures.join("\n")
    );
}
