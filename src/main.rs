//! The `logplayer` binary: everything it does lives in the library's [`logplayer::cli`],
//! which parses the flags (each with a default or required; the servers', the player's and
//! the operator's each with an environment variable), sets up logging and runs the command.
#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: under load glibc's allocator was about a tenth of all
/// CPU samples across the processes (`perf record -a` at 10 shards x 10 KB x 2,000/s, three log
/// replicas). Kept for the latency tails it cut in A/B benches (README, Numbers); CPU per
/// transaction did not change, and the player's peak RSS roughly doubled.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match logplayer::cli::runtime() {
        Ok(runtime) => runtime.block_on(logplayer::cli::main()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
