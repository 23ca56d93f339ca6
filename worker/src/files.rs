//! Files the worker writes (spooled snapshots, the token file's replacement, the rotation
//! marker) are private and new: created with `create_new` (so a symlink or a file planted at a
//! predictable name is never followed or reused), mode 0600, in folders of mode 0700.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) with mode 0700, or checks that an existing one is a real
/// folder (not a symlink) and makes it 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a folder (a symlink or a file is in its place); remove it",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A new file of mode 0600: fails when anything (a file, a symlink) is already at `path`.
pub fn create_private(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Like [`create_private`], first removing what a crashed earlier attempt left at `path` (the
/// link itself, never its target).
pub fn replace_private(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    create_private(path)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "gitlab-worker-files-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn new_files_are_private_and_never_follow_a_planted_symlink() {
        let d = temp("create");
        let target = d.join("victim");
        std::fs::write(&target, "keep me").unwrap();
        let planted = d.join("spool.ndjson");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(create_private(&planted).is_err(), "a symlink was followed");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");

        let mut f = replace_private(&planted).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        let meta = std::fs::symlink_metadata(&planted).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn private_folders_are_0700_and_a_symlinked_one_is_refused() {
        let d = temp("dir");
        let spool = d.join("spool");
        private_dir(&spool).unwrap();
        let mode = std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let elsewhere = d.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let linked = d.join("linked");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        assert!(private_dir(&linked).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }
}
