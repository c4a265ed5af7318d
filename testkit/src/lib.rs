//! slotline-testkit: local `redis-server` processes for slotline's tests, benchmarks and
//! the `slotline servers` command: single servers, small Redis Clusters (with resharding
//! and failover helpers), and the daemonized set behind `slotline servers up|down|status`.
//!
//! The same code starts the servers of the integration tests (as child processes that die
//! with the test) and the ones a user keeps running from the CLI (daemonized, recorded in a
//! state directory). Every server gets its own directory `<dir>/<port>/` holding its log
//! file, pidfile and, for cluster nodes, `nodes.conf`; processes are always stopped by pid,
//! never by name, so an unrelated server on the machine (such as the Debian package's
//! default one on 6379) is never touched.
//!
//! Control-plane traffic goes through a small blocking client ([`client`]) built on
//! `redis-protocol`, so that this crate needs neither the engine nor `redis-cli`.

pub mod client;
pub mod cluster;
pub mod error;
pub mod harness;
pub mod nodes;
mod os;
pub mod ports;
pub mod process;
pub mod proxy;
mod redact;
pub mod sentinel;
pub mod state;
pub mod tls;

use std::time::Duration;

pub use client::{command, command_str, command_strs, BytesFrame, Client, OwnedFrame, Resp2Frame};
pub use cluster::LocalCluster;
pub use error::{Error, Result};
pub use nodes::{parse_cluster_nodes, ClusterNode};
pub use ports::{free_cluster_port, free_port, free_port_block, port_is_free, redis_server_binary};
pub use process::{RedisProcess, ServerOptions};
pub use proxy::FaultProxy;
pub use sentinel::{wait_sentinels_ready, SentinelOptions, SentinelProcess};
pub use state::{
    default_state_dir, down, status, up, up_with, ServerKind, ServerRecord, ServerSet,
};
pub use tls::{SelfSigned, ServerCertValidity, TlsCerts, TlsServer};

/// How long a freshly spawned server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server gets to exit after SIGTERM before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a cluster may take to form (slots, gossip, replica links).
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
/// Number of hash slots of Redis Cluster.
const CLUSTER_SLOTS: u16 = 16384;
/// The cluster bus of a node listens on its port plus this offset.
const BUS_PORT_OFFSET: u16 = 10000;
/// Highest client port whose bus port still fits in 16 bits.
const MAX_CLUSTER_PORT: u16 = u16::MAX - BUS_PORT_OFFSET;
/// Poll interval of every wait loop here; servers change state in tens of milliseconds.
const POLL: Duration = Duration::from_millis(50);
/// The pidfile in every server's own directory.
const PIDFILE: &str = "redis.pid";
/// Keys moved per MIGRATE during resharding.
const MIGRATE_BATCH: usize = 100;

fn local_err(msg: impl Into<String>) -> Error {
    Error::Local(msg.into())
}

/// `field:value` lookup in INFO / CLUSTER INFO text.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}
