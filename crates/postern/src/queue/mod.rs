//! Delivery scheduling: the queue runner (when each message is tried; the
//! courier in `postern-delivery` does the trying), the control socket
//! for `postern queue retry|delete`, and, in a cluster, the published queue
//! snapshot and the retry/delete requests of other nodes.

pub mod control;
mod events;
pub mod local;
pub mod publish;
pub mod requests;
mod runner;

pub use runner::QueueRunner;
