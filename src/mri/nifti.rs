//! NIfTI-1 and NIfTI-2 volumes (`.nii`, `.nii.gz`), read into float32 with the header's
//! scaling applied.
//!
//! Written by hand: the `nifti` crate (0.18) reads NIfTI-1 only, and the pipeline must accept
//! both. Only single-file volumes are read (not `.hdr`/`.img` pairs).

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a NIfTI file: {reason}")]
    NotNifti { path: PathBuf, reason: String },
    #[error("{path}: unsupported NIfTI data type code {code}")]
    DataType { path: PathBuf, code: i16 },
    #[error("{path}: the file holds {got} bytes of voxel data, the header needs {need}")]
    Truncated {
        path: PathBuf,
        got: usize,
        need: usize,
    },
}

/// A volume in NIfTI's own order: x fastest, then y, then z, then further dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Sizes of every dimension (3 for a volume, 4 for a time series, …).
    pub dims: Vec<usize>,
    /// Voxel size along x, y, z in millimetres (absolute `pixdim[1..4]`).
    pub spacing: [f64; 3],
    pub data: Vec<f32>,
    /// 1 or 2.
    pub version: u8,
}

impl Volume {
    /// The first three sizes (x, y, z); missing ones count as 1.
    pub fn shape3(&self) -> [usize; 3] {
        let at = |k: usize| self.dims.get(k).copied().unwrap_or(1);
        [at(0), at(1), at(2)]
    }

    /// Number of 3-D volumes stacked along the 4th and later dimensions.
    pub fn n_volumes(&self) -> usize {
        self.dims.iter().skip(3).product::<usize>().max(1)
    }

    /// Value at (x, y, z) of 3-D volume `t`.
    pub fn at(&self, x: usize, y: usize, z: usize, t: usize) -> f32 {
        let [nx, ny, nz] = self.shape3();
        self.data[x + nx * (y + ny * (z + nz * t))]
    }

    /// The 3-D volume `t` alone.
    pub fn volume(&self, t: usize) -> Volume {
        let [nx, ny, nz] = self.shape3();
        let n = nx * ny * nz;
        Volume {
            dims: vec![nx, ny, nz],
            spacing: self.spacing,
            data: self.data[t * n..(t + 1) * n].to_vec(),
            version: self.version,
        }
    }
}

/// The header fields the pipeline needs, from either layout.
struct Header {
    dims: Vec<usize>,
    datatype: i16,
    spacing: [f64; 3],
    vox_offset: usize,
    scl_slope: f64,
    scl_inter: f64,
    version: u8,
    big_endian: bool,
}

/// Little- or big-endian field reader over the header bytes.
struct Fields<'a> {
    bytes: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn take<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut b = [0u8; N];
        b.copy_from_slice(&self.bytes[at..at + N]);
        if self.big {
            b.reverse();
        }
        b
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.take(at))
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.take(at))
    }
    fn f32(&self, at: usize) -> f64 {
        f64::from(f32::from_le_bytes(self.take(at)))
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.take(at))
    }
}

fn parse_header(bytes: &[u8], path: &Path) -> Result<Header, NiftiError> {
    let not_nifti = |reason: &str| NiftiError::NotNifti {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if bytes.len() < 348 {
        return Err(not_nifti("shorter than a NIfTI header"));
    }
    let size_le = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let size_be = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let (version, big) = match (size_le, size_be) {
        (348, _) => (1, false),
        (_, 348) => (1, true),
        (540, _) => (2, false),
        (_, 540) => (2, true),
        _ => {
            return Err(not_nifti(
                "header size is neither 348 (NIfTI-1) nor 540 (NIfTI-2)",
            ))
        }
    };
    let f = Fields { bytes, big };
    let header = if version == 1 {
        let magic = &bytes[344..348];
        if magic != b"n+1\0" {
            return Err(not_nifti(
                "missing the single-file magic `n+1` (a .hdr/.img pair or an Analyze file)",
            ));
        }
        let ndim = f.i16(40);
        if !(1..=7).contains(&ndim) {
            return Err(not_nifti(&format!("dim[0] = {ndim} is not in 1..7")));
        }
        let dims = (1..=ndim as usize)
            .map(|k| f.i16(40 + 2 * k) as i64)
            .collect::<Vec<_>>();
        Header {
            dims: to_sizes(&dims).ok_or_else(|| not_nifti("a dimension is not positive"))?,
            datatype: f.i16(70),
            spacing: [f.f32(80).abs(), f.f32(84).abs(), f.f32(88).abs()],
            vox_offset: f.f32(108) as usize,
            scl_slope: f.f32(112),
            scl_inter: f.f32(116),
            version,
            big_endian: big,
        }
    } else {
        if bytes.len() < 540 {
            return Err(not_nifti("shorter than a NIfTI-2 header"));
        }
        if &bytes[4..7] != b"n+2" {
            return Err(not_nifti("missing the NIfTI-2 magic `n+2`"));
        }
        let ndim = f.i64(16);
        if !(1..=7).contains(&ndim) {
            return Err(not_nifti(&format!("dim[0] = {ndim} is not in 1..7")));
        }
        let dims = (1..=ndim as usize)
            .map(|k| f.i64(16 + 8 * k))
            .collect::<Vec<_>>();
        Header {
            dims: to_sizes(&dims).ok_or_else(|| not_nifti("a dimension is not positive"))?,
            datatype: f.i16(12),
            spacing: [f.f64(112).abs(), f.f64(120).abs(), f.f64(128).abs()],
            vox_offset: f.i64(168).max(0) as usize,
            scl_slope: f.f64(176),
            scl_inter: f.f64(184),
            version,
            big_endian: big,
        }
    };
    Ok(header)
}

fn to_sizes(dims: &[i64]) -> Option<Vec<usize>> {
    dims.iter()
        .map(|&d| (d > 0).then_some(d as usize))
        .collect()
}

/// Reads the whole file, gunzipping when it starts with the gzip magic.
fn read_bytes(path: &Path) -> Result<Vec<u8>, NiftiError> {
    let io = |source| NiftiError::Io {
        path: path.to_owned(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| NiftiError::NotNifti {
                path: path.to_owned(),
                reason: format!("gzip stream is damaged: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

pub fn read(path: &Path) -> Result<Volume, NiftiError> {
    let bytes = read_bytes(path)?;
    let header = parse_header(&bytes, path)?;
    let big = header.big_endian;
    let (width, convert): (usize, Decoder) = match header.datatype {
        2 => (1, |b, _| f64::from(b[0])),
        256 => (1, |b, _| f64::from(b[0] as i8)),
        4 => (2, |b, big| {
            f64::from(word::<2, _>(b, big, i16::from_le_bytes))
        }),
        512 => (2, |b, big| {
            f64::from(word::<2, _>(b, big, u16::from_le_bytes))
        }),
        8 => (4, |b, big| {
            f64::from(word::<4, _>(b, big, i32::from_le_bytes))
        }),
        768 => (4, |b, big| {
            f64::from(word::<4, _>(b, big, u32::from_le_bytes))
        }),
        16 => (4, |b, big| {
            f64::from(word::<4, _>(b, big, f32::from_le_bytes))
        }),
        64 => (8, |b, big| word::<8, _>(b, big, f64::from_le_bytes)),
        1024 => (8, |b, big| word::<8, _>(b, big, i64::from_le_bytes) as f64),
        1280 => (8, |b, big| word::<8, _>(b, big, u64::from_le_bytes) as f64),
        code => {
            return Err(NiftiError::DataType {
                path: path.to_owned(),
                code,
            })
        }
    };
    let count: usize = header.dims.iter().product();
    let need = count * width;
    let start = header
        .vox_offset
        .max(if header.version == 1 { 352 } else { 544 });
    let got = bytes.len().saturating_sub(start);
    if got < need {
        return Err(NiftiError::Truncated {
            path: path.to_owned(),
            got,
            need,
        });
    }
    // NIfTI: a slope of 0 means "no scaling".
    let (slope, inter) = if header.scl_slope == 0.0 || !header.scl_slope.is_finite() {
        (1.0, 0.0)
    } else {
        (header.scl_slope, header.scl_inter)
    };
    let data = bytes[start..start + need]
        .chunks_exact(width)
        .map(|b| (convert(b, big) * slope + inter) as f32)
        .collect();
    Ok(Volume {
        dims: header.dims,
        spacing: header.spacing,
        data,
        version: header.version,
    })
}

/// Decodes one voxel's bytes (big-endian or not) to f64.
type Decoder = fn(&[u8], bool) -> f64;

fn word<const N: usize, T>(b: &[u8], big: bool, from_le: fn([u8; N]) -> T) -> T {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    if big {
        a.reverse();
    }
    from_le(a)
}

/// A minimal NIfTI-1 float32 writer (`.nii`, or `.nii.gz` by extension), for masks and test
/// volumes: identity orientation, the given voxel size.
pub fn write_f32(
    path: &Path,
    dims: [usize; 3],
    spacing: [f32; 3],
    data: &[f32],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut h = vec![0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let dim: [i16; 8] = [
        3,
        dims[0] as i16,
        dims[1] as i16,
        dims[2] as i16,
        1,
        1,
        1,
        1,
    ];
    for (k, d) in dim.iter().enumerate() {
        h[40 + 2 * k..42 + 2 * k].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&16i16.to_le_bytes()); // float32
    h[72..74].copy_from_slice(&32i16.to_le_bytes());
    let pixdim: [f32; 4] = [1.0, spacing[0], spacing[1], spacing[2]];
    for (k, p) in pixdim.iter().enumerate() {
        h[76 + 4 * k..80 + 4 * k].copy_from_slice(&p.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes());
    h[112..116].copy_from_slice(&1f32.to_le_bytes());
    h[123] = 2; // xyzt_units: millimetres
    h[344..348].copy_from_slice(b"n+1\0");
    let mut bytes = h;
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let gz = path.extension().is_some_and(|e| e == "gz");
    let mut file = std::fs::File::create(path)?;
    if gz {
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        enc.write_all(&bytes)?;
        enc.finish()?;
    } else {
        file.write_all(&bytes)?;
    }
    Ok(())
}
