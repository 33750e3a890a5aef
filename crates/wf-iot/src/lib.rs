//! The wf-iot command line's building blocks: configuration, starting the
//! platform (all-in-one or one service), migrations, account management,
//! the device simulator and the benchmarks.

pub mod bench;
pub mod bench_ota;
pub mod bench_peers;
pub mod bench_shadow;
pub mod config;
pub mod migrate;
pub mod ota;
pub mod platform;
pub mod serve;
pub mod sim_state;
pub mod simulate;
pub mod user;
