//! Encoding a snapshot's lines on several threads while writing them in order.
//!
//! The snapshot is one ordered byte stream with one hash, but its lines are independent: the
//! records are split into parts, worker threads encode parts into [`Chunk`]s, and the calling
//! thread writes the chunks strictly in part order. The output is byte-identical to a sequential
//! write. At most `2 × threads` encoded chunks wait for the writer, so memory stays bounded by
//! the part size, not the snapshot.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

use super::SnapshotWriter;
use crate::model::Record;

/// Encoded NDJSON lines of consecutive records, with their count per record type.
#[derive(Debug, Default)]
pub struct Chunk {
    pub(super) bytes: Vec<u8>,
    pub(super) counts: Vec<(&'static str, u64)>,
}

impl Chunk {
    pub fn push(&mut self, record: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.bytes, record).map_err(io::Error::other)?;
        self.bytes.push(b'\n');
        let kind = record.type_name();
        match self.counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((kind, 1)),
        }
        Ok(())
    }
}

/// How far the writer is; encoders wait while they are a full window ahead of it.
struct Gate {
    written: usize,
    stop: bool,
}

/// Sets `stop` if an encoder thread unwinds, so its siblings do not wait for a chunk that will
/// never come (the panic itself is re-raised when the scope joins).
struct StopOnPanic<'a>(&'a (Mutex<Gate>, Condvar));

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (lock, cvar) = self.0;
            if let Ok(mut g) = lock.lock() {
                g.stop = true;
            }
            cvar.notify_all();
        }
    }
}

/// Encodes `parts` with `encode` on up to `threads` threads (each with its own `init()` state)
/// and writes the chunks to `w` in part order.
pub fn write_ordered<W, P, S, I, E>(
    w: &mut SnapshotWriter<W>,
    parts: &[P],
    threads: usize,
    init: I,
    encode: E,
) -> io::Result<()>
where
    W: Write,
    P: Sync,
    I: Fn() -> S + Sync,
    E: Fn(&mut S, &P, &mut Chunk) -> io::Result<()> + Sync,
{
    let threads = threads.clamp(1, parts.len().max(1));
    if threads == 1 {
        let mut state = init();
        for part in parts {
            let mut chunk = Chunk::default();
            encode(&mut state, part, &mut chunk)?;
            w.write_chunk(&chunk)?;
        }
        return Ok(());
    }
    let window = threads * 2;
    let next = AtomicUsize::new(0);
    let gate = (
        Mutex::new(Gate {
            written: 0,
            stop: false,
        }),
        Condvar::new(),
    );
    let (tx, rx) = mpsc::channel::<(usize, io::Result<Chunk>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, gate, init, encode) = (&next, &gate, &init, &encode);
            scope.spawn(move || {
                let _guard = StopOnPanic(gate);
                let mut state = init();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= parts.len() {
                        return;
                    }
                    {
                        let (lock, cvar) = gate;
                        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
                        while !g.stop && i >= g.written + window {
                            g = cvar.wait(g).unwrap_or_else(|e| e.into_inner());
                        }
                        if g.stop {
                            return;
                        }
                    }
                    let mut chunk = Chunk::default();
                    let result = encode(&mut state, &parts[i], &mut chunk).map(|()| chunk);
                    let failed = result.is_err();
                    if tx.send((i, result)).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let result = write_in_order(w, parts.len(), &rx, &gate);
        if result.is_err() {
            let (lock, cvar) = &gate;
            lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            cvar.notify_all();
        }
        result
    })
}

fn write_in_order<W: Write>(
    w: &mut SnapshotWriter<W>,
    total: usize,
    rx: &mpsc::Receiver<(usize, io::Result<Chunk>)>,
    gate: &(Mutex<Gate>, Condvar),
) -> io::Result<()> {
    let mut pending: BTreeMap<usize, io::Result<Chunk>> = BTreeMap::new();
    let mut written = 0;
    while written < total {
        let Ok((i, chunk)) = rx.recv() else {
            // Every encoder is gone without the next chunk: one of them panicked.
            return Err(io::Error::other(
                "a snapshot encoder thread stopped unexpectedly",
            ));
        };
        pending.insert(i, chunk);
        while let Some(chunk) = pending.remove(&written) {
            w.write_chunk(&chunk?)?;
            written += 1;
            let (lock, cvar) = gate;
            lock.lock().unwrap_or_else(|e| e.into_inner()).written = written;
            cvar.notify_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupRecord, Summary};

    fn group(id: u64) -> Record {
        Record::Group(GroupRecord {
            id,
            full_path: format!("org/g{id}"),
            name: format!("g{id}"),
            parent_id: None,
            in_scope: true,
        })
    }

    fn summary() -> Summary {
        serde_json::from_value(serde_json::json!({
            "snapshot_id": "s", "complete": true, "counts": {}, "api_requests": 0,
            "rate_limit_waits": 0, "too_many_requests": 0, "retries": 0, "errors": [],
            "warnings": [], "sha256": "", "prev_sha256": null,
            "finished_at": "2026-01-01T00:00:00Z"
        }))
        .expect("summary")
    }

    /// Parts of uneven cost finish out of order on several threads; the bytes, hash and counts
    /// must still equal the sequential write's.
    #[test]
    fn parallel_output_equals_sequential_output() {
        let parts: Vec<std::ops::Range<u64>> = (0..200u64).map(|i| i * 7..i * 7 + 7).collect();
        let encode = |_: &mut (), r: &std::ops::Range<u64>, c: &mut Chunk| {
            if r.start.is_multiple_of(3) {
                std::thread::yield_now();
            }
            r.clone().try_for_each(|id| c.push(&group(id)))
        };
        let mut seq = SnapshotWriter::new(Vec::new());
        for id in 0..1400 {
            seq.write(&group(id)).expect("write");
        }
        let (seq_summary, seq_bytes) = seq.finish(summary()).expect("finish");
        for threads in [1, 2, 4] {
            let mut par = SnapshotWriter::new(Vec::new());
            write_ordered(&mut par, &parts, threads, || (), encode).expect("write");
            let (par_summary, par_bytes) = par.finish(summary()).expect("finish");
            assert_eq!(par_bytes, seq_bytes, "{threads} threads");
            assert_eq!(par_summary.sha256, seq_summary.sha256);
            assert_eq!(par_summary.counts["group"], 1400);
        }
    }

    /// An encoder's error reaches the caller and stops the other threads instead of hanging.
    #[test]
    fn an_encoder_error_is_returned() {
        let parts: Vec<u64> = (0..100).collect();
        let mut w = SnapshotWriter::new(Vec::new());
        let err = write_ordered(
            &mut w,
            &parts,
            2,
            || (),
            |_, i, c| {
                if *i == 40 {
                    return Err(io::Error::other("part 40 failed"));
                }
                c.push(&group(*i))
            },
        )
        .expect_err("fails");
        assert_eq!(err.to_string(), "part 40 failed");
    }

    struct FailingOut;
    impl Write for FailingOut {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_error_is_returned() {
        let parts: Vec<u64> = (0..100).collect();
        let mut w = SnapshotWriter::new(FailingOut);
        let err = write_ordered(&mut w, &parts, 2, || (), |_, i, c| c.push(&group(*i)))
            .expect_err("fails");
        assert_eq!(err.to_string(), "disk full");
    }
}
