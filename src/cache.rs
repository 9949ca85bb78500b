//! The cache shared by every stage: HDF5 files written atomically and stamped with the
//! parameters that made them, and the per-stage manifest of items.
//!
//! A stage decides whether an existing output can be kept by comparing its recorded
//! parameters with the current ones ([`Freshness`]); a mismatch is refused unless the user
//! passes `--force`, so features (or genomic groups) made with other settings are never mixed.
//! The per-item loop around this (shards, manifest saves, summaries) is `crate::stage`; `fit`
//! stamps its folds with the same [`Parameters`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hdf5::types::VarLenUnicode;

use crate::atomic;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: HDF5: {source}")]
    Hdf5 { path: PathBuf, source: hdf5::Error },
    #[error("{path}: cannot write: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl CacheError {
    pub fn hdf5(path: &Path) -> impl FnOnce(hdf5::Error) -> Self + '_ {
        move |source| Self::Hdf5 {
            path: path.to_owned(),
            source,
        }
    }
}

/// The parameters that made a cache file, stored as string attributes (one per key) plus
/// `parameters`, all of them as one `key=value` line each, for a quick look with `h5dump`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parameters(pub BTreeMap<String, String>);

impl Parameters {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.0.insert(key.to_owned(), value.to_string());
        self
    }

    /// One `key=value` line per key, in key order (values are single lines).
    pub fn joined(&self) -> String {
        let mut text = String::new();
        for (key, value) in &self.0 {
            let _ = writeln!(text, "{key}={value}");
        }
        text
    }

    /// Reads [`Parameters::joined`]'s text back.
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Keys whose values differ, with (recorded, wanted).
    pub fn differences(&self, wanted: &Parameters) -> Vec<(String, String, String)> {
        let keys: std::collections::BTreeSet<&String> =
            self.0.keys().chain(wanted.0.keys()).collect();
        keys.into_iter()
            .filter_map(|key| {
                let (a, b) = (self.0.get(key), wanted.0.get(key));
                (a != b).then(|| {
                    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(none)".into());
                    (key.clone(), show(a), show(b))
                })
            })
            .collect()
    }
}

/// Writes a string attribute.
pub fn write_str_attr(loc: &hdf5::Location, name: &str, value: &str) -> hdf5::Result<()> {
    let value: VarLenUnicode = value
        .parse()
        .map_err(|e| hdf5::Error::from(format!("attribute {name}: {e}")))?;
    loc.new_attr::<VarLenUnicode>()
        .shape(())
        .create(name)?
        .write_scalar(&value)
}

/// Writes a one-dimensional string attribute (e.g. feature names).
pub fn write_str_list_attr(
    loc: &hdf5::Location,
    name: &str,
    values: &[String],
) -> hdf5::Result<()> {
    let values = to_varlen(values)?;
    loc.new_attr_builder()
        .with_data(values.as_slice())
        .create(name)?;
    Ok(())
}

pub fn read_str_attr(loc: &hdf5::Location, name: &str) -> hdf5::Result<String> {
    Ok(loc
        .attr(name)?
        .read_scalar::<VarLenUnicode>()?
        .as_str()
        .to_owned())
}

pub fn read_str_list_attr(loc: &hdf5::Location, name: &str) -> hdf5::Result<Vec<String>> {
    Ok(loc
        .attr(name)?
        .read_raw::<VarLenUnicode>()?
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect())
}

pub fn to_varlen(values: &[String]) -> hdf5::Result<Vec<VarLenUnicode>> {
    values
        .iter()
        .map(|v| {
            v.parse::<VarLenUnicode>()
                .map_err(|e| hdf5::Error::from(format!("string {v:?}: {e}")))
        })
        .collect()
}

/// Records `parameters` on a file's root group.
pub fn stamp(file: &hdf5::File, parameters: &Parameters) -> hdf5::Result<()> {
    for (key, value) in &parameters.0 {
        write_str_attr(file, key, value)?;
    }
    write_str_attr(file, "parameters", &parameters.joined())
}

/// What to do with an output that may already exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// No output yet (or `--force`): make it.
    Missing,
    /// Made with the same parameters: keep it.
    Done,
    /// Made with other parameters: (key, recorded, wanted) for each difference.
    Mismatch(Vec<(String, String, String)>),
    /// Present but unreadable or not ours (e.g. truncated by an older tool): remake it.
    Unreadable(String),
}

/// Compares the parameters recorded in `path` with `wanted`.
pub fn freshness(path: &Path, wanted: &Parameters, force: bool) -> Freshness {
    if force || !path.exists() {
        return Freshness::Missing;
    }
    let recorded = hdf5::File::open(path).and_then(|f| read_str_attr(&f, "parameters"));
    match recorded {
        Err(e) => Freshness::Unreadable(e.to_string()),
        Ok(text) => {
            let differences = Parameters::parse(&text).differences(wanted);
            if differences.is_empty() {
                Freshness::Done
            } else {
                Freshness::Mismatch(differences)
            }
        }
    }
}

/// A message for [`Freshness::Mismatch`] that says what differs and what to do.
pub fn mismatch_message(path: &Path, differences: &[(String, String, String)]) -> String {
    let list: Vec<String> = differences
        .iter()
        .map(|(k, old, new)| format!("{k}: {old} → {new}"))
        .collect();
    format!(
        "{} was made with other parameters ({}); rerun with --force to replace it",
        path.display(),
        list.join("; ")
    )
}

/// Creates an HDF5 file through a temporary sibling and renames it into place once `fill`
/// succeeds, so an interrupted write never leaves a file that looks finished.
pub fn write_h5<F>(path: &Path, fill: F) -> Result<(), CacheError>
where
    F: FnOnce(&hdf5::File) -> hdf5::Result<()>,
{
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut h5_error = None;
    let result = atomic::write_with(path, |temp| {
        let outcome = hdf5::File::create(temp).and_then(|file| {
            fill(&file)?;
            file.flush()?;
            file.close()
        });
        outcome.map_err(|e| {
            h5_error = Some(e);
            std::io::Error::other("HDF5 write failed")
        })
    });
    match (result, h5_error) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(source)) => Err(CacheError::Hdf5 {
            path: path.to_owned(),
            source,
        }),
        (Err(source), None) => Err(CacheError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Outcome of one item (slide, case, fold) of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Done,
    Skipped,
    Failed,
    /// A slide that opened fine but where no tissue was found.
    NoTissue,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::NoTissue => "no tissue",
        }
    }
}

/// `cache/<stage>_manifest.csv`: item, status, seconds, message — one row per item.
#[derive(Debug)]
pub struct Manifest {
    path: PathBuf,
    rows: Vec<(String, Status, f64, String)>,
}

impl Manifest {
    pub fn new(cache_dir: &Path, stage: &str) -> Self {
        Self {
            path: cache_dir.join(format!("{stage}_manifest.csv")),
            rows: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&mut self, item: &str, status: Status, started: Instant, message: &str) {
        let seconds = started.elapsed().as_secs_f64();
        self.rows
            .push((item.to_owned(), status, seconds, message.to_owned()));
    }

    /// Rows in item order (stages that run items in parallel record them as they finish).
    pub fn sort(&mut self) {
        self.rows.sort_by(|a, b| a.0.cmp(&b.0));
    }

    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rows
            .iter()
            .filter(|r| r.1 == Status::Failed)
            .map(|r| (r.0.as_str(), r.3.as_str()))
    }

    /// Writes the manifest (atomically).
    pub fn save(&self) -> Result<(), CacheError> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let csv_error = |e: csv::Error| CacheError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        };
        writer
            .write_record(["item", "status", "seconds", "message"])
            .map_err(csv_error)?;
        for (item, status, seconds, message) in &self.rows {
            writer
                .write_record([
                    item.as_str(),
                    status.as_str(),
                    &format!("{seconds:.3}"),
                    message.as_str(),
                ])
                .map_err(csv_error)?;
        }
        let bytes = writer.into_inner().map_err(|e| CacheError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        atomic::write_bytes(&self.path, &bytes).map_err(|source| CacheError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Hex sha256 of a file, so outputs can name exactly which input made them.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Hex sha256 of a text (a digest of digests, a parameter stamp).
pub fn sha256_text(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(text.as_bytes()))
}

/// Lower-case hexadecimal of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_round_trip_and_freshness() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.h5");
        let params = Parameters::new().with("a", 1).with("b", "two");
        assert_eq!(freshness(&path, &params, false), Freshness::Missing);
        write_h5(&path, |f| stamp(f, &params)).unwrap();
        assert_eq!(freshness(&path, &params, false), Freshness::Done);
        assert_eq!(freshness(&path, &params, true), Freshness::Missing);
        let other = Parameters::new().with("a", 2).with("b", "two");
        match freshness(&path, &other, false) {
            Freshness::Mismatch(d) => assert_eq!(d, vec![("a".into(), "1".into(), "2".into())]),
            f => panic!("{f:?}"),
        }
        std::fs::write(&path, b"truncated").unwrap();
        assert!(matches!(
            freshness(&path, &params, false),
            Freshness::Unreadable(_)
        ));
    }

    #[test]
    fn failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.h5");
        let err = write_h5(&path, |_| Err(hdf5::Error::from("boom"))).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn manifest_lists_items() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new(dir.path(), "genomics");
        let t = Instant::now();
        m.record("A", Status::Done, t, "");
        m.record("B", Status::Failed, t, "bad, value");
        m.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join("genomics_manifest.csv")).unwrap();
        assert!(text.starts_with("item,status,seconds,message\nA,done,"));
        assert!(text.contains("B,failed,") && text.contains("\"bad, value\""));
        assert_eq!(m.failures().collect::<Vec<_>>(), vec![("B", "bad, value")]);
    }
}
