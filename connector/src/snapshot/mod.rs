//! The access snapshot as NDJSON: one header, the records in the order and shape of
//! docs/contract.md, "Snapshots", and a summary whose `sha256` covers every line before it.

pub mod diff;
mod parallel;

pub use parallel::{Chunk, write_ordered};

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};

use sha2::{Digest, Sha256};

use crate::model::{Record, Summary};

/// Writes records as NDJSON lines, hashing and counting them.
pub struct SnapshotWriter<W: Write> {
    out: W,
    hasher: Sha256,
    counts: BTreeMap<&'static str, u64>,
    line: Vec<u8>,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            hasher: Sha256::new(),
            counts: BTreeMap::new(),
            line: Vec::with_capacity(512),
        }
    }

    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).map_err(io::Error::other)?;
        self.line.push(b'\n');
        self.hasher.update(&self.line);
        self.out.write_all(&self.line)?;
        if !matches!(record, Record::Snapshot(_) | Record::Summary(_)) {
            *self.counts.entry(record.type_name()).or_default() += 1;
        }
        Ok(())
    }

    /// Appends lines encoded elsewhere (see [`write_ordered`]), hashing and counting them.
    pub fn write_chunk(&mut self, chunk: &Chunk) -> io::Result<()> {
        self.hasher.update(&chunk.bytes);
        self.out.write_all(&chunk.bytes)?;
        for (kind, n) in &chunk.counts {
            *self.counts.entry(kind).or_default() += n;
        }
        Ok(())
    }

    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }

    /// Completes `summary` with the counts and hash, writes it last and flushes.
    pub fn finish(mut self, mut summary: Summary) -> io::Result<(Summary, W)> {
        summary.counts = self
            .counts
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect();
        summary.sha256 = hex(&self.hasher.finalize_reset());
        let mut line =
            serde_json::to_vec(&Record::Summary(summary.clone())).map_err(io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()?;
        Ok((summary, self.out))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("line {line}: {message}")]
    Invalid { line: u64, message: String },
    #[error("the snapshot has no summary line: it was cut off or is not a snapshot")]
    NoSummary,
    #[error(
        "the snapshot's sha256 does not match its content (summary says {expected}, content hashes to {actual}): it was modified"
    )]
    HashMismatch { expected: String, actual: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads a snapshot's records one by one.
pub fn records<R: BufRead>(reader: R) -> impl Iterator<Item = Result<Record, ReadError>> {
    reader
        .lines()
        .enumerate()
        .filter_map(|(i, line)| match line {
            Err(e) => Some(Err(ReadError::Io(e))),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(
                serde_json::from_str::<Record>(&l).map_err(|e| ReadError::Invalid {
                    line: i as u64 + 1,
                    message: e.to_string(),
                }),
            ),
        })
}

/// Recomputes the hash over every line before the summary and checks it.
pub fn verify<R: BufRead>(mut reader: R) -> Result<Summary, ReadError> {
    let mut hasher = Sha256::new();
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(ReadError::NoSummary);
        }
        n += 1;
        if line.starts_with(br#"{"type":"summary""#) {
            let summary = match serde_json::from_slice::<Record>(&line) {
                Ok(Record::Summary(s)) => s,
                Ok(_) => unreachable!("starts with the summary tag"),
                Err(e) => {
                    return Err(ReadError::Invalid {
                        line: n,
                        message: e.to_string(),
                    });
                }
            };
            let actual = hex(&hasher.finalize());
            if actual != summary.sha256 {
                return Err(ReadError::HashMismatch {
                    expected: summary.sha256,
                    actual,
                });
            }
            return Ok(summary);
        }
        hasher.update(&line);
    }
}
