//! Private files of the controller's data directory (keys, tokens,
//! kubeconfigs, the encryption configuration), written whole or not at all.

use std::io::Write as _;
use std::path::Path;

/// Writes a secret file (mode 0600) whole or not at all: into a new file
/// of a random name beside it, made with O_EXCL (so a file or symlink
/// someone planted at a predictable name is never written through), then
/// renamed over `path`.
///
/// # Errors
/// When the directory cannot be written.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // NamedTempFile: O_CREAT | O_EXCL, mode 0600.
    let mut f = tempfile::Builder::new()
        .prefix(".weft-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    f.write_all(contents.as_bytes())?;
    f.as_file().sync_all()?;
    f.persist(path).map_err(|e| e.error)?;
    Ok(())
}
