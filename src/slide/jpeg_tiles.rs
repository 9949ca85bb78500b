//! TurboJPEG fast paths for JPEG-tiled TIFF levels (Aperio .svs, generic tiled TIFF):
//! - [`decode_level`]: a whole level at full resolution, tiles decoded in parallel straight into
//!   place, for the tissue mask (several times faster than OpenSlide's single-threaded read).
//! - [`JpegTiles`]: feature extraction's common case, a level read at a whole fraction of its
//!   resolution (a 40x slide's 512 px patch seen at 256 px). Each tile is decoded once per reader
//!   at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, several times cheaper than decoding it
//!   whole through OpenSlide and resizing.
//!
//! Both compare decoded tiles with OpenSlide's pixels first and decline the slide when they
//! disagree, so anything unusual goes the OpenSlide way.
//!
//! TurboJPEG's C API is declared here by hand: the `turbojpeg` crate needs TurboJPEG 3, and
//! Debian 12 ships 2.1.5 (`libturbojpeg0-dev`); these five functions are stable since 1.2.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::raw::{c_char, c_int, c_ulong, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    /// The image size `jpeg`'s header declares.
    fn size(&self, jpeg: &[u8]) -> Result<(usize, usize), String> {
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
        if rc != 0 || w <= 0 || h <= 0 {
            return Err(self.error());
        }
        Ok((w as usize, h as usize))
    }

    /// Decodes `jpeg` to RGB at 1/`scale` of its size; returns (pixels, width, height).
    fn decode(&self, jpeg: &[u8], scale: u32) -> Result<(Vec<u8>, usize, usize), String> {
        let (w, h) = self.size(jpeg)?;
        let s = scale as usize;
        let (sw, sh) = (w.div_ceil(s), h.div_ceil(s));
        let mut out = vec![0u8; sw * sh * 3];
        self.decode_into(jpeg, &mut out, sw, sh, sw * 3)?;
        Ok((out, sw, sh))
    }

    /// Decodes `jpeg` scaled to `width` x `height` (its size or a DCT scaling of it) into
    /// `dst`, rows `pitch` bytes apart.
    fn decode_into(
        &self,
        jpeg: &[u8],
        dst: &mut [u8],
        width: usize,
        height: usize,
        pitch: usize,
    ) -> Result<(), String> {
        let (w, h) = self.size(jpeg)?;
        // TurboJPEG writes the scaled size nearest to the one asked for; only these are exact.
        let exact = [1, 2, 4, 8]
            .iter()
            .any(|&s| w.div_ceil(s) == width && h.div_ceil(s) == height);
        if !exact
            || height == 0
            || pitch < width * 3
            || dst.len() < (height - 1) * pitch + width * 3
        {
            return Err(format!(
                "a {w}x{h} JPEG does not fit a {width}x{height} destination"
            ));
        }
        // SAFETY: `dst` holds `height` rows of `width` RGB pixels `pitch` bytes apart (checked
        // above), the size TurboJPEG writes for this exact scaled size.
        let rc = unsafe {
            tjDecompress2(
                self.0,
                jpeg.as_ptr(),
                jpeg.len() as c_ulong,
                dst.as_mut_ptr(),
                width as c_int,
                pitch as c_int,
                height as c_int,
                TJPF_RGB,
                0,
            )
        };
        if rc != 0 {
            return Err(self.error());
        }
        Ok(())
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

/// Where one JPEG-tiled level of a TIFF file keeps its tiles.
struct Level {
    tile_w: u32,
    tile_h: u32,
    across: u32,
    width: u64,
    height: u64,
    offsets: Vec<u64>,
    counts: Vec<u64>,
    tables: Vec<u8>,
    /// Photometric RGB: the JPEG streams hold R, G, B without a colour transform (Aperio's
    /// usual choice), which OpenSlide tells libjpeg; TurboJPEG learns it from an Adobe marker.
    rgb: bool,
}

/// An Adobe APP14 segment with transform 0: the components are RGB, not YCbCr.
const ADOBE_RGB: [u8; 16] = [
    0xFF, 0xEE, 0x00, 0x0E, b'A', b'd', b'o', b'b', b'e', 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00,
];
const PHOTOMETRIC_RGB: u32 = 2;

impl Level {
    /// The TIFF directory holding `slide`'s `level` (the tiled one of that size), when it is
    /// JPEG-compressed with tiles that divide by 8 x `scale`.
    fn find(path: &Path, slide: &Slide, level: u32, scale: u32) -> Option<Self> {
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
        let rgb = decoder.get_tag_u32(Tag::PhotometricInterpretation).ok() == Some(PHOTOMETRIC_RGB);
        let across = (width as u32).div_ceil(tile_w);
        if offsets.len() != counts.len()
            || offsets.len() < (across * (height as u32).div_ceil(tile_h)) as usize
        {
            return None;
        }
        Some(Self {
            tile_w,
            tile_h,
            across,
            width,
            height,
            offsets,
            counts,
            tables,
            rgb,
        })
    }

    /// Tile `index`'s JPEG stream, with the level's shared tables spliced in front; empty for
    /// a tile the file leaves out (OpenSlide draws it transparent).
    fn tile_bytes(&self, file: &File, index: usize) -> Result<Vec<u8>, String> {
        use std::os::unix::fs::FileExt;
        let (offset, count) = (self.offsets[index], self.counts[index] as usize);
        let mut data = vec![0u8; count];
        file.read_exact_at(&mut data, offset)
            .map_err(|e| format!("tile {index} at byte {offset}: {e}"))?;
        if data.len() < 2 {
            return Ok(data);
        }
        // SOI, [Adobe RGB marker], [the level's tables without their SOI and EOI], the tile
        // without its SOI.
        let mut joined = Vec::with_capacity(data.len() + self.tables.len() + ADOBE_RGB.len());
        joined.extend_from_slice(&data[..2]);
        if self.rgb {
            joined.extend_from_slice(&ADOBE_RGB);
        }
        if self.tables.len() > 4 {
            joined.extend_from_slice(&self.tables[2..self.tables.len() - 2]);
        }
        joined.extend_from_slice(&data[2..]);
        Ok(joined)
    }

    /// Sum of absolute differences between tile `index` decoded whole here and OpenSlide's
    /// pixels of the same area, and the number of values compared; None when either fails.
    fn difference_from_openslide(
        &self,
        file: &File,
        turbo: &Turbo,
        slide: &Slide,
        level: u32,
        index: usize,
    ) -> Option<(u64, u64)> {
        let (tx, ty) = ((index as u32 % self.across), (index as u32 / self.across));
        let jpeg = self.tile_bytes(file, index).ok()?;
        let (mine, _, _) = turbo.decode(&jpeg, 1).ok()?;
        let w = (self.width - u64::from(tx * self.tile_w)).min(u64::from(self.tile_w)) as usize;
        let h = (self.height - u64::from(ty * self.tile_h)).min(u64::from(self.tile_h)) as usize;
        let downsample = slide
            .downsamples()
            .get(level as usize)
            .copied()
            .unwrap_or(1.0);
        let x0 = (f64::from(tx * self.tile_w) * downsample).round() as i64;
        let y0 = (f64::from(ty * self.tile_h) * downsample).round() as i64;
        let theirs = slide
            .read_rgb_bytes(x0, y0, level, w as u32, h as u32)
            .ok()?;
        let stride = self.tile_w as usize * 3;
        let mut total = 0u64;
        for row in 0..h {
            let a = mine.get(row * stride..row * stride + w * 3)?;
            let b = &theirs[row * w * 3..(row + 1) * w * 3];
            total += a
                .iter()
                .zip(b)
                .map(|(a, b)| u64::from(a.abs_diff(*b)))
                .sum::<u64>();
        }
        Some((total, (w * h * 3) as u64))
    }
}

/// One JPEG-tiled level of a TIFF file, read tile by tile with a small cache of decoded tiles.
/// Each reader thread has its own (file handle, TurboJPEG handle, cache); the level's layout is
/// parsed and checked once per slide and shared ([`JpegTiles::another`]).
pub struct JpegTiles {
    path: PathBuf,
    file: File,
    turbo: Turbo,
    level: Arc<Level>,
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
        let found = Level::find(path, slide, level, scale)?;
        let file = File::open(path).ok()?;
        let turbo = Turbo::new()?;
        // A tile in the middle: catches colour-space or layout surprises (mean difference
        // under one level: the patches are resized afterwards anyway).
        let middle = found.offsets.len() / 2;
        let (diff, n) = found.difference_from_openslide(&file, &turbo, slide, level, middle)?;
        ((diff as f64) < n as f64).then(|| Self {
            path: path.to_owned(),
            file,
            turbo,
            level: Arc::new(found),
            scale,
            cache: HashMap::new(),
            order: VecDeque::new(),
        })
    }

    /// Another reader of the same level: its own file and TurboJPEG handles and an empty
    /// cache, the layout and the check shared (opening costs a file open, not a TIFF parse).
    pub fn another(&self) -> Option<Self> {
        Some(Self {
            path: self.path.clone(),
            file: File::open(&self.path).ok()?,
            turbo: Turbo::new()?,
            level: Arc::clone(&self.level),
            scale: self.scale,
            cache: HashMap::new(),
            order: VecDeque::new(),
        })
    }

    /// The decoded tile at 1/scale, from the cache when there; a tile the file leaves out is
    /// empty (the caller leaves the background there, as OpenSlide draws it).
    fn tile(&mut self, index: usize) -> Result<&[u8], String> {
        if !self.cache.contains_key(&index) {
            // The evicted tile's buffer is reused: no allocation per decode.
            let mut pixels = Vec::new();
            if self.order.len() >= CACHE_TILES {
                if let Some(old) = self.order.pop_front() {
                    pixels = self.cache.remove(&old).unwrap_or_default();
                }
            }
            if self.level.counts.get(index).copied().unwrap_or(0) == 0 {
                pixels.clear();
            } else {
                let jpeg = self.level.tile_bytes(&self.file, index)?;
                let (w, h) = self.turbo.size(&jpeg)?;
                let s = self.scale as usize;
                let (sw, sh) = (w.div_ceil(s), h.div_ceil(s));
                let expected = (
                    self.level.tile_w as usize / s,
                    self.level.tile_h as usize / s,
                );
                if (sw, sh) != expected {
                    return Err(format!(
                        "tile {index} is {w}x{h}, not {}x{}",
                        self.level.tile_w, self.level.tile_h
                    ));
                }
                pixels.resize(sw * sh * 3, 0);
                self.turbo.decode_into(&jpeg, &mut pixels, sw, sh, sw * 3)?;
            }
            self.order.push_back(index);
            self.cache.insert(index, pixels);
        }
        Ok(self.cache.get(&index).map(Vec::as_slice).unwrap_or(&[]))
    }

    /// The region [x, x + size) x [y, y + size) of the level (level pixels, x and y multiples
    /// of the scale) as (size / scale)² RGB bytes written into `out`; outside the image and
    /// in tiles the file leaves out: `background`.
    pub fn read_into(
        &mut self,
        x: i64,
        y: i64,
        size: u32,
        background: [u8; 3],
        out: &mut [u8],
    ) -> Result<(), String> {
        let s = i64::from(self.scale);
        let out_side = (size / self.scale) as i64;
        if out.len() != (out_side * out_side * 3) as usize {
            return Err(format!(
                "a {out_side}x{out_side} RGB patch needs {} bytes, not {}",
                out_side * out_side * 3,
                out.len()
            ));
        }
        let (tw, th) = (i64::from(self.level.tile_w), i64::from(self.level.tile_h));
        let (stw, sth) = (tw / s, th / s);
        let x_end = (x + i64::from(size)).min(self.level.width as i64);
        let y_end = (y + i64::from(size)).min(self.level.height as i64);
        let (x0, y0) = (x.max(0), y.max(0));
        let inside =
            x0 == x && y0 == y && x_end == x + i64::from(size) && y_end == y + i64::from(size);
        if !inside {
            fill(out, background);
        }
        if x0 >= x_end || y0 >= y_end {
            return Ok(());
        }
        for ty in y0 / th..=(y_end - 1) / th {
            for tx in x0 / tw..=(x_end - 1) / tw {
                let index = (ty * i64::from(self.level.across) + tx) as usize;
                // Overlap of this tile with the region, in scaled pixels.
                let (ax, bx) = ((tx * tw).max(x0), ((tx + 1) * tw).min(x_end));
                let (ay, by) = ((ty * th).max(y0), ((ty + 1) * th).min(y_end));
                let cols = ((bx - ax) / s) as usize;
                let dst_col = ((ax / s) - x / s) as usize;
                let tile = self.tile(index)?;
                for yy in (ay / s)..(by / s) {
                    let dst_row = (yy - y / s) as usize;
                    let dst = &mut out[(dst_row * out_side as usize + dst_col) * 3..][..cols * 3];
                    if tile.is_empty() {
                        fill(dst, background);
                        continue;
                    }
                    let src_row = (yy - ty * sth) as usize;
                    let src_col = ((ax / s) - tx * stw) as usize;
                    dst.copy_from_slice(
                        &tile[(src_row * stw as usize + src_col) * 3..][..cols * 3],
                    );
                }
            }
        }
        Ok(())
    }

    pub fn scale(&self) -> u32 {
        self.scale
    }
}

fn fill(rgb: &mut [u8], colour: [u8; 3]) {
    for px in rgb.chunks_exact_mut(3) {
        px.copy_from_slice(&colour);
    }
}

/// A whole JPEG-tiled level of `slide` at full resolution, as RGB rows of the level's width:
/// tiles decoded by TurboJPEG straight into place, bands of tile rows in parallel. OpenSlide
/// decodes the same JPEG streams with the same libjpeg settings, so the pixels are identical;
/// tiles from the first, middle and last rows are compared with OpenSlide's byte for byte, and
/// any difference, unusual layout or decoding error returns None (read it through OpenSlide).
pub fn decode_level(path: &Path, slide: &Slide, level: u32) -> Option<Vec<u8>> {
    use rayon::prelude::*;
    let found = Level::find(path, slide, level, 1)?;
    let file = File::open(path).ok()?;
    let turbo = Turbo::new()?;
    let n = (found.across * (found.height as u32).div_ceil(found.tile_h)) as usize;
    if n == 0 {
        return None;
    }
    for index in [0, n / 2, n - 1] {
        if found.counts[index] > 0
            && found
                .difference_from_openslide(&file, &turbo, slide, level, index)?
                .0
                != 0
        {
            return None;
        }
    }
    let background = slide.background();
    let (width, tile_w, tile_h) = (
        found.width as usize,
        found.tile_w as usize,
        found.tile_h as usize,
    );
    let pitch = width * 3;
    let mut pixels = vec![0u8; width * found.height as usize * 3];
    pixels
        .par_chunks_mut(tile_h * pitch)
        .enumerate()
        .try_for_each_init(Turbo::new, |turbo, (ty, band)| -> Result<(), String> {
            let turbo = turbo.as_ref().ok_or("no TurboJPEG handle")?;
            let rows = band.len() / pitch;
            let mut partial = Vec::new();
            for tx in 0..found.across as usize {
                let index = ty * found.across as usize + tx;
                let x0 = tx * tile_w;
                let cols = tile_w.min(width - x0);
                if found.counts[index] == 0 {
                    for row in band.chunks_mut(pitch) {
                        fill(&mut row[x0 * 3..(x0 + cols) * 3], background);
                    }
                    continue;
                }
                let jpeg = found.tile_bytes(&file, index)?;
                if turbo.size(&jpeg)? != (tile_w, tile_h) {
                    return Err(format!("tile {index} is not {tile_w}x{tile_h}"));
                }
                if cols == tile_w && rows == tile_h {
                    turbo.decode_into(&jpeg, &mut band[x0 * 3..], tile_w, tile_h, pitch)?;
                } else {
                    // An edge tile: decode whole, keep the part inside the level.
                    partial.resize(tile_w * tile_h * 3, 0);
                    turbo.decode_into(&jpeg, &mut partial, tile_w, tile_h, tile_w * 3)?;
                    for (r, row) in band.chunks_mut(pitch).enumerate() {
                        row[x0 * 3..(x0 + cols) * 3]
                            .copy_from_slice(&partial[r * tile_w * 3..][..cols * 3]);
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| tracing::debug!("{}: TurboJPEG level decode declined: {e}", path.display()))
        .ok()?;
    Some(pixels)
}
