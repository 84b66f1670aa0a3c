//! What an instance shows about itself: its state (identity, phase, listeners), its metrics, and the admin
//! endpoint that serves both.

pub mod admin;
pub mod metrics;
pub mod state;
