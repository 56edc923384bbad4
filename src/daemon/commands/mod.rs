//! One file per [`Command`](super::Command): what the daemon does for it.

pub mod events;
pub mod gpus;
pub mod health;
pub mod hook;
pub mod list;
pub mod logs;
pub mod rediscover;
pub mod remove;
pub mod restart;
pub mod show;
pub mod start;
pub mod status;
pub mod stop;
