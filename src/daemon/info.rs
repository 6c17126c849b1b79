//! Updates of the status document's daemon part ([`DaemonInfo`], in `ServerState.info`).
//!
//! Three tasks write it: environment detection (`exchanger::publish_environment`), successful
//! reloads and failed reloads. Each changes only its own fields, so every write goes through
//! [`update`], which never loses a concurrent writer's change.

use arc_swap::ArcSwap;

use crate::status::DaemonInfo;

/// Applies `change` to the daemon info. Two overlapping updates both take effect: when another
/// writer stored in between, `change` runs again on what that writer stored
/// ([`ArcSwap::rcu`]), so `change` must only set its own fields.
pub(crate) fn update(info: &ArcSwap<DaemonInfo>, change: impl Fn(&mut DaemonInfo)) {
    info.rcu(|now| {
        let mut next = DaemonInfo::clone(now);
        change(&mut next);
        next
    });
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::status::EnvironmentStatus;

    /// Environment detection publishes while a reload failure is being recorded (the reload's
    /// `change` runs, then detection stores, then the reload stores): both must survive.
    #[test]
    fn overlapping_updates_keep_both_changes() {
        let info = ArcSwap::from_pointee(DaemonInfo::default());
        let interleaved = Cell::new(false);
        update(&info, |i| {
            if !interleaved.replace(true) {
                // Another task's whole update lands between this one's read and its write.
                update(&info, |i| {
                    i.environment = EnvironmentStatus {
                        kind: "ec2".to_owned(),
                        ..EnvironmentStatus::default()
                    };
                });
            }
            i.reload_failures += 1;
            i.last_reload_error = Some("bad".to_owned());
        });
        let now = info.load();
        assert_eq!(
            now.environment.kind, "ec2",
            "the detected environment was lost"
        );
        assert_eq!(now.reload_failures, 1);
        assert_eq!(now.last_reload_error.as_deref(), Some("bad"));
    }

    /// The same race on threads, without a scripted interleaving: many detections and reload
    /// failures at once, and every reload failure is counted.
    #[test]
    fn concurrent_updates_lose_nothing() {
        let info = ArcSwap::from_pointee(DaemonInfo::default());
        std::thread::scope(|s| {
            for t in 0..4 {
                let info = &info;
                s.spawn(move || {
                    for n in 0..500 {
                        if t % 2 == 0 {
                            update(info, |i| i.reload_failures += 1);
                        } else {
                            update(info, |i| i.environment.kind = format!("kind-{t}-{n}"));
                        }
                    }
                });
            }
        });
        assert_eq!(info.load().reload_failures, 1000);
    }
}
