//! Reading the files portguard is given or keeps: regular files only (after following
//! symlinks), each kind with a size cap, so a FIFO, a device or a runaway file gets a clear
//! error at once instead of a hang or all of memory.

use std::{
    fs,
    io::{self, Read as _},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

/// A policy file.
pub const POLICY_MAX: u64 = 4 << 20;
/// One `[blocklist] files` entry (a million-entry public list is about 20 MiB).
pub const BLOCKLIST_FILE_MAX: u64 = 256 << 20;
/// What portguard writes itself: `blocks.json`, policy snapshots, runtime state.
pub const STATE_FILE_MAX: u64 = 64 << 20;

/// Reads all of a regular file of at most `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
    let file =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let metadata = file.metadata()?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO or pipe"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {what}; portguard reads only regular files (save it to a file first)"),
        ));
    }
    let too_big = || {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("it is larger than {} MiB, the most portguard reads from such a file", max >> 20),
        )
    };
    if metadata.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    // The file may grow while it is read: never past the cap.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

/// `read_capped` for UTF-8 text.
pub fn read_text_capped(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, max)?).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is not UTF-8 text (byte {})", error.utf8_error().valid_up_to()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "hello").unwrap();
        assert_eq!(read_text_capped(&file, 5).unwrap(), "hello");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_text_capped(&link, 5).unwrap(), "hello", "symlinks are followed");

        let error = read_capped(&file, 4).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::FileTooLarge);

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = std::time::Instant::now();
        let error = read_capped(&fifo, 1 << 20).unwrap_err();
        assert!(error.to_string().contains("a FIFO or pipe"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "refused at once");

        let error = read_capped(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(error.to_string().contains("a character device"), "{error}");
        let error = read_capped(dir.path(), 1 << 20).unwrap_err();
        assert!(error.to_string().contains("a directory"), "{error}");

        fs::write(&file, b"\xff").unwrap();
        let error = read_text_capped(&file, 5).unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }
}
