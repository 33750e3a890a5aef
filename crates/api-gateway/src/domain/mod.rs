//! Types and rules with no I/O: route classification and token buckets.

pub mod bucket;
pub mod routes;
