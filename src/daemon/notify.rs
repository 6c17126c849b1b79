//! systemd readiness protocol (`Type=notify`). Every call is a no-op when `NOTIFY_SOCKET` is
//! unset (containers, manual runs); failures are logged, never fatal.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "Cannot notify systemd.");
    }
}

/// `READY=1` plus a status line: sent once the socket is bound and answering.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new status line (`systemctl status` shows it).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The shortest watchdog interval honoured: half of it is the ping period, and systemd's own
/// minimum is far above it. Anything shorter is a broken environment, not a request.
const MIN_WATCHDOG: Duration = Duration::from_millis(2);

/// The longest time between two pings, whatever the interval.
const MAX_WATCHDOG_PERIOD: Duration = Duration::from_secs(3600);

/// The watchdog interval systemd asked for: `WATCHDOG_USEC` (whole microseconds), when
/// `WATCHDOG_PID` is unset or names this process. A value that is no usable interval (0, 1,
/// text) means no watchdog, with a warning: never a panic on the environment.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec = usec?;
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(std::process::id())) {
        return None;
    }
    match usec.trim().parse::<u64>().map(Duration::from_micros) {
        Ok(d) if d >= MIN_WATCHDOG => Some(d),
        _ => {
            warn!(
                value = usec,
                "WATCHDOG_USEC is not a usable watchdog interval (whole microseconds, at least 2000); running without the systemd watchdog."
            );
            None
        }
    }
}

/// When systemd asked for a watchdog (`WatchdogSec=` sets `WATCHDOG_USEC`), pings it at half
/// the interval until shutdown. This is the daemon's only periodic timer, and only on request.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    let Some(interval) = watchdog_interval(usec.as_deref(), pid.as_deref()) else {
        return;
    };
    // An absurdly long interval is honoured with hourly pings (tokio's timers end in ~30 years).
    let period = (interval / 2).min(MAX_WATCHDOG_PERIOD);
    debug!(period = ?period, "Feeding the systemd watchdog.");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_usable_intervals_for_this_process_ask_for_a_watchdog() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("30000000"), Some(&me)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), None),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("1")), None);
        assert_eq!(watchdog_interval(None, Some(&me)), None);
        for bad in ["0", "1", "1999", "soon", "", "-5", "18446744073709551616"] {
            assert_eq!(watchdog_interval(Some(bad), Some(&me)), None, "{bad}");
        }
        assert!(watchdog_interval(Some("18446744073709551615"), Some(&me)).is_some());
    }
}
