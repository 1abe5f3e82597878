//! Gzip compression on every core, with output that does not depend on how many cores.
//!
//! The input is cut into fixed-size blocks. Each block is deflated on its own (pigz's scheme),
//! primed with the last 32 KiB of the block before it, and ends on a byte boundary with a sync
//! flush; the last block ends the deflate stream. The bytes of a block depend only on the
//! block's data, its dictionary and the level, so the concatenation is the same for any number
//! of threads, and it is one ordinary gzip member any gunzip reads.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Uncompressed bytes per block. Part of the output format: changing it changes layer digests.
const BLOCK_SIZE: usize = 256 << 10;
/// Deflate's window: how much of the previous block primes the next one.
const DICTIONARY_SIZE: usize = 32 << 10;
/// More workers than this would mostly add memory (two blocks in flight per worker).
pub(crate) const MAX_THREADS: usize = 16;

/// Threads to compress with on this machine.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS)
}

/// A block to deflate: `data[..dictionary_len]` primes the compressor, the rest is compressed.
struct Job {
    data: Vec<u8>,
    dictionary_len: usize,
    last: bool,
    result: SyncSender<io::Result<Vec<u8>>>,
}

/// Writes a gzip stream to `out`; call [`ParallelGzip::finish`] to end it. Blocks are
/// compressed by worker threads spawned in `scope` as blocks arrive (a stream of one block is
/// compressed on the caller's thread, so small layers start no threads); `out` is only written
/// from the caller's thread, in order, so it need not be `Send`.
pub(crate) struct ParallelGzip<'scope, 'env, W: Write> {
    scope: &'scope Scope<'scope, 'env>,
    queue: Arc<Mutex<Receiver<Job>>>,
    level: u32,
    workers: usize,
    max_workers: usize,
    out: W,
    crc: Crc,
    /// Dictionary (tail of the previous block) followed by the block being filled.
    block: Vec<u8>,
    dictionary_len: usize,
    jobs: SyncSender<Job>,
    /// Results of submitted blocks, oldest first.
    in_flight: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    max_in_flight: usize,
}

impl<'scope, 'env, W: Write> ParallelGzip<'scope, 'env, W> {
    pub(crate) fn new(
        scope: &'scope Scope<'scope, 'env>,
        mut out: W,
        level: u32,
        threads: usize,
    ) -> io::Result<Self> {
        let level = level.min(9);
        let threads = threads.clamp(1, MAX_THREADS);
        let (jobs, queue) = sync_channel::<Job>(threads);
        out.write_all(&gzip_header(level))?;
        Ok(ParallelGzip {
            scope,
            queue: Arc::new(Mutex::new(queue)),
            level,
            workers: 0,
            max_workers: threads,
            out,
            crc: Crc::new(),
            block: Vec::with_capacity(DICTIONARY_SIZE + BLOCK_SIZE),
            dictionary_len: 0,
            jobs,
            in_flight: VecDeque::new(),
            max_in_flight: 2 * threads,
        })
    }

    /// Hand the filled block to the workers and start the next one with its tail as dictionary.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        if last && self.in_flight.is_empty() {
            // The only block still to go and nothing pending: no thread is worth starting.
            let mut compressors = Compressors::new(self.level);
            let job_data = std::mem::take(&mut self.block);
            let compressed = deflate_block(&mut compressors, &job_data, self.dictionary_len, true)?;
            return self.out.write_all(&compressed);
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let tail = self.block.len().saturating_sub(DICTIONARY_SIZE);
        let mut next = Vec::with_capacity(DICTIONARY_SIZE + BLOCK_SIZE);
        if !last {
            next.extend_from_slice(&self.block[tail..]);
        }
        let data = std::mem::replace(&mut self.block, next);
        // One more worker while every started one may be busy, up to the limit.
        if self.workers < self.max_workers && self.workers <= self.in_flight.len() {
            let queue = Arc::clone(&self.queue);
            let level = self.level;
            self.scope.spawn(move || compress_jobs(&queue, level));
            self.workers += 1;
        }
        let (result, receiver) = sync_channel(1);
        let job = Job {
            data,
            dictionary_len: self.dictionary_len,
            last,
            result,
        };
        self.jobs.send(job).map_err(|_| worker_gone())?;
        self.in_flight.push_back(receiver);
        self.dictionary_len = self.block.len();
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(receiver) = self.in_flight.pop_front() {
            let compressed = receiver.recv().map_err(|_| worker_gone())??;
            self.out.write_all(&compressed)?;
        }
        Ok(())
    }

    /// End the deflate stream, write the gzip trailer and return the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.dictionary_len + BLOCK_SIZE - self.block.len();
        let n = buf.len().min(room);
        self.block.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        if n == room {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Blocks are cut by size only, so flushing cannot end one early; it writes out what is done.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn worker_gone() -> io::Error {
    io::Error::other("a gzip compression thread stopped")
}

/// Worker loop: deflate blocks until the sending side is dropped.
fn compress_jobs(queue: &Mutex<Receiver<Job>>, level: u32) {
    let mut compressors = Compressors::new(level);
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = deflate_block(&mut compressors, &job.data, job.dictionary_len, job.last);
        // The writer may have given up (an error elsewhere); nobody wants the block then.
        let _ = job.result.send(result);
    }
}

/// A block's deflater at the stream's level, one that stores blocks as they are, one with
/// deflate's run-length strategy for the blocks [`effort`] finds barely compressible, and the
/// fastest level for its probes.
pub(crate) struct Compressors {
    deflate: Compress,
    store: Compress,
    runs: zlib_rs::Deflate,
    probe: Compress,
}

impl Compressors {
    pub(crate) fn new(level: u32) -> Compressors {
        Compressors {
            deflate: Compress::new(Compression::new(level), false),
            store: Compress::new(Compression::none(), false),
            runs: zlib_rs::Deflate::new_with_config(zlib_rs::DeflateConfig {
                strategy: zlib_rs::Strategy::Rle,
                // Raw deflate, as flate2's `Compress::new(_, false)` makes.
                window_bits: -15,
                ..zlib_rs::DeflateConfig::default()
            }),
            probe: Compress::new(Compression::fast(), false),
        }
    }
}

/// How many places of a block [`effort`]'s probes deflate, and how much at each. With the
/// 32 KiB each is primed with, about what deflating one 64 KiB piece costs; more places cost
/// more than the probes save on a layer of random files.
const PROBES: usize = 4;
const PROBE_SIZE: usize = 8 << 10;

/// How hard a block is worth deflating.
#[derive(Debug, PartialEq, Eq)]
enum Effort {
    /// Deflate would not shrink it: stored as it is.
    Store,
    /// It shrinks by little (random files between tar headers and padding): deflate's
    /// run-length strategy, which finds the runs of zeros that make up nearly all of what
    /// such a block saves, without the stream level's match search.
    Runs,
    /// The stream's level.
    Full,
}

/// How hard to deflate `data[dictionary_len..]`, from deflate's fastest level at each of
/// [`PROBES`] places spread evenly from the block's start to its end. Each probe is primed
/// with the 32 KiB before it, as deflate is, so it finds every repeat deflate could use there,
/// whichever part of the block it comes from. A probe that saves 1/8 or more means the
/// stream's level (compressible data stops after one probe). Where every probe saves under
/// 1/32 and the bytes are spread evenly over all 256 values (compressed, encrypted or random
/// data: a chi-square test against the uniform spread, below what text or code ever reach),
/// the block is stored; else, every probe having saved under 1/8, it gets [`Effort::Runs`].
/// Integer arithmetic and deflate only, so the choice, and the layer's digest, is the same on
/// every machine.
fn effort(probe: &mut Compress, data: &[u8], dictionary_len: usize) -> Effort {
    let len = data.len() - dictionary_len;
    if len < 4096 {
        return Effort::Full;
    }
    let size = len.min(PROBE_SIZE);
    let places = len.div_ceil(size).min(PROBES);
    let mut out = Vec::with_capacity(size + size / 16 + 64);
    let mut most_saved = 0;
    for i in 0..places {
        // The first probe at the block's start, the last at its end.
        let start = dictionary_len + (len - size) * i / (places - 1).max(1);
        let dictionary = &data[start.saturating_sub(DICTIONARY_SIZE)..start];
        out.clear();
        probe.reset();
        if !dictionary.is_empty() && probe.set_dictionary(dictionary).is_err() {
            return Effort::Full;
        }
        let saved =
            match probe.compress_vec(&data[start..start + size], &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => size.saturating_sub(out.len()),
                _ => return Effort::Full,
            };
        if saved >= size / 8 {
            return Effort::Full;
        }
        most_saved = most_saved.max(saved);
    }
    match most_saved < size / 32 && evenly_spread(&data[dictionary_len..]) {
        true => Effort::Store,
        false => Effort::Runs,
    }
}

/// Whether the bytes of `input` are spread about evenly over all 256 values.
fn evenly_spread(input: &[u8]) -> bool {
    let mut counts = [0u64; 256];
    for &byte in input {
        counts[byte as usize] += 1;
    }
    // chi2 = sum((c - n/256)^2) / (n/256) = sum((256c - n)^2) / (256 n); uniform random data
    // gives about 255, anything with structure far more.
    let n = input.len() as u128;
    let spread: u128 = counts
        .iter()
        .map(|&c| {
            let d = (256 * c as u128).abs_diff(n);
            d * d
        })
        .sum();
    spread < 512 * 256 * n
}

/// Deflate `data[dictionary_len..]` primed with `data[..dictionary_len]`; `last` ends the stream.
fn deflate_block(
    compressors: &mut Compressors,
    data: &[u8],
    dictionary_len: usize,
    last: bool,
) -> io::Result<Vec<u8>> {
    let compress = match effort(&mut compressors.probe, data, dictionary_len) {
        Effort::Store => &mut compressors.store,
        Effort::Runs => return deflate_runs(&mut compressors.runs, &data[dictionary_len..], last),
        Effort::Full => &mut compressors.deflate,
    };
    let (dictionary, input) = data.split_at(dictionary_len);
    compress.reset();
    if !dictionary.is_empty() {
        compress
            .set_dictionary(dictionary)
            .map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() + input.len() / 16 + 64);
    loop {
        let consumed = usize::try_from(compress.total_in()).map_err(io::Error::other)?;
        let status = compress
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = usize::try_from(compress.total_in()).map_err(io::Error::other)? == input.len();
        // zlib's rule: a flush is complete once a call leaves output space unused.
        let done = if last {
            status == Status::StreamEnd
        } else {
            all_in && out.len() < out.capacity()
        };
        if done {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64));
    }
}

/// Deflate `input` with the run-length strategy, unprimed (its runs do not reach back into
/// the block before); `last` ends the stream.
fn deflate_runs(runs: &mut zlib_rs::Deflate, input: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let flush = match last {
        true => zlib_rs::DeflateFlush::Finish,
        false => zlib_rs::DeflateFlush::SyncFlush,
    };
    runs.reset();
    // Room for the worst case: one call deflates and flushes the whole block.
    let mut out = vec![0; zlib_rs::compress_bound(input.len()) + 64];
    let status = runs
        .compress(input, &mut out, flush)
        .map_err(|e| io::Error::other(e.as_str()))?;
    let consumed = usize::try_from(runs.total_in()).map_err(io::Error::other)?;
    if consumed != input.len() || (last && status != zlib_rs::Status::StreamEnd) {
        return Err(io::Error::other("deflate left a block unfinished"));
    }
    out.truncate(usize::try_from(runs.total_out()).map_err(io::Error::other)?);
    Ok(out)
}

/// Gzip members (eStargz's: one per file payload) compressed on up to `threads` threads and
/// written to `out` in the order they were given. Each member is the bytes [`ParallelGzip`]
/// makes of the same data, so they do not depend on the thread count either; a worker keeps
/// its deflaters from one member to the next.
pub(crate) struct MemberPool<'scope, 'env, W: Write> {
    scope: &'scope Scope<'scope, 'env>,
    level: u32,
    out: W,
    /// Compressed bytes written so far, and where each member written starts.
    written: u64,
    offsets: Vec<u64>,
    queue: Arc<Mutex<Receiver<Member>>>,
    jobs: SyncSender<Member>,
    workers: usize,
    max_workers: usize,
    in_flight: VecDeque<Receiver<io::Result<Vec<u8>>>>,
}

/// A member to compress.
struct Member {
    data: Vec<u8>,
    result: SyncSender<io::Result<Vec<u8>>>,
}

impl<'scope, 'env, W: Write> MemberPool<'scope, 'env, W> {
    pub(crate) fn new(
        scope: &'scope Scope<'scope, 'env>,
        out: W,
        level: u32,
        threads: usize,
    ) -> Self {
        let threads = threads.clamp(1, MAX_THREADS);
        let (jobs, queue) = sync_channel::<Member>(threads);
        MemberPool {
            scope,
            level: level.min(9),
            out,
            written: 0,
            offsets: Vec::new(),
            queue: Arc::new(Mutex::new(queue)),
            jobs,
            workers: 0,
            max_workers: threads,
            in_flight: VecDeque::new(),
        }
    }

    /// Queues `data` as the next member; returns its index.
    pub(crate) fn submit(&mut self, data: Vec<u8>) -> io::Result<usize> {
        let index = self.offsets.len() + self.in_flight.len();
        while self.in_flight.len() >= 2 * self.max_workers {
            self.write_oldest()?;
        }
        if self.workers < self.max_workers && self.workers <= self.in_flight.len() {
            let queue = Arc::clone(&self.queue);
            let level = self.level;
            self.scope.spawn(move || compress_members(&queue, level));
            self.workers += 1;
        }
        let (result, receiver) = sync_channel(1);
        self.jobs
            .send(Member { data, result })
            .map_err(|_| worker_gone())?;
        self.in_flight.push_back(receiver);
        Ok(index)
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(receiver) = self.in_flight.pop_front() {
            let member = receiver.recv().map_err(|_| worker_gone())??;
            self.out.write_all(&member)?;
            self.offsets.push(self.written);
            self.written += member.len() as u64;
        }
        Ok(())
    }

    /// Writes every member; returns the output, where each member starts in it, and how
    /// many bytes were written.
    pub(crate) fn finish(mut self) -> io::Result<(W, Vec<u64>, u64)> {
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        Ok((self.out, self.offsets, self.written))
    }
}

/// Worker loop of a [`MemberPool`]: whole members until the sending side is dropped.
fn compress_members(queue: &Mutex<Receiver<Member>>, level: u32) {
    let mut compressors = Compressors::new(level);
    loop {
        let member = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(member) = member else { return };
        let _ = member
            .result
            .send(gzip_member(&mut compressors, &member.data, level));
    }
}

/// One gzip member of `data`, block by block as [`ParallelGzip`] cuts it: full blocks end in
/// a sync flush, and the rest (empty when `data` fills its last block) ends the stream.
pub(crate) fn gzip_member(
    compressors: &mut Compressors,
    data: &[u8],
    level: u32,
) -> io::Result<Vec<u8>> {
    let mut out = gzip_header(level).to_vec();
    let full = data.len() / BLOCK_SIZE;
    for i in 0..=full {
        let start = i * BLOCK_SIZE;
        let end = if i == full {
            data.len()
        } else {
            start + BLOCK_SIZE
        };
        let from = start.saturating_sub(DICTIONARY_SIZE);
        out.extend(deflate_block(
            compressors,
            &data[from..end],
            start - from,
            i == full,
        )?);
    }
    let mut crc = Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    Ok(out)
}

/// A gzip member header with no name and mtime 0, like flate2's `GzEncoder` writes.
fn gzip_header(level: u32) -> [u8; 10] {
    let extra_flags = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, extra_flags, 255]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{random_files_as_tar_holds_them, xorshift_bytes};

    fn effort_of(data: &[u8]) -> Effort {
        effort(&mut Compress::new(Compression::fast(), false), data, 0)
    }

    #[test]
    fn each_kind_of_block_gets_the_effort_it_is_worth() {
        let random = xorshift_bytes(BLOCK_SIZE, 3);
        assert_eq!(effort_of(&random), Effort::Store);
        let files = random_files_as_tar_holds_them(BLOCK_SIZE);
        assert_eq!(effort_of(&files), Effort::Runs);
        let text: Vec<u8> = (0..BLOCK_SIZE / 8)
            .flat_map(|i| format!("{:07x}\n", i * 7919 % 100_003).into_bytes())
            .collect();
        assert_eq!(effort_of(&text), Effort::Full);
    }
}
