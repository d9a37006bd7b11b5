//! The `logplayer` binary: everything it does lives in the library's [`logplayer::cli`],
//! which parses the flags (each with a default or required, each with an environment
//! variable), sets up logging and runs the command.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    logplayer::cli::main().await
}
