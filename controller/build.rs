//! Compiles the Kubernetes .proto files under proto/ into one descriptor
//! set, which the API server's protobuf codec reads at run time.

fn main() {
    let files: Vec<std::path::PathBuf> = walk(std::path::Path::new("proto"));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed=proto/go-fields.txt");
    let set = protox::compile(&files, ["proto"]).expect("the vendored .proto files compile");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(
        out.join("k8s-descriptors.bin"),
        prost::Message::encode_to_vec(&set),
    )
    .expect("OUT_DIR is writable");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("proto/ is readable")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|e| e == "proto") {
            out.push(p.strip_prefix("proto").expect("under proto/").to_path_buf());
        }
    }
    out
}
