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

/// When systemd asked for a watchdog (`WatchdogSec=` sets `WATCHDOG_USEC`), pings it at half
/// the interval until shutdown. This is the daemon's only periodic timer, and only on request.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
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
