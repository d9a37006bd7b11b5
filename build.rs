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
        // Written by hand so a LogStore sends the entries it holds encoded (see the module).
        .extern_path(".logplayer.v1.ReadResponse", "crate::proto::ReadResponse")
        .compile_fds(fds)?;
    Ok(())
}
