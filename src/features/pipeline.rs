//! The producer side of feature extraction: a pool of reader threads turns coordinates into
//! ready batches of RGB bytes, slide after slide, into a bounded queue that the model drains.
//! Memory stays at `queue_batches` + 1 batches whatever the slide size, and the model never
//! waits for a slide to be opened or a batch to be decoded unless the readers are slower.

use std::path::PathBuf;
use std::sync::mpsc::SyncSender;

use rayon::prelude::*;

use super::patch::{self, Geometry};
use crate::slide::reader::Slide;

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
/// receiver is gone.
pub fn produce(
    jobs: Vec<Job>,
    batch_size: usize,
    pool: &rayon::ThreadPool,
    sender: SyncSender<Message>,
) {
    for job in jobs {
        let slide = match Slide::open(&job.slide) {
            Ok(slide) => slide,
            Err(e) => {
                if sender.send(Message::Failed(e.to_string())).is_err() {
                    return;
                }
                continue;
            }
        };
        // OpenSlide reads a level it does not have as transparent pixels, without an error.
        if job.geometry.level >= slide.level_count() {
            let message = format!(
                "{}: the patches file asks for level {}, but the slide has {} level(s); was it tiled from another file?",
                job.slide.display(),
                job.geometry.level,
                slide.level_count()
            );
            if sender.send(Message::Failed(message)).is_err() {
                return;
            }
            continue;
        }
        let mut outcome = Message::End;
        for chunk in job.coords.chunks(batch_size.max(1)) {
            let read: Result<Vec<(Vec<u8>, f64, f64)>, _> = pool.install(|| {
                chunk
                    .par_iter()
                    .map(|&[x, y]| patch::read(&slide, job.geometry, x, y))
                    .collect()
            });
            match read {
                Ok(patches) => {
                    let (read_s, resize_s) = patches
                        .iter()
                        .fold((0.0, 0.0), |(r, z), p| (r + p.1, z + p.2));
                    let pixels = patches.into_iter().flat_map(|p| p.0).collect();
                    let message = Message::Batch {
                        pixels,
                        rows: chunk.len(),
                        read_s,
                        resize_s,
                    };
                    if sender.send(message).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    outcome = Message::Failed(e.to_string());
                    break;
                }
            }
        }
        if sender.send(outcome).is_err() {
            return;
        }
    }
}
