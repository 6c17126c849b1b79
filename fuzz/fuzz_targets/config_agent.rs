//! The Agent's `datadog.yaml` (and its `DD_*` overrides) → validated configuration, through
//! `config::load_from_strings`: what `config::load` runs once it has read the files.
//!
//! Input: the file's text; after the first NUL byte, environment variables as `NAME=value`
//! lines (e.g. `DD_ADDITIONAL_ENDPOINTS={"https://…":["DELA(…)"]}`). The daemon's settings file
//! is absent (all defaults). Non-UTF-8 inputs are skipped: `load` refuses them before parsing.
#![no_main]

use datadog_delegated_auth::config::load_from_strings;
use datadog_delegated_auth_fuzz::{check_load, env_from_lines, fuzz_paths};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, env_text) = text.split_once('\0').unwrap_or((text, ""));
    let env = env_from_lines(env_text);
    check_load(load_from_strings(&fuzz_paths(), yaml, None, &env));
});
