//! LogPlayer delivers the entries of a write-ahead log to storage shards exactly once and in
//! order, through shard crashes, player crashes and disconnects.
//!
//! # Layout
//! The product, in the order data flows through it (see `ARCHITECTURE.md`):
//! - [`proto`]: the generated wire protocol (`proto/logplayer.proto`).
//! - [`model`]: values, op semantics, JSON lines, the state a log implies.
//! - [`routing`]: key -> slot -> shard; slot ranges and their coverage rule.
//! - [`wal`]: the segment write-ahead log of opaque records (the LogStore's log and the
//!   shard's journal).
//! - [`logstore`]: the log: group commit and writer dedup on the [`wal`], the replicated
//!   log, and the LogStore gRPC service.
//! - [`player`]: fetcher, dispatcher, target queues, senders, recovery readers, replicas
//!   that lead or stand by under a lease, ack cursors and the player's metrics.
//! - [`shard`]: the delivery target (fencing, dedup, gap refusal, atomic durable apply).
//! - [`lease`]: leader leases with a fencing epoch (file and Kubernetes backends, elector).
//! - [`crd`]: the `LogPlayer` and `Shard` custom resources and their generated CRDs.
//! - [`operator`]: the Kubernetes operator (names, desired objects, apply, observe, status).
//! - [`blocking`]: where fsync-bound work runs (own threads, or inline under simulation).
//! - [`limits`]: the one entry-size limit and the message and batch sizes derived from it.
//! - [`grpc`], [`client`], [`metrics`]: what every gRPC edge shares, clients of our
//!   services, and the `/metrics` `/healthz` `/readyz` endpoints.
//! - [`cli`]: the `logplayer` command line (one clap definition per component).
//! - [`mutations`]: safety checks deliberately broken, only with the `mutations` feature.
//!
//! The tooling that drives real processes (never imported by the product):
//! - [`harness`]: the child-process cluster, workload, exactly-once checker, failover
//!   timing, demo and bench.
#![forbid(unsafe_code)]

pub mod blocking;
pub mod cli;
pub mod client;
pub mod crd;
pub mod disk;
pub mod grpc;
pub mod harness;
pub mod lease;
pub mod limits;
pub mod logstore;
pub mod metrics;
pub mod model;
pub mod mutations;
pub mod operator;
pub mod player;
pub mod proto;
pub mod routing;
pub mod serving;
pub mod shard;
pub mod tls;
pub mod wal;
