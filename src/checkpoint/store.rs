//! Where checkpoints are kept: a small interface of named blobs, and a directory that
//! implements it.
//!
//! A name is a relative path with `/` separators (`<checkpoint>/<file>`). An object store
//! (S3, GCS, Azure through the `object_store` crate) fits the same four calls: `put` is one
//! PUT, atomic by nature; `list` a prefix listing; `get` a GET; `delete` a batch delete.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Durable named blobs.
pub trait Store: Send + Sync {
    /// Writes `bytes` under `name`, replacing what was there: after it returns `Ok`, a crash
    /// leaves either the old or the new content, never a mix.
    fn put(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// The content under `name`.
    fn get(&self, name: &str) -> io::Result<Vec<u8>>;
    /// The names of the checkpoints held (the first component of every name).
    fn checkpoints(&self) -> io::Result<Vec<String>>;
    /// The file names under checkpoint `checkpoint`, with their sizes.
    fn files(&self, checkpoint: &str) -> io::Result<Vec<(String, u64)>>;
    /// Deletes a checkpoint and everything under it.
    fn delete(&self, checkpoint: &str) -> io::Result<()>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

/// A directory on a local or mounted file system: each checkpoint a subdirectory. Files are
/// written to a temporary name, synced, renamed, and the directory synced.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// The store at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        let ok = !name.is_empty()
            && name
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'));
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` is not a checkpoint file name"),
            ));
        }
        Ok(self.root.join(name))
    }
}

/// Syncs a directory, so that a rename in it survives a power cut.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store for DirStore {
    fn put(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(name)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let created = !dir.exists();
        fs::create_dir_all(&dir)?;
        if created {
            sync_dir(dir.parent().unwrap_or(&self.root))?;
        }
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("checkpoint");
        let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(&dir)
    }

    fn get(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(name)?)
    }

    fn checkpoints(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    if !name.starts_with('.') {
                        out.push(name.to_string());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn files(&self, checkpoint: &str) -> io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.path(checkpoint)?)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                if !name.starts_with('.') {
                    out.push((name.to_string(), entry.metadata()?.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, checkpoint: &str) -> io::Result<()> {
        match fs::remove_dir_all(self.path(checkpoint)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_replace_atomically_and_names_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path().join("ck"));
        assert!(store.checkpoints().unwrap().is_empty());
        store.put("a/part-0", b"one").unwrap();
        store.put("a/part-0", b"two").unwrap();
        assert_eq!(store.get("a/part-0").unwrap(), b"two");
        assert_eq!(store.checkpoints().unwrap(), vec!["a".to_string()]);
        assert_eq!(
            store.files("a").unwrap(),
            vec![("part-0".to_string(), 3)],
            "no temporary file is left behind"
        );
        for bad in ["../x", "a/../../x", "", "a//b", "/abs"] {
            assert!(store.put(bad, b"x").is_err(), "{bad}");
        }
        store.delete("a").unwrap();
        store.delete("a").unwrap();
        assert!(store.checkpoints().unwrap().is_empty());
    }
}
