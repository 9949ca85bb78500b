//! The producer side of feature extraction: a pool of reader threads turns coordinates into
//! ready batches of RGB bytes, slide after slide, into a bounded queue that the model drains.
//! Memory stays at `queue_batches` + 1 batches whatever the slide size, and the model never
//! waits for a slide to be opened or a batch to be decoded unless the readers are slower.

use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::sync::Mutex;

use rayon::prelude::*;

use super::patch::{Geometry, Reader};

/// One slide's work for the readers.
#[derive(Debug, Clone)]
pub struct Job {
    pub slide: PathBuf,
    pub geometry: Geometry,
    pub coords: Vec<[i64; 2]>,
}

/// What the readers send, in job order; every job ends with `End` or `Failed`.
pub enum Message {
    Batch {
        /// `rows` patches of input_size² RGB bytes, row-major.
        pixels: Vec<u8>,
        rows: usize,
        /// Seconds summed over the readers: OpenSlide (read + decode), resize.
        read_s: f64,
        resize_s: f64,
    },
    End,
    Failed(String),
}

/// Batch buffers the consumer hands back once it has staged them. A 256-patch batch is 50 MB,
/// which glibc would map and unmap for every batch, and the readers would page-fault their
/// way through each new mapping.
#[derive(Default)]
pub struct Buffers(Mutex<Vec<Vec<u8>>>);

/// Buffers kept for reuse (the queue's batches plus the ones being filled and staged).
const KEEP_BUFFERS: usize = 8;

impl Buffers {
    /// A buffer of `len` bytes; its contents are stale (every patch slot is written in full).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buffer = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        buffer.resize(len, 0);
        buffer
    }

    pub fn give(&self, buffer: Vec<u8>) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEEP_BUFFERS {
            kept.push(buffer);
        }
    }
}

/// One reader per pool thread for `job`'s slide: the first opened and checked, the others
/// sharing its fast-path layout. Errors name the slide.
fn open_readers(job: &Job, readers: usize, fast_jpeg: bool) -> Result<Vec<Mutex<Reader>>, String> {
    let first = Reader::open(&job.slide, job.geometry, fast_jpeg).map_err(|e| e.to_string())?;
    let levels = first.slide.level_count();
    // OpenSlide reads a level it does not have as transparent pixels, without an error.
    if job.geometry.level >= levels {
        return Err(format!(
            "{}: the patches file asks for level {}, but the slide has {levels} level(s); was it tiled from another file?",
            job.slide.display(),
            job.geometry.level,
        ));
    }
    if first.tiles.is_some() {
        tracing::debug!(
            "{}: JPEG tiles decoded at reduced scale",
            job.slide.display()
        );
    }
    let mut handles = Vec::with_capacity(readers);
    for _ in 1..readers {
        handles.push(Mutex::new(first.another().map_err(|e| e.to_string())?));
    }
    handles.push(Mutex::new(first));
    Ok(handles)
}

/// Reads every job's patches in order, `batch_size` at a time, on `pool`; stops early when the
/// receiver is gone. Each pool thread reads through its own handles (OpenSlide, file, JPEG
/// tile cache; no shared locks); the patches of a batch are shared out by work stealing in
/// runs of consecutive patches, which in the grid's column order share tile rows, so most
/// JPEG tiles are decoded once and no reader idles while another finishes a long run. The
/// next slide's handles are opened on a helper thread while this one is read.
pub fn produce(
    jobs: Vec<Job>,
    batch_size: usize,
    fast_jpeg: bool,
    pool: &rayon::ThreadPool,
    sender: SyncSender<Message>,
    buffers: &Buffers,
) {
    let readers = pool.current_num_threads().max(1);
    std::thread::scope(|scope| {
        let open = |job| scope.spawn(move || open_readers(job, readers, fast_jpeg));
        let mut next = jobs.first().map(open);
        for (k, job) in jobs.iter().enumerate() {
            let opened = match next.take().map(|h| h.join()) {
                Some(Ok(opened)) => opened,
                _ => Err(format!("{}: opening the slide failed", job.slide.display())),
            };
            next = jobs.get(k + 1).map(open);
            let handles = match opened {
                Ok(handles) => handles,
                Err(message) => {
                    if sender.send(Message::Failed(message)).is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Some(last) = read_job(job, &handles, batch_size, pool, &sender, buffers) else {
                return;
            };
            if sender.send(last).is_err() {
                return;
            }
        }
    });
}

/// Sends `job`'s batches; returns its last message (`End` or `Failed`), or None when the
/// receiver is gone.
fn read_job(
    job: &Job,
    handles: &[Mutex<Reader>],
    batch_size: usize,
    pool: &rayon::ThreadPool,
    sender: &SyncSender<Message>,
    buffers: &Buffers,
) -> Option<Message> {
    let patch_bytes = (job.geometry.input_size as usize).pow(2) * 3;
    for chunk in job.coords.chunks(batch_size.max(1)) {
        let mut pixels = buffers.take(chunk.len() * patch_bytes);
        let read = pool.install(|| {
            pixels
                .par_chunks_mut(patch_bytes)
                .zip(chunk.par_iter())
                .with_min_len(2)
                .map(|(dst, &[x, y])| {
                    let thread = pool.current_thread_index().unwrap_or(0) % handles.len();
                    let mut reader = handles[thread].lock().unwrap_or_else(|e| e.into_inner());
                    reader.read_into(job.geometry, x, y, dst)
                })
                .try_reduce(|| (0.0, 0.0), |a, b| Ok((a.0 + b.0, a.1 + b.1)))
        });
        let (read_s, resize_s) = match read {
            Ok(seconds) => seconds,
            Err(e) => return Some(Message::Failed(e.to_string())),
        };
        let message = Message::Batch {
            pixels,
            rows: chunk.len(),
            read_s,
            resize_s,
        };
        sender.send(message).ok()?;
    }
    Some(Message::End)
}
