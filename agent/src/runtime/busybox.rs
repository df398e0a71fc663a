//! A small busybox image made from Debian's busybox-static, so that the lab
//! has an image without the internet: `/bin/busybox` plus a symlink per
//! applet (sh, httpd, wget, nslookup, ...), /etc/passwd and /etc/group.

use std::{path::Path, process::Command};

use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

use super::image::{ImageError, LayoutEntry, write_layout};

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX_BIN: &str = "/bin/busybox";
/// The reference the lab and examples/ use for this image.
pub const BUSYBOX_IMAGE: &str = "weft.local/busybox:1.36";

/// Builds the OCI image layout at `dir` from `busybox` (a static binary).
/// Returns the manifest digest; the same binary always gives the same digest.
///
/// # Errors
/// When the binary is missing or does not list its applets.
pub fn build_layout(dir: &Path, busybox: &Path, ref_name: &str) -> Result<String, ImageError> {
    super::reference::ImageRef::parse(ref_name)?;
    let io = |op: &'static str| {
        let path = busybox.to_path_buf();
        move |source| ImageError::Io { op, path, source }
    };
    let data =
        std::fs::read(busybox).map_err(io("read busybox (apt-get install busybox-static)"))?;
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(io("run busybox --list"))?;
    let applets = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut entries = vec![
        LayoutEntry::Dir {
            path: "bin".into(),
            mode: 0o755,
        },
        LayoutEntry::Dir {
            path: "etc".into(),
            mode: 0o755,
        },
        LayoutEntry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        },
        LayoutEntry::Dir {
            path: "var/www".into(),
            mode: 0o755,
        },
        LayoutEntry::Dir {
            path: "root".into(),
            mode: 0o700,
        },
        LayoutEntry::Dir {
            path: "proc".into(),
            mode: 0o755,
        },
        LayoutEntry::Dir {
            path: "sys".into(),
            mode: 0o755,
        },
        LayoutEntry::Dir {
            path: "dev".into(),
            mode: 0o755,
        },
        LayoutEntry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data,
        },
        LayoutEntry::File {
            path: "etc/passwd".into(),
            mode: 0o644,
            data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                .to_vec(),
        },
        LayoutEntry::File {
            path: "etc/group".into(),
            mode: 0o644,
            data: b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        },
        LayoutEntry::File {
            path: "var/www/index.html".into(),
            mode: 0o644,
            data: b"hello from weft\n".to_vec(),
        },
    ];
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        entries.push(LayoutEntry::Symlink {
            path: format!("bin/{a}"),
            target: "busybox".into(),
        });
    }
    let config = ImageConfigurationBuilder::default()
        .architecture(if cfg!(target_arch = "aarch64") {
            oci_spec::image::Arch::ARM64
        } else {
            oci_spec::image::Arch::Amd64
        })
        .os(oci_spec::image::Os::Linux)
        .config(
            ConfigBuilder::default()
                .cmd(vec!["sh".to_string()])
                .env(vec!["PATH=/bin".to_string()])
                .working_dir("/")
                .build()
                .map_err(|source| ImageError::Oci {
                    what: "busybox config".into(),
                    source,
                })?,
        )
        .rootfs(
            oci_spec::image::RootFsBuilder::default()
                .typ("layers")
                .diff_ids(Vec::<String>::new())
                .build()
                .map_err(|source| ImageError::Oci {
                    what: "rootfs".into(),
                    source,
                })?,
        )
        .build()
        .map_err(|source| ImageError::Oci {
            what: "busybox image config".into(),
            source,
        })?;
    write_layout(dir, ref_name, &entries, &config)
}
