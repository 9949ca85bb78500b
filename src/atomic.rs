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
/// temporary file is removed and `path` is untouched. Once `path` is in place, temporary
/// siblings that killed earlier attempts at the same file left behind are removed too.
pub fn write_with<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&Path) -> io::Result<()>,
{
    let temp = temp_path(path);
    let result = fill(&temp).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    } else {
        remove_stale_temps(path);
    }
    result
}

/// Whether process `pid` runs on this machine. Without /proc (not Linux) every other writer
/// counts as gone.
fn alive(pid: &str) -> bool {
    let proc = Path::new("/proc");
    proc.is_dir() && proc.join(pid).exists()
}

/// `.partial.tmp-<pid>-<name>` siblings of `path` whose process is gone: a live process's
/// temporary file is its write in progress (another shard writing the same file).
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let suffix = format!("-{}", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let file = entry.file_name().to_string_lossy().into_owned();
        let stale = file
            .strip_prefix(".partial.tmp-")
            .and_then(|rest| rest.strip_suffix(&suffix))
            .is_some_and(|pid| {
                !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !alive(pid)
            });
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
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

    #[test]
    fn a_finished_write_removes_what_killed_attempts_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.h5");
        let stale = dir.path().join(".partial.tmp-99999999-a.h5");
        let other = dir.path().join(".partial.tmp-99999999-b.h5");
        fs::write(&stale, b"half").unwrap();
        fs::write(&other, b"half").unwrap();
        write_bytes(&path, b"whole").unwrap();
        assert!(!stale.exists());
        assert!(
            other.exists(),
            "another file's attempt is not ours to remove"
        );
        // A live process's write in progress (here: our parent's pid) is left alone.
        let live = dir.path().join(format!(
            ".partial.tmp-{}-a.h5",
            std::os::unix::process::parent_id()
        ));
        fs::write(&live, b"writing").unwrap();
        write_bytes(&path, b"whole again").unwrap();
        assert!(
            live.exists(),
            "a running writer's temporary file was removed"
        );
    }
}
