//! Records the async-nats version from Cargo.lock, so results name the client exactly.
fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut version = "unknown".to_string();
    let mut in_async_nats = false;
    for line in lock.lines() {
        if line == "name = \"async-nats\"" {
            in_async_nats = true;
        } else if in_async_nats && let Some(v) = line.strip_prefix("version = ") {
            version = v.trim_matches('"').to_string();
            break;
        }
    }
    println!("cargo:rustc-env=ASYNC_NATS_VERSION={version}");
}
