//! What bounds the callers of a server, so that no caller can grow a LogStore's or a
//! shard's memory without bound: connections open at once, HTTP/2 streams per connection,
//! and the LogStore's `Read` streams open at once. Each is a named setting
//! (`--max-connections`, `--max-streams-per-connection`, `--max-read-streams`), set once
//! per process ([`install`]); a process that never sets them (a test) gets the defaults.
//!
//! A reader that does not read is paused, not buffered: its `Read` stream stops reading the
//! log once [`READ_STREAM_BUFFER`] responses wait for it, on top of what HTTP/2 holds (one
//! encoded response and hyper's send buffer of 400 KiB at most), so the `Read` streams hold
//! at most [`ServerLimits::read_memory_bound`]. Connections whose peer is gone are closed by
//! the HTTP/2 keepalive (a ping every 10 s, 20 s to answer); connections with no call open
//! for `--idle-connection-timeout` are closed too ([`idle`]).

pub mod idle;

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Responses a `Read` stream queues ahead of its reader.
pub const READ_STREAM_BUFFER: usize = 2;
/// What hyper buffers per HTTP/2 stream at most before it stops taking data (its default).
pub const HYPER_SEND_BUFFER: usize = 400 * 1024;

/// The settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// HTTP/2 streams (calls) open at once on one connection; a client waits for a slot.
    pub max_streams_per_connection: u32,
    /// The LogStore's `Read` streams open at once, over every caller; one more is refused
    /// (`RESOURCE_EXHAUSTED` / `busy`).
    pub max_read_streams: usize,
    /// A `Read` stream whose reader has taken nothing for this long while responses wait
    /// for it is ended (`RESOURCE_EXHAUSTED` / `busy`), freeing its slot.
    pub read_stall_timeout: std::time::Duration,
    /// A connection with no call open for this long is closed.
    pub idle_connection_timeout: std::time::Duration,
    /// The LogStore's `AppendStream` with no append for this long is ended
    /// (`UNAVAILABLE` / `unavailable`, after the answers to every earlier append).
    pub idle_stream_timeout: std::time::Duration,
    /// The LogStore's writer table: the most writer ids it remembers (`--max-writers`).
    pub max_writers: usize,
}

/// The most writers the LogStore's writer table holds by default (`--max-writers`): each
/// costs about 150 bytes once retention released its appends, up to 100 KiB while it has
/// 4,096 retained.
pub const DEFAULT_MAX_WRITERS: usize = 100_000;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_streams_per_connection: 128,
            max_read_streams: 64,
            read_stall_timeout: std::time::Duration::from_secs(60),
            idle_connection_timeout: std::time::Duration::from_secs(300),
            idle_stream_timeout: std::time::Duration::from_secs(600),
            max_writers: DEFAULT_MAX_WRITERS,
        }
    }
}

/// The most `--max-connections`: a connection is a file descriptor, and beyond about a
/// million no process gets more (tokio's semaphore also cannot hold more than 2^61 permits,
/// and panicked at a larger value).
pub const MAX_CONNECTIONS: usize = 1 << 20;
/// The most `--max-streams-per-connection`.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1 << 16;
/// The most `--max-read-streams` (each can hold [`ServerLimits::read_memory_bound`]'s share).
pub const MAX_READ_STREAMS: usize = 1 << 16;
/// The shortest `--read-stall-timeout`, `--idle-stream-timeout` and
/// `--idle-connection-timeout`: below a second a reader catching up, a writer between
/// bursts or a connection between calls would be cut as a matter of course (1 ns was taken).
pub const MIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest of them: a day. Longer does not bound anything in practice; it only
/// turns the protection off without saying so.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

impl ServerLimits {
    /// Checks every setting against its range, naming the flag of the first out of it.
    pub fn validate(&self) -> Result<(), String> {
        let counts: [(&str, u64, u64); 4] = [
            (
                "--max-connections",
                self.max_connections as u64,
                MAX_CONNECTIONS as u64,
            ),
            (
                "--max-streams-per-connection",
                self.max_streams_per_connection.into(),
                MAX_STREAMS_PER_CONNECTION.into(),
            ),
            (
                "--max-read-streams",
                self.max_read_streams as u64,
                MAX_READ_STREAMS as u64,
            ),
            (
                "--max-writers",
                self.max_writers as u64,
                crate::logstore::dedupe::MAX_WRITERS as u64,
            ),
        ];
        for (flag, value, max) in counts {
            if !(1..=max).contains(&value) {
                return Err(format!("{flag} must be between 1 and {max}, not {value}"));
            }
        }
        let timeouts = [
            ("--read-stall-timeout", self.read_stall_timeout),
            ("--idle-stream-timeout", self.idle_stream_timeout),
            ("--idle-connection-timeout", self.idle_connection_timeout),
        ];
        for (flag, value) in timeouts {
            if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&value) {
                return Err(format!(
                    "{flag} must be at least {} and at most {}, not {}",
                    humantime::format_duration(MIN_TIMEOUT),
                    humantime::format_duration(MAX_TIMEOUT),
                    humantime::format_duration(value)
                ));
            }
        }
        Ok(())
    }

    /// The most memory the `Read` streams can hold beyond the tail cache, in bytes, when
    /// a response is at most `response_bytes` (the batch size, or one entry when an entry
    /// is larger): per stream, its queued responses and one being encoded, and hyper's send
    /// buffer. With the defaults and 1 MiB batches, 64 × 3.4 MiB ≈ 218 MiB; with 4 MiB
    /// entries (the default entry limit), ≈ 794 MiB.
    pub fn read_memory_bound(&self, response_bytes: usize) -> usize {
        self.max_read_streams * ((READ_STREAM_BUFFER + 1) * response_bytes + HYPER_SEND_BUFFER)
    }
}

static LIMITS: OnceLock<ServerLimits> = OnceLock::new();
static READS: OnceLock<Arc<Semaphore>> = OnceLock::new();
static CONNECTIONS: OnceLock<Arc<Semaphore>> = OnceLock::new();

/// Queues `item` on the response stream `tx`, whose reader may stall; false when the stream
/// is over: the reader went away, or took nothing for `--read-stall-timeout` while the queue
/// was full. Then the stream is ended with the status `stalled` makes of that timeout, queued
/// after what the reader has not taken: the last slot of the queue is kept for it (so `tx`
/// needs room for two). Without this, a caller that never reads its answers held a server's
/// tasks, and whatever they hold, for as long as its connection stayed open.
pub async fn send_or_end<T>(
    tx: &tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    item: Result<T, tonic::Status>,
    stalled: impl FnOnce(std::time::Duration) -> tonic::Status,
) -> bool {
    let stall = limits().read_stall_timeout;
    match tokio::time::timeout(stall, tx.reserve_many(2)).await {
        Ok(Ok(mut permits)) => {
            if let Some(p) = permits.next() {
                p.send(item);
            }
            true
        }
        Ok(Err(_)) => false,
        Err(_) => {
            let _ = tx.try_send(Err(stalled(stall)));
            false
        }
    }
}

/// Ends a response stream with `status`, queued after what its reader has not taken yet;
/// waits at most a second for room (a reader that takes nothing meanwhile gets the end of
/// the stream without it). For a server that stops: a stream it ends with OK would look
/// complete to its reader.
pub async fn end_with<T>(
    tx: &tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    status: tonic::Status,
) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tx.send(Err(status))).await;
}

/// Sets this process's limits, once, before it serves; `false` if already set.
pub fn install(limits: ServerLimits) -> bool {
    LIMITS.set(limits).is_ok()
}

/// This process's limits.
pub fn limits() -> ServerLimits {
    *LIMITS.get_or_init(ServerLimits::default)
}

/// Bytes of appends a LogStore holds from receipt until they are answered, over every
/// caller, at least: [`append_memory_bound`].
pub const MIN_APPEND_MEMORY: usize = 256 * 1024 * 1024;
static APPENDS: OnceLock<(usize, Arc<Semaphore>)> = OnceLock::new();

/// The most bytes of appends (their mutations, as measured against the entry limit) a
/// LogStore holds at once between receiving them and answering them: four of its largest
/// messages, and at least [`MIN_APPEND_MEMORY`]. Without it, appends waiting for the disk
/// were bounded by count only (1,024 per stream, 16,384 queued), which at 4 MiB each is
/// tens of GiB.
pub fn append_memory_bound(max_entry_bytes: usize) -> usize {
    crate::limits::message_limit(max_entry_bytes)
        .saturating_mul(4)
        .max(MIN_APPEND_MEMORY)
}

/// Room for an append of `bytes` among those the LogStore holds, waiting while
/// [`append_memory_bound`] is taken (so a stream whose appends wait stops reading, and
/// HTTP/2's flow control holds its sender back); held until the log answers the append. The
/// bound is set by the first call of the process.
pub async fn append_room(bytes: usize, max_entry_bytes: usize) -> OwnedSemaphorePermit {
    let (bound, room) = APPENDS.get_or_init(|| {
        let bound = append_memory_bound(max_entry_bytes);
        (bound, Arc::new(Semaphore::new(bound)))
    });
    // An append larger than the whole bound (a limit raised in the same process) takes all.
    let wanted = u32::try_from(bytes.clamp(1, *bound)).unwrap_or(u32::MAX);
    room.clone()
        .acquire_many_owned(wanted)
        .await
        .expect("the append room is never closed")
}

/// A slot for one `Read` stream, held while it is open; `None` when
/// [`ServerLimits::max_read_streams`] are open.
pub fn read_slot() -> Option<OwnedSemaphorePermit> {
    READS
        .get_or_init(|| Arc::new(Semaphore::new(limits().max_read_streams)))
        .clone()
        .try_acquire_owned()
        .ok()
}

/// An accepted connection of a transport of ours (TLS): its byte stream, and what every
/// request on it is handed (`info`, in the request extensions).
pub struct Accepted<T, C> {
    io: T,
    // Boxed so that the connection is `Unpin` whatever `C` is.
    info: Box<C>,
}

impl<T, C> Accepted<T, C> {
    /// A connection handing `info` to its requests.
    pub fn new(io: T, info: C) -> Self {
        Accepted {
            io,
            info: Box::new(info),
        }
    }
}

/// A connection as a server serves it ([`counted`]): its byte stream, which ends once no
/// call has been open on it for [`ServerLimits::idle_connection_timeout`], and, while it is
/// open, its slot among [`ServerLimits::max_connections`].
pub struct Served<T> {
    io: T,
    linked: idle::Linked,
    idle: idle::IdleTimer,
    _slot: OwnedSemaphorePermit,
}

/// `incoming`, with each connection beyond [`ServerLimits::max_connections`] closed at once
/// (and warned about), and each idle one closed after
/// [`ServerLimits::idle_connection_timeout`].
pub fn counted<S, T, E>(incoming: S) -> impl futures::Stream<Item = Result<Served<T>, E>>
where
    S: futures::Stream<Item = Result<T, E>>,
    T: tonic::transport::server::Connected<ConnectInfo: Clone + Send + Sync + 'static>,
{
    let slots = CONNECTIONS
        .get_or_init(|| Arc::new(Semaphore::new(limits().max_connections)))
        .clone();
    incoming.filter_map(move |accepted| {
        let out = match accepted {
            Err(e) => Some(Err(e)),
            Ok(io) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let info = io.connect_info();
                    let activity = idle::Activity::new();
                    Some(Ok(Served {
                        io,
                        idle: idle::IdleTimer::new(
                            activity.clone(),
                            limits().idle_connection_timeout,
                        ),
                        linked: idle::Linked {
                            activity,
                            restore: Arc::new(move |extensions| {
                                extensions.insert(info.clone());
                            }),
                        },
                        _slot: slot,
                    }))
                }
                Err(_) => {
                    tracing::warn!(
                        max = limits().max_connections,
                        "closed a new connection: --max-connections are open"
                    );
                    None
                }
            },
        };
        std::future::ready(out)
    })
}

impl<T, C: Clone + Send + Sync + 'static> tonic::transport::server::Connected for Accepted<T, C> {
    type ConnectInfo = C;
    fn connect_info(&self) -> C {
        (*self.info).clone()
    }
}

impl<T> tonic::transport::server::Connected for Served<T> {
    type ConnectInfo = idle::Linked;
    fn connect_info(&self) -> idle::Linked {
        self.linked.clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Served<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending if this.idle.expired(cx) => {
                // End of file: hyper closes the connection (no call is open on it).
                tracing::debug!(
                    timeout = ?limits().idle_connection_timeout,
                    "closing a connection with no call open"
                );
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: AsyncRead + Unpin, C> AsyncRead for Accepted<T, C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

/// Writing to a connection is writing to its byte stream (`io`).
macro_rules! write_through {
    ($($generics:ident),* ; $ty:ty) => {
        impl<T: AsyncWrite + Unpin, $($generics),*> AsyncWrite for $ty {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.io).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
        }
    };
}
write_through!(C; Accepted<T, C>);
write_through!(; Served<T>);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Appends wait for room once the bound is taken, and go on as room is released: the
    /// bound holds however many callers there are.
    #[tokio::test]
    async fn appends_wait_for_room_beyond_the_bound() {
        let max_entry = crate::limits::DEFAULT_MAX_ENTRY_BYTES;
        assert_eq!(
            super::append_memory_bound(max_entry),
            super::MIN_APPEND_MEMORY
        );
        let bound = super::append_memory_bound(1024 * 1024 * 1024);
        assert_eq!(bound, 4 * crate::limits::message_limit(1024 * 1024 * 1024));
        // The whole room (an append larger than the bound takes all of it).
        let all = super::append_room(usize::MAX, max_entry).await;
        let waiting = tokio::spawn(super::append_room(max_entry, max_entry));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "an append got room beyond the bound"
        );
        drop(all);
        let _room = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("room released is taken")
            .unwrap();
    }
}
