//! Which slides the tile stage processes: every slide file in a directory, or a slide list CSV
//! (like CLAM's process list) with optional per-slide `mpp` and segmentation overrides.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::mask::SegOverrides;
use crate::config::SegPreset;

/// File extensions OpenSlide 3.4 reads.
pub const SLIDE_EXTENSIONS: &[&str] = &[
    "svs", "tif", "tiff", "ndpi", "vms", "vmu", "scn", "mrxs", "svslide", "bif",
];

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{path}: cannot read the slides: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: holds no slide files (looked for .{})", SLIDE_EXTENSIONS.join(", ."))]
    Empty { path: PathBuf },
    #[error("{path}: line {line}: {message}")]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    Table { path: PathBuf, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlideEntry {
    /// File name without its extension: names the outputs.
    pub id: String,
    pub path: PathBuf,
    /// um/px given for this slide (a list's `mpp` column); takes precedence over metadata.
    pub mpp: Option<f64>,
    pub overrides: SegOverrides,
}

pub fn slide_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_slide_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .is_some_and(|e| SLIDE_EXTENSIONS.contains(&e.as_str()))
}

/// A directory's slide files sorted by name, or the rows of a slide list CSV.
pub fn list(source: &Path) -> Result<Vec<SlideEntry>, ListError> {
    let entries = if source.is_dir() {
        list_dir(source)?
    } else {
        list_csv(source)?
    };
    if entries.is_empty() {
        return Err(ListError::Empty {
            path: source.to_owned(),
        });
    }
    let mut seen = BTreeSet::new();
    for e in &entries {
        if !seen.insert(e.id.clone()) {
            return Err(ListError::Table {
                path: source.to_owned(),
                message: format!(
                    "two slides share the id `{}` (file name without extension); outputs would collide",
                    e.id
                ),
            });
        }
    }
    Ok(entries)
}

fn list_dir(dir: &Path) -> Result<Vec<SlideEntry>, ListError> {
    let io = |source| ListError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_slide_file(p))
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| SlideEntry {
            id: slide_id(&path),
            path,
            mpp: None,
            overrides: SegOverrides::default(),
        })
        .collect())
}

fn parse_cell<T: std::str::FromStr>(value: &str, column: &str) -> Result<Option<T>, String> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("none") || value.eq_ignore_ascii_case("nan") {
        return Ok(None);
    }
    value
        .parse::<T>()
        .map(Some)
        .map_err(|_| format!("column `{column}`: cannot read {value:?}"))
}

fn parse_bool(value: &str) -> Result<Option<bool>, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "none" | "nan" => Ok(None),
        "1" | "true" | "yes" => Ok(Some(true)),
        "0" | "false" | "no" => Ok(Some(false)),
        other => Err(format!(
            "column `use_otsu`: expected true or false, got {other:?}"
        )),
    }
}

fn parse_preset(value: &str) -> Result<Option<SegPreset>, String> {
    match value.trim() {
        "" | "none" => Ok(None),
        "clam_default" => Ok(Some(SegPreset::ClamDefault)),
        "tcga" => Ok(Some(SegPreset::Tcga)),
        "biopsy" => Ok(Some(SegPreset::Biopsy)),
        other => Err(format!(
            "column `preset`: unknown preset {other:?} (clam_default, tcga, biopsy)"
        )),
    }
}

/// Columns: `slide_id` (or `slide` / `path`: a file name, relative to the list's folder, or a
/// path), optional `process` (0 skips the row, as in CLAM), `mpp`, `preset`, `sthresh`,
/// `mthresh`, `close`, `use_otsu`, `a_t`, `a_h`, `max_n_holes`; blank cells keep the defaults.
fn list_csv(path: &Path) -> Result<Vec<SlideEntry>, ListError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| ListError::Table {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let headers = reader
        .headers()
        .map_err(|e| ListError::Table {
            path: path.to_owned(),
            message: e.to_string(),
        })?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let slide_col = column("slide_id")
        .or_else(|| column("slide"))
        .or_else(|| column("path"))
        .ok_or_else(|| ListError::Table {
            path: path.to_owned(),
            message: "no `slide_id` (or `slide`, `path`) column naming the slide files".into(),
        })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut entries = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let row_error = |message: String| ListError::Row {
            path: path.to_owned(),
            line,
            message,
        };
        let record = record.map_err(|e| row_error(e.to_string()))?;
        let cell = |name: &str| column(name).and_then(|c| record.get(c)).unwrap_or("");
        if parse_cell::<i64>(cell("process"), "process").map_err(row_error)? == Some(0) {
            continue;
        }
        let name = record.get(slide_col).unwrap_or("").trim();
        if name.is_empty() {
            return Err(row_error("blank slide name".into()));
        }
        let slide_path = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            base.join(name)
        };
        let mpp = parse_cell::<f64>(cell("mpp"), "mpp").map_err(&row_error)?;
        if mpp.is_some_and(|m| !(m > 0.0 && m.is_finite())) {
            return Err(row_error(
                "column `mpp`: must be a positive number of um/px".into(),
            ));
        }
        let overrides = SegOverrides {
            preset: parse_preset(cell("preset")).map_err(&row_error)?,
            sthresh: parse_cell(cell("sthresh"), "sthresh").map_err(&row_error)?,
            mthresh: parse_cell(cell("mthresh"), "mthresh").map_err(&row_error)?,
            close: parse_cell(cell("close"), "close").map_err(&row_error)?,
            use_otsu: parse_bool(cell("use_otsu")).map_err(&row_error)?,
            a_t: parse_cell(cell("a_t"), "a_t").map_err(&row_error)?,
            a_h: parse_cell(cell("a_h"), "a_h").map_err(&row_error)?,
            max_n_holes: parse_cell(cell("max_n_holes"), "max_n_holes").map_err(&row_error)?,
        };
        if overrides.mthresh.is_some_and(|k| k % 2 == 0) {
            return Err(row_error(
                "column `mthresh`: the median kernel must be odd".into(),
            ));
        }
        entries.push(SlideEntry {
            id: slide_id(&slide_path),
            path: slide_path,
            mpp,
            overrides,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_process_list_with_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("list.csv");
        std::fs::write(
            &csv,
            "slide_id,mpp,preset,a_t,process\na.svs,,,,1\nb.tif,0.25,biopsy,2,\nc.svs,,,,0\n",
        )
        .unwrap();
        let entries = list(&csv).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "a");
        assert_eq!(entries[0].path, dir.path().join("a.svs"));
        assert_eq!(entries[1].mpp, Some(0.25));
        assert_eq!(entries[1].overrides.preset, Some(SegPreset::Biopsy));
        assert_eq!(entries[1].overrides.a_t, Some(2.0));
        std::fs::write(&csv, "slide_id,mpp\na.svs,fast\n").unwrap();
        let err = list(&csv).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("`mpp`"), "{err}");
        std::fs::write(&csv, "name\na.svs\n").unwrap();
        assert!(list(&csv).unwrap_err().to_string().contains("slide_id"));
    }

    #[test]
    fn lists_slide_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.svs", "a.tif", "notes.txt", "c.SVS"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let ids: Vec<String> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }
}
