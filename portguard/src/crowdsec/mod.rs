//! CrowdSec: portguard as a bouncer of a CrowdSec Local API (LAPI). `decisions` reads the
//! stream's decisions and keeps the bans in force (they reach the kernel with the manual blocks,
//! through `crate::blocks`); `pull` follows the stream from the loader; `push` sends portguard's
//! own automatic blocks to the LAPI as alerts (with machine credentials). Configured by the
//! policy's `[crowdsec]` (`crate::policy::crowdsec`).

pub mod decisions;
pub mod pull;
pub mod push;

pub use decisions::{Decision, DecisionStore};
pub use pull::PullStatus;
