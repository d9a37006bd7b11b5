//! What the machine itself allows, measured in the same run as the benchmark it explains,
//! and what each component costs.
//!
//! - **F**: one 10 KB `write` + `fdatasync` on a preallocated (zero-filled, synced) file in the
//!   run's data directory: the least a durable append can cost on this disk.
//! - **H**: one loopback gRPC hop, half the round trip of a gRPC health check between two
//!   threads (each with a runtime of its own): the least a message between two of our
//!   processes can cost, on the machine as loaded as it is.
//!
//! Both are probed idle (before the load) and under the run's load. The floor of each measure
//! is then: append ≈ 2H + F (request, fsync, answer; 4H + F with log replicas: the leader's
//! round trip to a follower, whose fsync runs beside its own), LogPlayer delay ≈ H, apply ≈
//! append + 2H (the player reads, then sends), durable apply ≈ apply + F (the shard's sync).
//!
//! Per component (the LogStore replicas, the shards, the player), from `/proc`: CPU time,
//! bytes written to disk (`/proc/PID/io` `write_bytes`) and context switches (every thread's
//! `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches`), read before and after the load.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of one F probe write (the paper's transaction size).
const PROBE_BYTES: usize = 10 * 1024;
/// Linux's `USER_HZ`: the unit of the CPU times in `/proc/PID/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// The p50 and p99 of a probe, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Probe {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn quantiles(mut samples: Vec<Duration>) -> Probe {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Probe {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// F: `n` appends of 10 KB, each followed by `fdatasync`, to a file in `dir` that was
/// zero-filled and synced first (so a sync writes data, not metadata). Blocking.
pub fn fsync_probe(dir: &Path, n: usize) -> std::io::Result<Probe> {
    let path = dir.join("floor-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let zeros = vec![0u8; PROBE_BYTES];
    for _ in 0..n {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    let data = vec![0x5au8; PROBE_BYTES];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&data)?;
        file.sync_data()?;
        samples.push(t.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(quantiles(samples))
}

/// A runtime of its own on the calling thread (the probe's threads must not wait for the
/// load generator's tasks).
fn own_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Serves gRPC health checks on `listener` until `stop` fires.
fn ping_server(
    listener: std::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    own_runtime()?.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (_reporter, service) = tonic_health::server::health_reporter();
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stop.await;
                },
            )
            .await
            .map_err(std::io::Error::other)
    })
}

/// H: half the round trip of `n` gRPC health checks over loopback between two threads of
/// this process, each with a runtime of its own: one hop of our gRPC stack and the kernel's
/// loopback, on a machine as loaded as it is at the moment. Blocking.
pub fn hop_probe(n: usize) -> std::io::Result<Probe> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = std::thread::spawn(move || ping_server(listener, stopped));
    let samples = own_runtime()?.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(std::io::Error::other)?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(std::io::Error::other)?;
        let mut client = HealthClient::new(channel);
        let mut samples = Vec::with_capacity(n);
        // The first calls warm the connection up and are not counted.
        for i in 0..n + 20 {
            let t = Instant::now();
            let _ = client.check(HealthCheckRequest::default()).await;
            if i >= 20 {
                samples.push(t.elapsed() / 2);
            }
        }
        Ok::<_, std::io::Error>(samples)
    });
    let _ = stop.send(());
    let served = server
        .join()
        .map_err(|_| std::io::Error::other("the ping server panicked"))?;
    served?;
    Ok(quantiles(samples?))
}

/// Both probes (F, H), each on threads of its own.
pub async fn probe(dir: &Path) -> (Probe, Probe) {
    let d = dir.to_owned();
    let run = tokio::task::spawn_blocking(move || {
        // One after the other (each would load the other), on threads outside this runtime.
        let f = std::thread::spawn(move || fsync_probe(&d, 200)).join();
        let h = std::thread::spawn(|| hop_probe(500)).join();
        let join = |r: std::thread::Result<std::io::Result<Probe>>, what: &str| match r
            .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, probe = what, "a floor probe failed; it is reported as 0");
                Probe::default()
            }
        };
        (join(f, "F"), join(h, "H"))
    });
    run.await.unwrap_or_default()
}

/// What one component's processes used, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub written_bytes: u64,
    pub context_switches: u64,
}

impl Usage {
    /// The usage of process `pid` so far (zeros for what cannot be read).
    pub fn of(pid: u32) -> Usage {
        let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after the command name (which may hold spaces) start at ") ".
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = f.get(11)?.parse().ok()?;
                let stime: f64 = f.get(12)?.parse().ok()?;
                Some((utime + stime) / TICKS_PER_SECOND)
            })
            .unwrap_or(0.0);
        let written_bytes = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("write_bytes:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        let mut context_switches = 0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let Ok(s) = std::fs::read_to_string(t.path().join("status")) else {
                    continue;
                };
                context_switches += s
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        Usage {
            cpu_seconds,
            written_bytes,
            context_switches,
        }
    }

    /// The summed usage of `pids`.
    pub fn of_all(pids: &[u32]) -> Usage {
        pids.iter()
            .map(|p| Usage::of(*p))
            .fold(Usage::default(), |a, b| Usage {
                cpu_seconds: a.cpu_seconds + b.cpu_seconds,
                written_bytes: a.written_bytes + b.written_bytes,
                context_switches: a.context_switches + b.context_switches,
            })
    }

    /// What was used between `before` and `self`.
    pub fn since(self, before: Usage) -> Usage {
        Usage {
            cpu_seconds: (self.cpu_seconds - before.cpu_seconds).max(0.0),
            written_bytes: self.written_bytes.saturating_sub(before.written_bytes),
            context_switches: self
                .context_switches
                .saturating_sub(before.context_switches),
        }
    }
}

/// A component's cost per transaction, over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    /// CPU milliseconds per 1,000 transactions.
    pub cpu_ms_per_1k: f64,
    /// Bytes written to disk per byte of transaction payload.
    pub write_amplification: f64,
    pub context_switches_per_txn: f64,
}

impl Cost {
    pub fn of(used: Usage, transactions: u64, payload_bytes: u64) -> Cost {
        let per = |x: f64, n: u64| if n == 0 { 0.0 } else { x / n as f64 };
        Cost {
            cpu_ms_per_1k: per(used.cpu_seconds * 1_000_000.0, transactions),
            write_amplification: per(used.written_bytes as f64, payload_bytes),
            context_switches_per_txn: per(used.context_switches as f64, transactions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_few_samples() {
        let ms = |n: u64| Duration::from_millis(n);
        let p = quantiles((1..=100).map(ms).collect());
        assert_eq!(p.p50_ms, 51.0);
        assert_eq!(p.p99_ms, 100.0);
        assert_eq!(quantiles(Vec::new()), Probe::default());
    }

    #[test]
    fn this_process_has_used_some_cpu_and_both_probes_run() {
        let me = Usage::of(std::process::id());
        assert!(me.context_switches > 0, "{me:?}");
        let dir = tempfile::tempdir().unwrap();
        let f = fsync_probe(dir.path(), 5).unwrap();
        assert!(f.p50_ms > 0.0 && f.p99_ms >= f.p50_ms, "{f:?}");
        assert!(!dir.path().join("floor-probe").exists());
        let h = hop_probe(5).unwrap();
        assert!(h.p50_ms > 0.0 && h.p99_ms >= h.p50_ms, "{h:?}");
    }

    #[test]
    fn cost_per_transaction() {
        let used = Usage {
            cpu_seconds: 2.0,
            written_bytes: 3_000,
            context_switches: 500,
        };
        let c = Cost::of(used, 1_000, 1_000);
        assert_eq!(c.cpu_ms_per_1k, 2_000.0);
        assert_eq!(c.write_amplification, 3.0);
        assert_eq!(c.context_switches_per_txn, 0.5);
        assert_eq!(Cost::of(used, 0, 0), Cost::default());
    }
}
