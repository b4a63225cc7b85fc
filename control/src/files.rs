//! Files written whole, in one place: durably for what must survive a crash (state file,
//! IPAM), and atomically but without a disk flush for what is rewritten every second (the
//! status file: a reader sees the old file or the new one, never half of one).

use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a mix:
/// a temporary file beside it, fsync, rename over the old file, fsync of the directory
/// (created if missing).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_whole(path, bytes, true)
}

/// Replaces `path` with `bytes` atomically (temporary file, rename) without waiting for the
/// disk: readers never see a partial file; after a crash the file may be the old one.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_whole(path, bytes, false)
}

fn write_whole(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)?;
    if durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("xdpnet-files-{}", std::process::id()));
        let p = dir.join("sub").join("f.json");
        write_atomic(&p, b"one").expect("first");
        write_atomic(&p, b"two").expect("second");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        replace(&p, b"three").expect("third");
        assert_eq!(std::fs::read(&p).expect("read"), b"three");
        assert!(!p.with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
