//! A bounded pipe of byte chunks from one thread to another: one thread decompresses (and
//! hashes) a layer while another extracts it, so the two halves of the work run on two cores.
//! At most [`DEPTH`] chunks of [`CHUNK`] bytes are in flight, whatever the layer's size.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

const CHUNK: usize = 256 * 1024;
const DEPTH: usize = 4;

/// A new pipe: its sending end for the producing thread, its reading end for the consumer.
pub fn chunk_pipe() -> (ChunkSender, ChunkReader) {
    let (tx, rx) = sync_channel(DEPTH);
    (
        ChunkSender(tx),
        ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        },
    )
}

/// The producing end.
pub struct ChunkSender(SyncSender<io::Result<Vec<u8>>>);

impl ChunkSender {
    /// Sends `from` to its end. A read error is passed on to the reader, which reads it where
    /// the data would have been. Returns whether `from` was read to its end; `false` also when
    /// the reader went away first.
    pub fn pump(self, from: &mut impl Read) -> bool {
        loop {
            let mut chunk = vec![0; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match from.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if filled > 0 {
                            chunk.truncate(filled);
                            let _ = self.0.send(Ok(chunk));
                        }
                        let _ = self.0.send(Err(e));
                        return false;
                    }
                }
            }
            if filled == 0 {
                return true;
            }
            chunk.truncate(filled);
            if self.0.send(Ok(chunk)).is_err() {
                return false;
            }
        }
    }
}

/// The reading end: the bytes in order, then the end (all senders gone).
pub struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk?;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
