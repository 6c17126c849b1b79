//! Who may read which key: the `access` rules of the settings file (product §2.2), checked
//! against the peer credentials (`SO_PEERCRED`) of each connection.

/// The credentials of the process at the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Process id, when the kernel reports it.
    pub pid: Option<i32>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// One rule with names already resolved to numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Instance names, or `*` for all.
    pub instances: Vec<String>,
    /// Allowed user ids.
    pub uids: Vec<u32>,
    /// Allowed group ids (matched against the peer's primary group, the one `SO_PEERCRED`
    /// reports; supplementary groups are not visible through it).
    pub gids: Vec<u32>,
}

/// The access policy in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessPolicy {
    /// No `access` section: whoever can open the socket (its mode and group decide).
    #[default]
    Open,
    /// Only peers matching a rule for the instance.
    Rules(Vec<Rule>),
}

impl AccessPolicy {
    /// Whether `peer` may read `instance`'s key (or report it rejected).
    pub fn allows(&self, peer: &Peer, instance: &str) -> bool {
        match self {
            AccessPolicy::Open => true,
            AccessPolicy::Rules(rules) => rules.iter().any(|r| {
                r.instances.iter().any(|i| i == "*" || i == instance)
                    && (r.uids.contains(&peer.uid) || r.gids.contains(&peer.gid))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_instance_and_identity() {
        let policy = AccessPolicy::Rules(vec![
            Rule {
                instances: vec!["api_key".into()],
                uids: vec![1000],
                gids: vec![],
            },
            Rule {
                instances: vec!["*".into()],
                uids: vec![0],
                gids: vec![50],
            },
        ]);
        let user = Peer {
            pid: None,
            uid: 1000,
            gid: 1000,
        };
        let root = Peer {
            pid: None,
            uid: 0,
            gid: 0,
        };
        let group = Peer {
            pid: None,
            uid: 7,
            gid: 50,
        };
        let other = Peer {
            pid: None,
            uid: 7,
            gid: 7,
        };
        assert!(policy.allows(&user, "api_key"));
        assert!(!policy.allows(&user, "logs_config.api_key"));
        assert!(policy.allows(&root, "logs_config.api_key"));
        assert!(policy.allows(&group, "anything"));
        assert!(!policy.allows(&other, "api_key"));
        assert!(AccessPolicy::Open.allows(&other, "api_key"));
    }
}
