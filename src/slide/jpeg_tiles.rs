//! A fast path for the common case of feature extraction: a JPEG-tiled TIFF level (Aperio .svs,
//! generic tiled TIFF) read at a whole fraction of its resolution (a 40x slide's 512 px patch
//! seen at 256 px). Each tile is decoded once per reader at 1/2, 1/4 or 1/8 scale by libjpeg's
//! DCT scaling (TurboJPEG), several times cheaper than decoding it whole through OpenSlide and
//! resizing. [`JpegTiles::open`] checks the decoded pixels against OpenSlide on a real tile and
//! declines the slide when they disagree, so anything unusual goes the OpenSlide way.
//!
//! TurboJPEG's C API is declared here by hand: the `turbojpeg` crate needs TurboJPEG 3, and
//! Debian 12 ships 2.1.5 (`libturbojpeg0-dev`); these five functions are stable since 1.2.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::raw::{c_char, c_int, c_ulong, c_void};
use std::path::Path;

use tiff::decoder::Decoder;
use tiff::tags::Tag;

use super::reader::Slide;

#[link(name = "turbojpeg")]
extern "C" {
    fn tjInitDecompress() -> *mut c_void;
    fn tjDecompressHeader3(
        handle: *mut c_void,
        jpeg: *const u8,
        size: c_ulong,
        width: *mut c_int,
        height: *mut c_int,
        subsampling: *mut c_int,
        colorspace: *mut c_int,
    ) -> c_int;
    fn tjDecompress2(
        handle: *mut c_void,
        jpeg: *const u8,
        size: c_ulong,
        dst: *mut u8,
        width: c_int,
        pitch: c_int,
        height: c_int,
        pixel_format: c_int,
        flags: c_int,
    ) -> c_int;
    fn tjDestroy(handle: *mut c_void) -> c_int;
    fn tjGetErrorStr2(handle: *mut c_void) -> *mut c_char;
}

const TJPF_RGB: c_int = 0;
/// Decoded tiles kept per reader (at 1/2 scale of 256 px tiles: 48 KiB each).
const CACHE_TILES: usize = 256;
const JPEG_COMPRESSION: u32 = 7;

struct Turbo(*mut c_void);

impl Turbo {
    fn new() -> Option<Self> {
        // SAFETY: tjInitDecompress has no preconditions; a null handle means failure.
        let handle = unsafe { tjInitDecompress() };
        (!handle.is_null()).then_some(Self(handle))
    }

    fn error(&self) -> String {
        // SAFETY: the handle is valid; TurboJPEG returns a NUL-terminated static or per-handle
        // string.
        unsafe {
            let text = tjGetErrorStr2(self.0);
            if text.is_null() {
                return "unknown TurboJPEG error".into();
            }
            std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned()
        }
    }

    /// Decodes `jpeg` to RGB at 1/`scale` of its size; returns (pixels, width, height).
    fn decode(&self, jpeg: &[u8], scale: u32) -> Result<(Vec<u8>, usize, usize), String> {
        let (mut w, mut h, mut sub, mut cs) = (0, 0, 0, 0);
        // SAFETY: the buffer pointer and length describe `jpeg`; the out-pointers are locals.
        let rc = unsafe {
            tjDecompressHeader3(
                self.0,
                jpeg.as_ptr(),
                jpeg.len() as c_ulong,
                &mut w,
                &mut h,
                &mut sub,
                &mut cs,
            )
        };
        if rc != 0 {
            return Err(self.error());
        }
        let s = scale as c_int;
        let (sw, sh) = ((w + s - 1) / s, (h + s - 1) / s);
        let mut out = vec![0u8; (sw * sh * 3) as usize];
        // SAFETY: `out` holds sw x sh RGB pixels with pitch sw * 3, the size TurboJPEG writes
        // when asked for that scaled size.
        let rc = unsafe {
            tjDecompress2(
                self.0,
                jpeg.as_ptr(),
                jpeg.len() as c_ulong,
                out.as_mut_ptr(),
                sw,
                sw * 3,
                sh,
                TJPF_RGB,
                0,
            )
        };
        if rc != 0 {
            return Err(self.error());
        }
        Ok((out, sw as usize, sh as usize))
    }
}

impl Drop for Turbo {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInitDecompress and is destroyed once.
        unsafe {
            tjDestroy(self.0);
        }
    }
}

// SAFETY: a TurboJPEG handle may move between threads; it is never shared (no Sync).
unsafe impl Send for Turbo {}

/// One JPEG-tiled level of a TIFF file, read tile by tile with a small cache of decoded tiles.
pub struct JpegTiles {
    file: File,
    turbo: Turbo,
    tile_w: u32,
    tile_h: u32,
    across: u32,
    width: u64,
    height: u64,
    offsets: Vec<u64>,
    counts: Vec<u64>,
    tables: Vec<u8>,
    scale: u32,
    cache: HashMap<usize, Vec<u8>>,
    order: VecDeque<usize>,
}

impl JpegTiles {
    /// The fast path for `slide`'s level of `width` x `height` read at 1/`scale`, or None when
    /// the file is not a JPEG-tiled TIFF with such a level, the tiles do not divide by the scale,
    /// or a decoded tile differs from OpenSlide's pixels.
    pub fn open(path: &Path, slide: &Slide, level: u32, scale: u32) -> Option<Self> {
        if ![2, 4, 8].contains(&scale) {
            return None;
        }
        let (width, height) = slide.dimensions(level);
        let mut decoder = Decoder::new(std::io::BufReader::new(File::open(path).ok()?)).ok()?;
        loop {
            let dims = decoder.dimensions().ok()?;
            let tiled = decoder.get_tag_u32(Tag::TileWidth).is_ok();
            if tiled && u64::from(dims.0) == width && u64::from(dims.1) == height {
                break;
            }
            if !decoder.more_images() {
                return None;
            }
            decoder.next_image().ok()?;
        }
        if decoder.get_tag_u32(Tag::Compression).ok()? != JPEG_COMPRESSION {
            return None;
        }
        let tile_w = decoder.get_tag_u32(Tag::TileWidth).ok()?;
        let tile_h = decoder.get_tag_u32(Tag::TileLength).ok()?;
        if tile_w % (8 * scale) != 0 || tile_h % (8 * scale) != 0 {
            return None;
        }
        let offsets = decoder.get_tag_u64_vec(Tag::TileOffsets).ok()?;
        let counts = decoder.get_tag_u64_vec(Tag::TileByteCounts).ok()?;
        let tables = match decoder.find_tag(Tag::JPEGTables).ok()? {
            Some(value) => value.into_u8_vec().ok()?,
            None => Vec::new(),
        };
        let across = (width as u32).div_ceil(tile_w);
        if offsets.len() != counts.len()
            || offsets.len() < (across * (height as u32).div_ceil(tile_h)) as usize
        {
            return None;
        }
        let mut tiles = Self {
            file: File::open(path).ok()?,
            turbo: Turbo::new()?,
            tile_w,
            tile_h,
            across,
            width,
            height,
            offsets,
            counts,
            tables,
            scale,
            cache: HashMap::new(),
            order: VecDeque::new(),
        };
        tiles.agrees_with(slide, level).then_some(tiles)
    }

    /// Compares one full-resolution tile decoded here with OpenSlide's pixels (mean absolute
    /// difference under 1 level): catches colour-space or layout surprises.
    fn agrees_with(&mut self, slide: &Slide, level: u32) -> bool {
        let index = (self.offsets.len() / 2).min(self.offsets.len().saturating_sub(1));
        let (tx, ty) = ((index as u32 % self.across), (index as u32 / self.across));
        let Ok(jpeg) = self.tile_bytes(index) else {
            return false;
        };
        let Ok((mine, w, h)) = self.turbo.decode(&jpeg, 1) else {
            return false;
        };
        let (w, h) = (
            w.min((self.width - u64::from(tx * self.tile_w)) as usize),
            h.min((self.height - u64::from(ty * self.tile_h)) as usize),
        );
        let downsample = slide
            .downsamples()
            .get(level as usize)
            .copied()
            .unwrap_or(1.0);
        let x0 = (f64::from(tx * self.tile_w) * downsample).round() as i64;
        let y0 = (f64::from(ty * self.tile_h) * downsample).round() as i64;
        let Ok(theirs) = slide.read_rgb_bytes(x0, y0, level, w as u32, h as u32) else {
            return false;
        };
        let stride = self.tile_w as usize * 3;
        let mut total = 0u64;
        for row in 0..h {
            for i in 0..w * 3 {
                let a = mine[row * stride + i];
                let b = theirs[row * w * 3 + i];
                total += u64::from(a.abs_diff(b));
            }
        }
        (total as f64 / (w * h * 3) as f64) < 1.0
    }

    /// A tile's JPEG stream, with the level's shared tables spliced in front.
    fn tile_bytes(&mut self, index: usize) -> Result<Vec<u8>, String> {
        let (offset, count) = (self.offsets[index], self.counts[index] as usize);
        let mut data = vec![0u8; count];
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(&mut data))
            .map_err(|e| format!("tile {index} at byte {offset}: {e}"))?;
        if self.tables.len() > 4 && data.len() > 2 {
            // tables: SOI ... EOI; tile: SOI ... EOI → SOI tables... tile-without-SOI.
            let mut joined = self.tables[..self.tables.len() - 2].to_vec();
            joined.extend_from_slice(&data[2..]);
            return Ok(joined);
        }
        Ok(data)
    }

    /// The decoded tile at 1/scale, from the cache when there.
    fn tile(&mut self, index: usize) -> Result<&[u8], String> {
        if !self.cache.contains_key(&index) {
            let jpeg = self.tile_bytes(index)?;
            let (pixels, _, _) = self.turbo.decode(&jpeg, self.scale)?;
            if self.order.len() >= CACHE_TILES {
                if let Some(old) = self.order.pop_front() {
                    self.cache.remove(&old);
                }
            }
            self.order.push_back(index);
            self.cache.insert(index, pixels);
        }
        Ok(self.cache.get(&index).map(Vec::as_slice).unwrap_or(&[]))
    }

    /// The region [x, x + size) x [y, y + size) of the level (level pixels, x and y multiples
    /// of the scale) as (size / scale)² RGB bytes; outside the image: `background`.
    pub fn read(
        &mut self,
        x: i64,
        y: i64,
        size: u32,
        background: [u8; 3],
    ) -> Result<Vec<u8>, String> {
        let s = i64::from(self.scale);
        let out_side = (size / self.scale) as i64;
        let mut out = Vec::with_capacity((out_side * out_side * 3) as usize);
        for _ in 0..out_side * out_side {
            out.extend_from_slice(&background);
        }
        let (tw, th) = (i64::from(self.tile_w), i64::from(self.tile_h));
        let (stw, sth) = (tw / s, th / s);
        let x_end = (x + i64::from(size)).min(self.width as i64);
        let y_end = (y + i64::from(size)).min(self.height as i64);
        let (x0, y0) = (x.max(0), y.max(0));
        if x0 >= x_end || y0 >= y_end {
            return Ok(out);
        }
        for ty in y0 / th..=(y_end - 1) / th {
            for tx in x0 / tw..=(x_end - 1) / tw {
                let index = (ty * i64::from(self.across) + tx) as usize;
                let tile = self.tile(index)?;
                // Overlap of this tile with the region, in scaled pixels.
                let (ax, bx) = ((tx * tw).max(x0), ((tx + 1) * tw).min(x_end));
                let (ay, by) = ((ty * th).max(y0), ((ty + 1) * th).min(y_end));
                let cols = ((bx - ax) / s) as usize;
                for yy in (ay / s)..(by / s) {
                    let src_row = (yy - ty * sth) as usize;
                    let src_col = ((ax / s) - tx * stw) as usize;
                    let dst_row = (yy - y / s) as usize;
                    let dst_col = ((ax / s) - x / s) as usize;
                    let src = &tile[(src_row * stw as usize + src_col) * 3..][..cols * 3];
                    let dst = &mut out[(dst_row * out_side as usize + dst_col) * 3..][..cols * 3];
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok(out)
    }

    pub fn scale(&self) -> u32 {
        self.scale
    }
}
