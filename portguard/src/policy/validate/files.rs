//! Where validation reads the blocklist files a policy names (`[alerts]` reads its own
//! files, in `policy/alerts.rs`).

use std::path::Path;

use super::super::sources::{SourceList, read_source_file};

/// The files a policy names, by path (already joined to the policy's directory).
pub trait PolicyFiles {
    /// A blocklist file: its entries and its bad lines.
    fn blocklist(&self, path: &Path) -> std::io::Result<SourceList>;
}

/// The files on disk.
pub struct Disk;

impl PolicyFiles for Disk {
    fn blocklist(&self, path: &Path) -> std::io::Result<SourceList> {
        read_source_file(path)
    }
}
