//! The node's image store: content-addressed blobs, layers unpacked once and
//! shared read-only by every container through overlayfs.
//!
//! Layout under the store's root:
//! - `blobs/sha256/<hex>`: manifests, configs and layer archives, verified
//!   against their digest before they are kept;
//! - `layers/sha256/<hex>`: a layer unpacked (keyed by its blob digest);
//! - `refs.json`: image reference → manifest digest.
//!
//! Every write goes to a temporary name first and is renamed into place, so
//! a crash never leaves a half-written blob or layer under its final name.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufReader, Read, Write},
    path::{Component, Path, PathBuf},
};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use super::reference::{ImageRef, InvalidReference, is_sha256_digest};

/// The annotation an OCI layout's index uses to name an image.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The reference does not parse.
    #[error(transparent)]
    InvalidReference(#[from] InvalidReference),
    /// No image of that reference on this node.
    #[error(
        "image {reference} not found on this node (import it or push it to a registry the node can reach)"
    )]
    ImageNotFound {
        /// The reference asked for.
        reference: String,
    },
    /// A registry could not be reached or refused the request.
    #[error("registry {registry}: {reason}")]
    Registry {
        /// host[:port].
        registry: String,
        /// What went wrong, in the client's words.
        reason: String,
    },
    /// A blob's content does not match its digest.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// The digest it was named by.
        expected: String,
        /// The digest of its content.
        actual: String,
    },
    /// A source that is not a valid OCI image layout or archive.
    #[error("{path}: not an OCI image layout: {reason}")]
    BadLayout {
        /// Where.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A layer entry that would escape its directory or is otherwise unsafe.
    #[error("layer {digest}: unsafe entry {entry:?}")]
    UnsafeEntry {
        /// The layer.
        digest: String,
        /// The entry path.
        entry: String,
    },
    /// I/O on the store.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A JSON document could not be read or written.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// An OCI document that does not follow the image spec.
    #[error("{what}: {source}")]
    Oci {
        /// Which document.
        what: String,
        /// The error.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { op, path, source }
}

/// An image resolved in the store.
#[derive(Clone, Debug)]
pub struct Image {
    /// The reference it was asked for.
    pub reference: ImageRef,
    /// Digest of its manifest.
    pub manifest_digest: String,
    /// Its configuration (entrypoint, cmd, env, working dir, user).
    pub config: ImageConfiguration,
    /// Digests of its layer blobs, bottom first.
    pub layers: Vec<String>,
}

/// A node's image store.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

/// sha256 of a byte slice as `sha256:<hex>`.
#[must_use]
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl ImageStore {
    /// Opens (creating if needed) a store rooted at `root`.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        Ok(Self { root })
    }

    /// The store's root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    fn layer_path(&self, digest: &str) -> PathBuf {
        self.root.join("layers/sha256").join(hex_of(digest))
    }

    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Whether the store holds the blob.
    #[must_use]
    pub fn has_blob(&self, digest: &str) -> bool {
        is_sha256_digest(digest) && self.blob_path(digest).is_file()
    }

    /// Stores a blob from a reader, verifying it against `digest`. A blob
    /// already present is not rewritten.
    ///
    /// # Errors
    /// [`ImageError::DigestMismatch`] when the content is not what it claims;
    /// nothing is kept then.
    pub fn put_blob(&self, digest: &str, what: &str, mut r: impl Read) -> Result<(), ImageError> {
        if !is_sha256_digest(digest) {
            return Err(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: digest.to_string(),
                actual: "(not a sha256 digest)".into(),
            });
        }
        if self.has_blob(digest) {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let res: io::Result<()> = (|| {
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                f.write_all(&buf[..n])?;
            }
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::Io {
                op: "write blob",
                path: tmp,
                source: e,
            });
        }
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if actual != digest {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        let dst = self.blob_path(digest);
        fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))
    }

    /// Reads a whole (small) blob.
    ///
    /// # Errors
    /// When it is missing.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest);
        fs::read(&p).map_err(io_err("read", &p))
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    fn refs(&self) -> Result<BTreeMap<String, String>, ImageError> {
        match fs::read(self.refs_path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| ImageError::Json {
                what: "refs.json".into(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::Io {
                op: "read",
                path: self.refs_path(),
                source: e,
            }),
        }
    }

    /// Names `reference` as the manifest `digest` (atomically).
    ///
    /// # Errors
    /// When the refs file cannot be written.
    pub fn tag(&self, reference: &ImageRef, digest: &str) -> Result<(), ImageError> {
        let mut refs = self.refs()?;
        refs.insert(reference.to_string(), digest.to_string());
        let tmp = self.tmp_path("refs");
        let data = serde_json::to_vec_pretty(&refs).map_err(|source| ImageError::Json {
            what: "refs.json".into(),
            source,
        })?;
        fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, self.refs_path()).map_err(io_err("rename", &self.refs_path()))
    }

    /// Resolves a reference to an image whose blobs are all present.
    ///
    /// # Errors
    /// [`ImageError::InvalidReference`] or [`ImageError::ImageNotFound`].
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let r = ImageRef::parse(reference)?;
        let not_found = || ImageError::ImageNotFound {
            reference: reference.to_string(),
        };
        let digest = match &r.digest {
            Some(d) if self.has_blob(d) => d.clone(),
            Some(_) => return Err(not_found()),
            None => self
                .refs()?
                .get(&r.to_string())
                .cloned()
                .ok_or_else(not_found)?,
        };
        self.image_from_manifest(r, &digest)
    }

    fn image_from_manifest(&self, reference: ImageRef, digest: &str) -> Result<Image, ImageError> {
        let manifest: ImageManifest =
            serde_json::from_slice(&self.read_blob(digest)?).map_err(|source| {
                ImageError::Json {
                    what: format!("manifest {digest}"),
                    source,
                }
            })?;
        let config: ImageConfiguration = serde_json::from_slice(
            &self.read_blob(manifest.config().digest().as_ref())?,
        )
        .map_err(|source| ImageError::Json {
            what: format!("config of {digest}"),
            source,
        })?;
        let layers = manifest
            .layers()
            .iter()
            .map(|l| l.digest().to_string())
            .collect::<Vec<_>>();
        for l in &layers {
            if !self.has_blob(l) {
                return Err(ImageError::ImageNotFound {
                    reference: reference.to_string(),
                });
            }
        }
        Ok(Image {
            reference,
            manifest_digest: digest.to_string(),
            config,
            layers,
        })
    }

    /// Imports the image(s) of an OCI image layout directory, or of a tar
    /// archive of one, verifying every blob. Each manifest named in the
    /// layout's index is tagged with its `org.opencontainers.image.ref.name`
    /// (a full reference, or a tag applied to `name`). Returns the references.
    ///
    /// # Errors
    /// [`ImageError::BadLayout`], [`ImageError::DigestMismatch`] and I/O errors;
    /// no reference is recorded unless all of an image's blobs verified.
    pub fn import(&self, source: &Path, name: Option<&str>) -> Result<Vec<ImageRef>, ImageError> {
        let meta = fs::metadata(source).map_err(io_err("open", source))?;
        if meta.is_dir() {
            return self.import_dir(source, name);
        }
        let tmp = self.tmp_path("archive");
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let res = (|| {
            let f = File::open(source).map_err(io_err("open", source))?;
            let mut ar =
                tar::Archive::new(maybe_gunzip(BufReader::new(f)).map_err(io_err("read", source))?);
            ar.unpack(&tmp).map_err(|e| ImageError::BadLayout {
                path: source.to_path_buf(),
                reason: format!("cannot unpack archive: {e}"),
            })?;
            self.import_dir(&tmp, name)
        })();
        let _ = fs::remove_dir_all(&tmp);
        res
    }

    fn import_dir(&self, dir: &Path, name: Option<&str>) -> Result<Vec<ImageRef>, ImageError> {
        let bad = |reason: String| ImageError::BadLayout {
            path: dir.to_path_buf(),
            reason,
        };
        if !dir.join("oci-layout").is_file() {
            return Err(bad("no oci-layout file".into()));
        }
        let index: ImageIndex = serde_json::from_slice(
            &fs::read(dir.join("index.json")).map_err(|e| bad(format!("index.json: {e}")))?,
        )
        .map_err(|e| bad(format!("index.json: {e}")))?;
        let blob = |d: &str| dir.join("blobs/sha256").join(hex_of(d));
        let copy = |d: &str, what: &str| -> Result<(), ImageError> {
            if !is_sha256_digest(d) {
                return Err(bad(format!("{what}: unsupported digest {d}")));
            }
            let p = blob(d);
            let f = File::open(&p).map_err(|e| bad(format!("{what} {d}: {e}")))?;
            self.put_blob(d, what, BufReader::new(f))
        };
        let mut out = Vec::new();
        for m in index.manifests() {
            let md = m.digest().to_string();
            copy(&md, "manifest")?;
            let manifest: ImageManifest = serde_json::from_slice(&self.read_blob(&md)?)
                .map_err(|e| bad(format!("manifest {md}: {e}")))?;
            copy(manifest.config().digest().as_ref(), "config")?;
            for l in manifest.layers() {
                copy(l.digest().as_ref(), "layer")?;
            }
            let ref_name = m
                .annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME_ANNOTATION))
                .cloned();
            let full = match (ref_name, name) {
                // A bare tag in the layout, applied to the given name.
                (Some(r), Some(n)) if !r.contains('/') && !r.contains(':') => format!("{n}:{r}"),
                (Some(r), _) if r.contains('/') || r.contains(':') => r,
                (_, Some(n)) => n.to_string(),
                (Some(r), None) => r,
                (None, None) => {
                    return Err(bad(format!(
                        "manifest {md} has no {REF_NAME_ANNOTATION}; give a name to import it as"
                    )));
                }
            };
            let r = ImageRef::parse(&full)?;
            self.tag(&r, &md)?;
            out.push(r);
        }
        if out.is_empty() {
            return Err(bad("index.json lists no manifest".into()));
        }
        Ok(out)
    }

    /// Unpacks a layer once and returns its directory. Concurrent or repeated
    /// calls share the result; a crash mid-unpack leaves only a temporary dir.
    ///
    /// # Errors
    /// When the blob is missing or holds an unsafe entry.
    pub fn unpack_layer(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let dst = self.layer_path(digest);
        if dst.is_dir() {
            return Ok(dst);
        }
        let tmp = self.tmp_path("layer");
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let res = self.unpack_into(digest, &tmp);
        if let Err(e) = res {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &dst) {
            Ok(()) => Ok(dst),
            // Someone else finished first: theirs is as good as ours.
            Err(_) if dst.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(dst)
            }
            Err(e) => Err(ImageError::Io {
                op: "rename",
                path: dst,
                source: e,
            }),
        }
    }

    fn unpack_into(&self, digest: &str, dir: &Path) -> Result<(), ImageError> {
        let p = self.blob_path(digest);
        let f = File::open(&p).map_err(io_err("open", &p))?;
        let mut ar =
            tar::Archive::new(maybe_gunzip(BufReader::new(f)).map_err(io_err("read", &p))?);
        ar.set_preserve_permissions(true);
        ar.set_preserve_ownerships(true);
        ar.set_unpack_xattrs(false);
        ar.set_overwrite(true);
        let unsafe_entry = |entry: &Path| ImageError::UnsafeEntry {
            digest: digest.to_string(),
            entry: entry.display().to_string(),
        };
        for entry in ar.entries().map_err(io_err("read layer", &p))? {
            let mut entry = entry.map_err(io_err("read layer", &p))?;
            let path = entry.path().map_err(io_err("read layer", &p))?.into_owned();
            if path.components().any(|c| {
                matches!(
                    c,
                    Component::ParentDir | Component::RootDir | Component::Prefix(_)
                )
            }) {
                return Err(unsafe_entry(&path));
            }
            let fname = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            if let Some(hidden) = fname.strip_prefix(".wh.") {
                let parent = dir.join(path.parent().unwrap_or(Path::new("")));
                fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
                if hidden == ".wh..opq" {
                    // Opaque directory: hides everything below in lower layers.
                    xattr_set(&parent, "trusted.overlay.opaque", b"y")
                        .map_err(io_err("set opaque xattr", &parent))?;
                } else {
                    // Whiteout: overlayfs's form is a 0/0 character device.
                    let w = parent.join(hidden);
                    let _ = fs::remove_file(&w);
                    nix::sys::stat::mknod(
                        &w,
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::empty(),
                        0,
                    )
                    .map_err(|e| ImageError::Io {
                        op: "create whiteout",
                        path: w.clone(),
                        source: e.into(),
                    })?;
                }
                continue;
            }
            // unpack_in refuses entries (and link targets) that leave `dir`.
            let ok = entry
                .unpack_in(dir)
                .map_err(io_err("unpack", &dir.join(&path)))?;
            if !ok {
                return Err(unsafe_entry(&path));
            }
        }
        Ok(())
    }

    /// Directories of an image's layers, unpacking those not yet unpacked;
    /// topmost first, as overlayfs's lowerdir wants them.
    ///
    /// # Errors
    /// As [`Self::unpack_layer`].
    pub fn lower_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        let mut v = image
            .layers
            .iter()
            .map(|l| self.unpack_layer(l))
            .collect::<Result<Vec<_>, _>>()?;
        v.reverse();
        Ok(v)
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: valid NUL-terminated strings and a valid buffer.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Wraps the reader in a gzip decoder when the data starts with gzip's magic.
fn maybe_gunzip<R: io::BufRead + 'static>(mut r: R) -> io::Result<Box<dyn Read>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::GzDecoder::new(r)))
    } else {
        Ok(Box::new(r))
    }
}

/// Writes an OCI image layout at `dir` holding one image made of the given
/// files (path in the image → content or symlink target), with `config`.
/// Entries get mtime 0, so the same input always gives the same digests.
///
/// # Errors
/// I/O errors.
pub fn write_layout(
    dir: &Path,
    ref_name: &str,
    entries: &[LayoutEntry],
    config: &ImageConfiguration,
) -> Result<String, ImageError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
    let put = |data: &[u8]| -> Result<(String, u64), ImageError> {
        let d = sha256_digest(data);
        let p = blobs.join(hex_of(&d));
        fs::write(&p, data).map_err(io_err("write", &p))?;
        Ok((d, data.len() as u64))
    };
    // Layer: an uncompressed tar is enough here and faster to unpack.
    let mut tarball = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            LayoutEntry::Dir { path, mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                tarball
                    .append_data(&mut h, path, io::empty())
                    .map_err(io_err("build layer", dir))?;
            }
            LayoutEntry::File { path, mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                tarball
                    .append_data(&mut h, path, data.as_slice())
                    .map_err(io_err("build layer", dir))?;
            }
            LayoutEntry::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tarball
                    .append_link(&mut h, path, target)
                    .map_err(io_err("build layer", dir))?;
            }
        }
    }
    let layer = tarball.into_inner().map_err(io_err("build layer", dir))?;
    let (layer_digest, layer_size) = put(&layer)?;
    let mut config = config.clone();
    let rootfs = oci_spec::image::RootFsBuilder::default()
        .typ("layers")
        .diff_ids(vec![layer_digest.clone()])
        .build()
        .map_err(|source| ImageError::Oci {
            what: "rootfs".into(),
            source,
        })?;
    config.set_rootfs(rootfs);
    let config_json = serde_json::to_vec(&config).map_err(|source| ImageError::Json {
        what: "config".into(),
        source,
    })?;
    let (config_digest, config_size) = put(&config_json)?;
    let oci = |what: &str| {
        let what = what.to_string();
        move |source| ImageError::Oci { what, source }
    };
    let desc = |mt: oci_spec::image::MediaType, d: &str, size: u64| {
        oci_spec::image::DescriptorBuilder::default()
            .media_type(mt)
            .digest(
                d.parse::<oci_spec::image::Digest>()
                    .expect("we made this digest"),
            )
            .size(size)
            .build()
    };
    let manifest = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(oci_spec::image::MediaType::ImageManifest)
        .config(
            desc(
                oci_spec::image::MediaType::ImageConfig,
                &config_digest,
                config_size,
            )
            .map_err(oci("config descriptor"))?,
        )
        .layers(vec![
            desc(
                oci_spec::image::MediaType::ImageLayer,
                &layer_digest,
                layer_size,
            )
            .map_err(oci("layer descriptor"))?,
        ])
        .build()
        .map_err(oci("manifest"))?;
    let manifest_json = serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
        what: "manifest".into(),
        source,
    })?;
    let (manifest_digest, manifest_size) = put(&manifest_json)?;
    let mut mdesc = desc(
        oci_spec::image::MediaType::ImageManifest,
        &manifest_digest,
        manifest_size,
    )
    .map_err(oci("manifest descriptor"))?;
    mdesc.set_annotations(Some(
        [(REF_NAME_ANNOTATION.to_string(), ref_name.to_string())].into(),
    ));
    let index = oci_spec::image::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(oci_spec::image::MediaType::ImageIndex)
        .manifests(vec![mdesc])
        .build()
        .map_err(oci("index"))?;
    let index_json = serde_json::to_vec(&index).map_err(|source| ImageError::Json {
        what: "index".into(),
        source,
    })?;
    let ip = dir.join("index.json");
    fs::write(&ip, index_json).map_err(io_err("write", &ip))?;
    let lp = dir.join("oci-layout");
    fs::write(&lp, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err("write", &lp))?;
    Ok(manifest_digest)
}

/// One entry of a layer built by [`write_layout`].
#[derive(Clone, Debug)]
pub enum LayoutEntry {
    /// A directory.
    Dir {
        /// Path in the image, relative.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path in the image, relative.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Content.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Path in the image, relative.
        path: String,
        /// Link target.
        target: String,
    },
}
