//! The `logplayer` binary: everything it does lives in the library's [`logplayer::cli`],
//! which parses the flags (each with a default or required, each with an environment
//! variable), sets up logging and runs the command.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    match logplayer::cli::runtime() {
        Ok(runtime) => runtime.block_on(logplayer::cli::main()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
