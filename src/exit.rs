//! Exit codes of product §8, in one place. Every command returns one of these (or a child's
//! status, for `exec`); this module imports nothing, so no command module imports the CLI back.

/// Success.
pub const OK: u8 = 0;
/// Runtime failure.
pub const FAILURE: u8 = 1;
/// Bad usage (clap uses it too).
pub const USAGE: u8 = 2;
/// The daemon cannot be reached (sysexits EX_UNAVAILABLE).
pub const UNREACHABLE: u8 = 69;
/// Bad configuration (sysexits EX_CONFIG).
pub const CONFIG: u8 = 78;
