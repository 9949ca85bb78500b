//! The producer side of feature extraction: a pool of reader threads turns coordinates into
//! ready batches of RGB bytes, slide after slide, into a bounded queue that the model drains.
//! Memory stays at `queue_batches` + 1 batches whatever the slide size, and the model never
//! waits for a slide to be opened or a batch to be decoded unless the readers are slower.

use std::path::PathBuf;
use std::sync::mpsc::SyncSender;

use rayon::prelude::*;

use super::patch::{Geometry, Reader};
use crate::slide::reader::SlideError;

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

/// Reads every job's patches in order, `batch_size` at a time, on `pool`; stops early when the
/// receiver is gone. Each reader thread has its own OpenSlide handle (its own tile cache and
/// file handles, no shared locks) and takes a run of consecutive patches, which in the grid's
/// column order share tile rows, so most JPEG tiles are decoded once.
pub fn produce(
    jobs: Vec<Job>,
    batch_size: usize,
    fast_jpeg: bool,
    pool: &rayon::ThreadPool,
    sender: SyncSender<Message>,
) {
    let readers = pool.current_num_threads().max(1);
    for job in jobs {
        let handles: Result<Vec<Reader>, _> = (0..readers)
            .map(|_| Reader::open(&job.slide, job.geometry, fast_jpeg))
            .collect();
        let mut handles = match handles {
            Ok(handles) => handles,
            Err(e) => {
                if sender.send(Message::Failed(e.to_string())).is_err() {
                    return;
                }
                continue;
            }
        };
        let levels = handles[0].slide.level_count();
        // OpenSlide reads a level it does not have as transparent pixels, without an error.
        if job.geometry.level >= levels {
            let message = format!(
                "{}: the patches file asks for level {}, but the slide has {levels} level(s); was it tiled from another file?",
                job.slide.display(),
                job.geometry.level,
            );
            if sender.send(Message::Failed(message)).is_err() {
                return;
            }
            continue;
        }
        let patch_bytes = (job.geometry.input_size as usize).pow(2) * 3;
        if handles[0].tiles.is_some() {
            tracing::debug!(
                "{}: JPEG tiles decoded at reduced scale",
                job.slide.display()
            );
        }
        let mut outcome = Message::End;
        for chunk in job.coords.chunks(batch_size.max(1)) {
            let per_reader = chunk.len().div_ceil(readers);
            let mut pixels = vec![0u8; chunk.len() * patch_bytes];
            let read: Vec<Result<(f64, f64), SlideError>> = pool.install(|| {
                pixels
                    .par_chunks_mut(per_reader * patch_bytes)
                    .zip(chunk.par_chunks(per_reader))
                    .zip(handles.par_iter_mut())
                    .map(|((out, coords), reader)| {
                        let (mut read_s, mut resize_s) = (0.0, 0.0);
                        for (dst, &[x, y]) in out.chunks_mut(patch_bytes).zip(coords) {
                            let (bytes, r, z) = reader.read(job.geometry, x, y)?;
                            dst.copy_from_slice(&bytes);
                            read_s += r;
                            resize_s += z;
                        }
                        Ok((read_s, resize_s))
                    })
                    .collect()
            });
            let mut totals = (0.0, 0.0);
            let mut failure = None;
            for r in read {
                match r {
                    Ok((a, b)) => {
                        totals.0 += a;
                        totals.1 += b;
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                outcome = Message::Failed(e.to_string());
                break;
            }
            let message = Message::Batch {
                pixels,
                rows: chunk.len(),
                read_s: totals.0,
                resize_s: totals.1,
            };
            if sender.send(message).is_err() {
                return;
            }
        }
        if sender.send(outcome).is_err() {
            return;
        }
    }
}
