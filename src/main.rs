//! The `logplayer` binary: everything it does lives in the library's [`logplayer::cli`],
//! which parses the flags (each with a default or required, each with an environment
//! variable), sets up logging and runs the command.
#![forbid(unsafe_code)]

/// mimalloc instead of glibc's malloc: under load glibc's allocator took about a tenth of all
/// CPU time across the processes (`perf record -a` at 10 shards x 10 KB x 2,000/s, three log
/// replicas: `_int_malloc`, `malloc`, `_int_free`, `unlink_chunk`, `malloc_consolidate`),
/// mostly on the buffers each gRPC message and WAL record passes through.
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
