//! Crash-safe file operations: outputs that never overwrite inputs, files and
//! directories replaced atomically and made durable (write, fsync, rename, fsync the
//! parent), and the temporaries a crash leaves behind cleaned up on the next start.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Whether two paths name the same existing file (same device and inode), however
/// they are spelled (links, `..`, hard links).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Checks, before any work starts, that `out` can be written as a file by the
/// command behind `flag`: it is not one of `inputs` (so writing it cannot destroy
/// them), not a directory, not a dangling link, and its folder exists or can be made.
pub fn check_output_file(flag: &str, out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    for (name, input) in inputs {
        if same_file(out, input) {
            bail!(
                "{flag} {} is the same file as {name} {}: refusing to overwrite an input",
                out.display(),
                input.display()
            );
        }
    }
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() && !out.exists() => {
            bail!("{flag} {}: a link to a missing file; remove it or choose another path", out.display())
        }
        Ok(_) if out.is_dir() => bail!("{flag} {}: is a directory, not a file", out.display()),
        _ => {}
    }
    let parent = parent_of(out);
    if parent.exists() && !parent.is_dir() {
        bail!("{flag} {}: {} is not a directory", out.display(), parent.display());
    }
    std::fs::create_dir_all(parent).with_context(|| format!("{flag} {}: creating {}", out.display(), parent.display()))
}

/// Checks that `out` can be used as an output directory: not a file or a dangling
/// link, and not one of `inputs` or a folder that holds one.
pub fn check_output_dir(flag: &str, out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() && !out.exists() => {
            bail!("{flag} {}: a link to a missing directory; remove it or choose another path", out.display())
        }
        Ok(_) if !out.is_dir() => bail!("{flag} {}: exists and is not a directory", out.display()),
        _ => {}
    }
    if let Ok(o) = out.canonicalize() {
        for (name, input) in inputs {
            if input.canonicalize().is_ok_and(|i| i.starts_with(&o)) {
                bail!("{flag} {} holds {name} {}: refusing to write over an input", out.display(), input.display());
            }
        }
    }
    Ok(())
}

/// A text file's contents; a file that is not UTF-8 is an error naming its first
/// bad line.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("{}:{line}: not valid UTF-8", path.display())
    })
}

/// The folder a path lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Flushes a directory entry table to disk (after a rename or a create in it).
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}

/// Flushes every file under `dir` and the directory tables to disk.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", path.display()))?;
        }
    }
    sync_dir(dir)
}

/// `path` with `suffix` appended to its file name (`out.jsonl` → `out.jsonl.log`):
/// the files a command keeps beside its output.
pub fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// A hidden sibling of `path` for work in progress: `.NAME.KIND-PID`.
pub fn sibling_temp(path: &Path, kind: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent_of(path).join(format!(".{name}.{kind}-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically and durably: a temporary sibling, fsync,
/// rename over `path`, fsync the folder. A crash leaves the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = sibling_temp(path, "tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    sync_dir(parent_of(path))
}

/// Puts the finished directory `tmp` (synced by the caller) at `dir` so that at every
/// instant one complete version exists at `dir` once it first did: an atomic swap
/// (`renameat2(RENAME_EXCHANGE)`) when `dir` exists, then the old version is removed.
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        exchange(tmp, dir).with_context(|| format!("swapping the new {} into place", dir.display()))?;
        sync_dir(parent_of(dir))?;
        // `tmp` now holds the previous version
        std::fs::remove_dir_all(tmp).with_context(|| format!("removing the previous {}", dir.display()))?;
    } else {
        std::fs::rename(tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    }
    sync_dir(parent_of(dir))
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths relative to the working directory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    // No atomic swap: move the old aside, the new in; `clean_stale` restores an
    // aside copy whose replacement never arrived.
    let aside = sibling_temp(b, "old");
    std::fs::rename(b, &aside)?;
    std::fs::rename(a, b)?;
    std::fs::rename(aside, a)
}

/// Removes the work-in-progress siblings (`.NAME.tmp-PID`, `.NAME.old-PID`) that a
/// crashed writer left in `dir`; an `old` copy whose `NAME` is missing is restored
/// instead. Returns the paths removed. Safe while no other spo writes into `dir`.
pub fn clean_stale(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(removed) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((stem, kind)) = name.strip_prefix('.').and_then(|n| n.rsplit_once('.')) else { continue };
        let path = entry.path();
        let target = dir.join(stem);
        if kind.starts_with("old-") && !target.exists() {
            std::fs::rename(&path, &target).with_context(|| format!("restoring {}", target.display()))?;
        } else if kind.starts_with("tmp-") || kind.starts_with("old-") {
            let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            gone.with_context(|| format!("removing the stale {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Removes a whole directory so that no half of it stays in view: renamed to a
/// hidden sibling first (atomic), then deleted. A crash in between leaves only the
/// hidden copy, which [`clean_stale`] deletes.
pub fn remove_dir_atomically(dir: &Path) -> Result<()> {
    let aside = sibling_temp(dir, "tmp");
    std::fs::rename(dir, &aside).with_context(|| format!("moving {} aside", dir.display()))?;
    sync_dir(parent_of(dir))?;
    std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spo-fsx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_output_that_is_an_input_a_directory_or_a_dangling_link_is_refused() {
        let d = temp("out");
        let input = d.join("in.jsonl");
        std::fs::write(&input, "x\n").unwrap();
        let spelled = d.join(".").join("in.jsonl");
        let err = check_output_file("--out", &spelled, &[("--pairs", &input)]).unwrap_err().to_string();
        assert!(err.contains("same file as --pairs"), "{err}");
        std::os::unix::fs::symlink(d.join("missing"), d.join("dangling")).unwrap();
        assert!(check_output_file("--out", &d.join("dangling"), &[]).unwrap_err().to_string().contains("missing"));
        assert!(check_output_file("--out", &d, &[]).unwrap_err().to_string().contains("directory"));
        assert!(check_output_dir("--out", &input, &[]).unwrap_err().to_string().contains("not a directory"));
        assert!(check_output_dir("--out", &d, &[("--data", &input)]).unwrap_err().to_string().contains("holds --data"));
        check_output_file("--out", &d.join("new/sub/out.jsonl"), &[("--pairs", &input)]).unwrap();
        assert_eq!(std::fs::read_to_string(&input).unwrap(), "x\n");
    }

    #[test]
    fn a_directory_is_swapped_whole_and_stale_temporaries_are_cleaned() {
        let d = temp("swap");
        let (a, tmp) = (d.join("ckpt"), d.join(".ckpt.tmp-1"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("f"), "old").unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("f"), "new").unwrap();
        replace_dir(&tmp, &a).unwrap();
        assert_eq!(std::fs::read_to_string(a.join("f")).unwrap(), "new");
        assert!(!tmp.exists());
        // a crash's leftovers: a temporary, and an aside copy whose replacement never came
        std::fs::create_dir_all(d.join(".ckpt.tmp-77")).unwrap();
        std::fs::create_dir_all(d.join(".final.old-77")).unwrap();
        let removed = clean_stale(&d).unwrap();
        assert_eq!(removed, vec![d.join(".ckpt.tmp-77")]);
        assert!(d.join("final").is_dir(), "the aside copy is restored");
        remove_dir_atomically(&a).unwrap();
        assert!(!a.exists());
    }
}
