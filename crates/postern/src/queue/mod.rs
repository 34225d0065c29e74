//! Delivery scheduling: the queue runner (when each message is tried; the
//! courier in `postern-delivery` does the trying) and the control socket
//! for `postern queue retry|delete`.

pub mod control;
mod events;
mod runner;

pub use runner::QueueRunner;
