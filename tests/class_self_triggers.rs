//! Class: events the daemon causes itself, or that only read its files, never feed back into
//! its triggers (issue 11). Reads of the configuration files by anyone (the Agent, `cat`, the
//! CLI, the daemon's own reload) are not changes; a change reloads once; an invalid file is
//! reported once per change; and an idle daemon then sleeps.

mod common;

use std::time::Duration;

use common::{Daemon, base_env, context_switches, wakeups_since, write_by_rename};
use nix::sys::signal::Signal;

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaa0001";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbb0002";
const SETTINGS: &str = "log: { level: debug, format: text }\n";

fn config(key: &str) -> String {
    format!("api_key: {key}\nsite: datadoghq.com\n")
}

/// Waits until the reload counters reach `want`, then a little longer (a loop would go on).
fn settle(d: &Daemon, want: (u64, u64)) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.reload_counts() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "reloads {:?}, wanted {want:?}; log:\n{}",
            d.reload_counts(),
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Longer than the runtime keeps an idle blocking thread (1 s).
    std::thread::sleep(Duration::from_millis(1500));
}

#[test]
fn reads_of_the_config_files_never_reload_and_a_change_reloads_once() {
    let d = Daemon::start(&config(KEY_A), SETTINGS, base_env());
    let pid = d.pid();
    settle(&d, (0, 0));

    // Reads by other processes, as the Agent and operators make them: no wake-up at all.
    let before = context_switches(pid);
    for _ in 0..50 {
        std::fs::read(&d.config).unwrap();
        std::fs::read(&d.settings).unwrap();
    }
    std::thread::sleep(Duration::from_millis(600));
    let woke = wakeups_since(pid, &before);
    assert_eq!(
        woke, 0,
        "reading the configuration files woke the daemon {woke} times"
    );
    let (code, _, err) = d.check_config(&base_env());
    assert_eq!(code, 0, "{err}");
    settle(&d, (0, 0));

    // One SIGHUP: one reload, then nothing (its own reads of the files are not changes).
    d.signal(Signal::SIGHUP);
    settle(&d, (1, 0));

    // One real change: one reload.
    write_by_rename(&d.config, &config(KEY_B));
    settle(&d, (2, 0));
    d.wait_key("api_key", "the edited key", |v| v["api_key"] == KEY_B);

    // The same bytes written again (an editor saving unchanged text): not a change.
    write_by_rename(&d.config, &config(KEY_B));
    std::fs::write(&d.config, config(KEY_B)).unwrap();
    settle(&d, (2, 0));

    // One invalid edit: reported once, not once per tick.
    std::fs::write(&d.config, "api_key: [unclosed\n").unwrap();
    settle(&d, (2, 1));
    let errors = d.logs().matches("The new configuration is invalid").count();
    assert_eq!(errors, 1, "{}", d.logs());

    // Then ten seconds of silence: no reload, no log line, no wake-up.
    let log_len = d.logs().len();
    let before = context_switches(pid);
    std::thread::sleep(Duration::from_secs(10));
    let woke = wakeups_since(pid, &before);
    let new_logs = d.logs()[log_len..].to_owned();
    assert_eq!(
        woke, 0,
        "an idle daemon woke {woke} times; log:\n{new_logs}"
    );
    assert_eq!(new_logs, "", "an idle daemon logged");
    assert_eq!(d.reload_counts(), (2, 1), "{}", d.logs());
    // The last good key is still served.
    d.wait_key("api_key", "the last good key", |v| v["api_key"] == KEY_B);
}
