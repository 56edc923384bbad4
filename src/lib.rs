//! Service Nanny: a daemon that discovers AI services (directories with a
//! `service.yaml`), starts and stops them, watches their health and keeps
//! two GPU services from colliding. See ARCHITECTURE.md for the map.

pub mod api;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod deps;
pub mod discovery;
pub mod error;
pub mod events;
pub mod gpu;
pub mod health;
pub mod hooks;
pub mod lifecycle;
pub mod lock;
pub mod logs;
pub mod manifest;
pub mod mcp;
pub mod metrics;
pub mod ports;
pub mod runtime;
pub mod service;
pub mod store;
pub mod systemd;
pub mod usage;
