//! Compiles `proto/` with protox, a pure-Rust protobuf compiler, so a fresh machine needs
//! no system `protoc`. Also writes the descriptor set that gRPC server reflection serves.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["logplayer.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("logplayer_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".logplayer.v1")
        .compile_fds(fds)?;
    Ok(())
}
