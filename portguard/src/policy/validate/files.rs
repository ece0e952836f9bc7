//! Where validation reads the files a policy names: blocklist files, `[alerts]`'s HMAC key
//! file, and what its `exec` program's file says about who may change it. Behind one trait so
//! that validation itself reads nothing, and a test can hand the files in.

use std::path::Path;

use super::super::{
    alerts::{Secret, read_secret},
    sources::{SourceList, read_source_file},
};

/// What the file of an `exec` program says about running it as root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramFile {
    /// No regular file there (yet).
    Missing,
    /// Mode bits and owner, as `stat` gives them.
    Found { mode: u32, uid: u32 },
}

/// The files a policy names, by path (already joined to the policy's directory).
pub trait PolicyFiles {
    /// A blocklist file: its entries and its bad lines.
    fn blocklist(&self, path: &Path) -> std::io::Result<SourceList>;
    /// An HMAC key file, which only root may read: the key, or what is wrong with the file.
    fn secret(&self, path: &Path) -> Result<Secret, String>;
    /// An `exec` program's file.
    fn program(&self, path: &Path) -> ProgramFile;
}

/// The files on disk.
pub struct Disk;

impl PolicyFiles for Disk {
    fn blocklist(&self, path: &Path) -> std::io::Result<SourceList> {
        read_source_file(path)
    }

    fn secret(&self, path: &Path) -> Result<Secret, String> {
        read_secret(path)
    }

    fn program(&self, path: &Path) -> ProgramFile {
        use std::os::unix::fs::MetadataExt as _;
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => ProgramFile::Found { mode: meta.mode(), uid: meta.uid() },
            _ => ProgramFile::Missing,
        }
    }
}
