//! What the packet path may spend each second: drop events and new automatic blocks, granted
//! to every CPU (`PG_EVENT_BUDGET`) when a generation is loaded and by the reader's one-second
//! tick after that. No clock read per packet, and nothing new is spent while no reader runs.

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray};
use portguard_common::maps::EventBudget;

/// What the packet path may spend each second, per the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grants {
    /// Drop events per CPU.
    pub drop_events: u32,
    /// Automatic blocks, over all CPUs (shared out among them), for trap ports and for
    /// detected scans each.
    pub new_blocks: u32,
}

impl Grants {
    pub fn of(policy: &crate::policy::Policy) -> Self {
        Self {
            drop_events: policy.events.drop_events_per_second,
            new_blocks: policy.limits.new_blocks_per_second,
        }
    }

    /// The policy defaults, for readers that have no policy (`portguard events` without a
    /// loader).
    pub fn defaults() -> Self {
        Self {
            drop_events: crate::policy::Events::default().drop_events_per_second,
            new_blocks: crate::policy::Limits::default().new_blocks_per_second,
        }
    }
}

/// Grants every CPU its share of one second's budget (replacing what is left).
pub fn refill_budget<T: std::borrow::BorrowMut<MapData>>(
    budget: &mut PerCpuArray<T, EventBudget>,
    grants: Grants,
) -> Result<()> {
    let current = budget.get(&0, 0)?;
    let block_tokens = grants.new_blocks.div_ceil(current.len().max(1) as u32);
    let values: Vec<EventBudget> = current
        .iter()
        .map(|v| EventBudget {
            tokens: grants.drop_events,
            trap_block_tokens: block_tokens,
            scan_block_tokens: block_tokens,
            ..*v
        })
        .collect();
    budget.set(0, aya::maps::PerCpuValues::try_from(values)?, 0)?;
    Ok(())
}

/// Drop events held back for lack of tokens, over all CPUs.
pub fn suppressed<T: std::borrow::Borrow<MapData>>(budget: &PerCpuArray<T, EventBudget>) -> u64 {
    budget.get(&0, 0).map_or(0, |values| values.iter().map(|v| v.suppressed).sum())
}
