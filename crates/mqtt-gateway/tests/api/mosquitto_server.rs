//! The tests' own Mosquitto, shared with the other crates' tests.

pub use wf_common::testing::mosquitto::{ADMIN, ADMIN_PASSWORD, MosquittoServer};
