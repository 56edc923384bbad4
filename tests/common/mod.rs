//! The integration-test harness: runs the real `nanny` binary against a temporary services
//! directory and talks to it over HTTP, SSE and the CLI.
//!
//! - [`daemon`]: the [`Daemon`] under test (plain start, or on a chosen state directory with
//!   extra arguments and environment so that a test can restart it there), its API calls,
//!   event queries and waits, signals, SIGKILL and clean termination.
//! - [`events`]: helpers over an event history (`id`, `ts`, `of_kind`, `first`, `render`, ...).
//! - [`sse`]: a reader for `GET /events/stream`.
//! - [`manifest`]: the [`Workspace`] (services directory plus scratch files), the [`Svc`]
//!   manifest builder for the `svc.py` fixture and its control files.
//! - [`process`]: pids of services and fixture processes (alive, gone, killed).
//! - [`cli`]: running `nanny` subcommands.
//! - [`checks`]: waiting, checks on the shape of API answers (`names`, `invalid_entry`, ...), a
//!   proxy-less HTTP client for talking to services directly, copying a directory tree.
//!
//! Every test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod checks;
pub mod cli;
pub mod daemon;
pub mod events;
pub mod manifest;
pub mod process;
pub mod python;
pub mod sse;

// One flat namespace for the tests (`use common::*;`); a test binary that needs nothing from
// one of the submodules leaves its re-export unused.
#[allow(unused_imports)]
pub use self::{checks::*, cli::*, daemon::*, events::*, manifest::*, process::*, python::*, sse::*};

/// Absolute path of the `nanny` binary under test.
pub const NANNY: &str = env!("CARGO_BIN_EXE_nanny");
