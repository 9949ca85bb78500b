//! Write-then-rename, so that a killed process never leaves a truncated file that looks finished.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A temporary sibling of `path` that keeps its extension (image encoders pick the format from
/// it) and is unique to this process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{}.tmp-{}-{name}", "partial", std::process::id()))
}

/// Runs `fill` on a temporary sibling of `path`, then renames it into place. On failure the
/// temporary file is removed and `path` is untouched.
pub fn write_with<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&Path) -> io::Result<()>,
{
    let temp = temp_path(path);
    let result = fill(&temp).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Writes `bytes` to `path` atomically (flushed and synced before the rename).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |temp| {
        let mut out = BufWriter::new(File::create(temp)?);
        out.write_all(bytes)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.csv");
        write_bytes(&path, b"old").unwrap();
        let err = write_with(&path, |temp| {
            fs::write(temp, b"half")?;
            Err(io::Error::other("killed"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(temp_path(&path).to_string_lossy().ends_with("table.csv"));
    }
}
