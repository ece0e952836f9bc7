//! The one way portguard gets a tokio runtime: a single thread, with timers and I/O. The
//! commands are short-lived and the loader's work is one event loop (heavy steps go to
//! `spawn_blocking`), so a multi-threaded runtime would only add threads.

use std::future::Future;

use anyhow::{Context as _, Result};

/// A current-thread runtime with I/O and timers enabled.
pub fn new() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

/// Runs `future` to completion on a fresh runtime: for a command that makes one request.
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    Ok(new()?.block_on(future))
}
