//! Exit codes that mean more than success (0) or failure (1); clap uses 2 for usage errors.
//! Each has one name, used wherever it is returned, and a row in the README's table.

/// `attach --confirm-within`: nobody confirmed, so the attach was rolled back (detached).
pub const ROLLED_BACK: u8 = 5;
