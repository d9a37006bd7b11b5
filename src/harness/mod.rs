//! The tooling that drives real processes: everything here exercises the product from
//! outside, the way a user or an operator would, and nothing in the product imports it.
//!
//! - [`cluster`]: starting, killing, freezing and restarting our servers as child processes.
//! - [`workload`]: transactions whose final state witnesses the whole history.
//! - [`check`]: the exactly-once oracle (every shard against what the log implies).
//! - [`failover`]: taking the leader down and timing the takeover.
//! - [`demo`], [`bench`](mod@bench): the `demo`, `load` and `bench` subcommands.

pub mod bench;
pub mod check;
pub mod cluster;
pub mod demo;
pub mod failover;
pub mod floor;
pub mod workload;
