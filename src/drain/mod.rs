//! How an instance's connections end.

pub mod latch;
