//! Delivery: the queue runner, the courier that talks to next hops, and
//! the control socket for `postern queue retry|delete`.

pub mod control;
mod courier;
mod runner;

pub use courier::Courier;
pub use runner::QueueRunner;
