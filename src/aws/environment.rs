//! The environment kind shown in `status` (product §3): what kind of AWS workload this is,
//! derived from the selected credential source.

use std::fmt;

use super::credentials::CredentialSource;
use super::env::{AwsEnv, vars};

/// The kind of AWS environment the daemon runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvironmentKind {
    /// An EC2 instance (instance profile through IMDS).
    Ec2,
    /// An ECS task (task role through the ECS agent).
    Ecs,
    /// An EKS pod with IAM Roles for Service Accounts (web identity).
    EksIrsa,
    /// An EKS pod with Pod Identity (container credentials from 169.254.170.23).
    EksPodIdentity,
    /// Static keys in the environment.
    StaticEnv,
    /// No usable identity (see the detection's reason).
    None,
}

impl fmt::Display for EnvironmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnvironmentKind::Ec2 => "ec2",
            EnvironmentKind::Ecs => "ecs",
            EnvironmentKind::EksIrsa => "eks-irsa",
            EnvironmentKind::EksPodIdentity => "eks-pod-identity",
            EnvironmentKind::StaticEnv => "static-env",
            EnvironmentKind::None => "none",
        })
    }
}

/// The outcome of detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The environment kind.
    pub kind: EnvironmentKind,
    /// The credential source that will be used; `None` when the kind is `none`.
    pub source: Option<CredentialSource>,
    /// Why the kind is `none` (names every mechanism looked for and, for IMDS, what happened).
    pub reason: Option<String>,
}

/// EKS Pod Identity agent addresses.
const POD_IDENTITY_HOSTS: [&str; 3] = ["169.254.170.23", "[fd00:ec2::23]", "fd00:ec2::23"];

/// ECS or EKS Pod Identity, from the container variables.
///
/// ECS sets `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (and `ECS_CONTAINER_METADATA_URI_V4`). Pod
/// Identity sets a full URI on 169.254.170.23 (or `fd00:ec2::23`) at `/v1/credentials` with a
/// token file. A full URI elsewhere counts as Pod Identity when it has that path and a token file
/// and no ECS metadata (that is the local emulator's shape); anything else is ECS-style.
pub(crate) fn container_kind(env: &AwsEnv) -> EnvironmentKind {
    if env.has(vars::CONTAINER_RELATIVE_URI) {
        return EnvironmentKind::Ecs;
    }
    let Some(full) = env.get(vars::CONTAINER_FULL_URI) else {
        return EnvironmentKind::Ecs;
    };
    let Ok(uri) = full.trim().parse::<http::Uri>() else {
        return EnvironmentKind::Ecs;
    };
    let host = uri.host().unwrap_or_default();
    let pod_identity_host = POD_IDENTITY_HOSTS.contains(&host);
    let pod_identity_shape = uri.path() == "/v1/credentials"
        && env.has(vars::CONTAINER_AUTH_TOKEN_FILE)
        && !env.has(vars::ECS_METADATA_URI_V4);
    if pod_identity_host || pod_identity_shape {
        EnvironmentKind::EksPodIdentity
    } else {
        EnvironmentKind::Ecs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let all = [
            (EnvironmentKind::Ec2, "ec2"),
            (EnvironmentKind::Ecs, "ecs"),
            (EnvironmentKind::EksIrsa, "eks-irsa"),
            (EnvironmentKind::EksPodIdentity, "eks-pod-identity"),
            (EnvironmentKind::StaticEnv, "static-env"),
            (EnvironmentKind::None, "none"),
        ];
        for (kind, text) in all {
            assert_eq!(kind.to_string(), text);
        }
    }

    #[test]
    fn container_kinds() {
        let ecs = AwsEnv::from_pairs([(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/x",
        )]);
        assert_eq!(container_kind(&ecs), EnvironmentKind::Ecs);
        let pod = AwsEnv::from_pairs([(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.23/v1/credentials",
        )]);
        assert_eq!(container_kind(&pod), EnvironmentKind::EksPodIdentity);
        let pod6 = AwsEnv::from_pairs([(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://[fd00:ec2::23]/v1/credentials",
        )]);
        assert_eq!(container_kind(&pod6), EnvironmentKind::EksPodIdentity);
        let local_pod = AwsEnv::from_pairs([
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:8080/v1/credentials",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/tmp/token"),
        ]);
        assert_eq!(container_kind(&local_pod), EnvironmentKind::EksPodIdentity);
        let custom = AwsEnv::from_pairs([(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://127.0.0.1:8080/creds",
        )]);
        assert_eq!(container_kind(&custom), EnvironmentKind::Ecs);
    }
}
