// Shared by the qcow2 fuzz targets: hostile bytes become an image file on tmpfs.
use std::path::PathBuf;

pub fn image_file(tag: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let p = PathBuf::from(format!("{dir}/strata-fuzz-{tag}-{}.qcow2", std::process::id()));
    std::fs::write(&p, data).expect("write fuzz image");
    p
}
