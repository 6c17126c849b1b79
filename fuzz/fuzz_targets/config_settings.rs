//! The daemon's `delegated-auth.yaml` → validated configuration, through
//! `config::load_from_strings`, next to a fixed small `datadog.yaml` with several instances
//! (product sections, DELA endpoints, fallback keys), so sink and access names cross-check
//! against real instance names.
//!
//! Input: the settings file's text. Non-UTF-8 inputs are skipped (`load` refuses them).
#![no_main]

use datadog_delegated_auth::config::load_from_strings;
use datadog_delegated_auth_fuzz::{check_load, fuzz_paths};
use libfuzzer_sys::fuzz_target;

const AGENT_YAML: &str = r#"
api_key: 0123456789abcdef0123456789abcdef
site: datadoghq.com
delegated_auth:
  org_uuid: 3fa85f64-5717-4562-b3fc-2c963f66afa6
additional_endpoints:
  "https://app.datadoghq.eu":
    - "DELA(aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee, aws, region=eu-west-1, fallback=cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd)"
logs_config:
  api_key: fedcba9876543210fedcba9876543210
  delegated_auth:
    org_uuid: 11111111-2222-3333-4444-555555555555
  additional_endpoints:
    - api_key: "DELA(aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee, aws)"
      Host: agent-http-intake.logs.datadoghq.eu
remote_configuration:
  delegated_auth:
    org_uuid: 3fa85f64-5717-4562-b3fc-2c963f66afa6
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let no_env = |_: &str| None;
    check_load(load_from_strings(
        &fuzz_paths(),
        AGENT_YAML,
        Some(text),
        &no_env,
    ));
});
