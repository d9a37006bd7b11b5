//! LogPlayer delivers the entries of a write-ahead log to storage shards exactly once and in
//! order, through shard crashes, player crashes and disconnects.
//!
//! # Layout
//! - [`proto`]: the generated wire protocol (`proto/logplayer.proto`).
//! - [`model`]: values, op semantics, JSON lines, the state a log implies.
//! - [`routing`]: key -> slot -> shard.
//! - [`wal`]: durable segment storage with checksums and torn-tail recovery.
//! - [`logstore`]: the WAL server (group commit, writer dedup, tailing reads).
//! - [`shard`]: the delivery target (fencing, dedup, gap refusal, atomic durable apply).
//! - [`player`]: fetcher, dispatcher, target queues, senders, recovery readers, and
//!   replicas that lead or stand by under a lease.
//! - [`lease`]: leader leases with a fencing epoch (file and Kubernetes backends).
//! - [`cursor`]: the leader's persisted ack cursors.
//! - [`metrics`]: the player's Prometheus metrics and health endpoints.
//! - [`crd`]: the `LogPlayer` and `Shard` custom resources and their generated CRDs.
//! - [`grpc`]: what every gRPC edge shares (listeners, windows, health, reflection).
//! - [`client`], [`workload`], [`check`]: talking to servers, generating non-idempotent
//!   transactions, and checking every shard against what the log implies.
//! - [`cluster`]: starting, killing and restarting our servers as child processes (demo,
//!   bench, tests).
//! - [`failover`]: taking the leader down and timing the takeover.
//! - [`demo`], [`bench`]: the `demo` and `bench` subcommands.
#![forbid(unsafe_code)]

pub mod bench;
pub mod check;
pub mod client;
pub mod cluster;
pub mod crd;
pub mod cursor;
pub mod demo;
pub mod failover;
pub mod grpc;
pub mod lease;
pub mod logstore;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod player;
pub mod proto;
pub mod routing;
pub mod shard;
pub mod wal;
pub mod workload;
