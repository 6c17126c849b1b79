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
    /// Instance names, or `*` for every key instance; `token:<name>` for a token, or `token:*`
    /// for every token. `*` never reaches a token: a rule written for keys must not hand out
    /// a credential that acts as a user.
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
    /// Whether `peer` may read `instance`'s key (or report it rejected). `instance` is a key
    /// instance's name or a token's slot name (`token:<name>`).
    pub fn allows(&self, peer: &Peer, instance: &str) -> bool {
        let token = crate::keystore::token_name(instance).is_some();
        let names = |pattern: &str| match pattern {
            "*" => !token,
            "token:*" => token,
            _ => pattern == instance,
        };
        match self {
            AccessPolicy::Open => true,
            AccessPolicy::Rules(rules) => rules.iter().any(|r| {
                r.instances.iter().any(|i| names(i))
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
        // `*` is every key, never a token.
        assert!(!policy.allows(&root, "token:automation"));
        assert!(!policy.allows(&group, "token:automation"));
    }

    #[test]
    fn tokens_are_named_in_their_own_namespace() {
        let peer = |uid| Peer {
            pid: None,
            uid,
            gid: uid,
        };
        let policy = AccessPolicy::Rules(vec![
            Rule {
                instances: vec!["token:automation".into()],
                uids: vec![1000],
                gids: vec![],
            },
            Rule {
                instances: vec!["token:*".into()],
                uids: vec![2000],
                gids: vec![],
            },
            Rule {
                instances: vec!["*".into()],
                uids: vec![3000],
                gids: vec![],
            },
        ]);
        assert!(policy.allows(&peer(1000), "token:automation"));
        assert!(!policy.allows(&peer(1000), "token:deploy"));
        assert!(!policy.allows(&peer(1000), "api_key"));
        assert!(policy.allows(&peer(2000), "token:deploy"));
        assert!(
            !policy.allows(&peer(2000), "api_key"),
            "token:* is not every key"
        );
        assert!(policy.allows(&peer(3000), "api_key"));
        assert!(!policy.allows(&peer(3000), "token:automation"));
    }
}
