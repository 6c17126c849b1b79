//! Region detection (product §3): explicit → `delegated_auth.aws.region` → `AWS_REGION` →
//! `AWS_DEFAULT_REGION` → ECS task metadata v4 → IMDS identity document → none (global STS host).
//!
//! The first four are lookups; the last two are network probes, each bounded, done by
//! [`super::Identity::region`], which caches what they find.

use std::time::Duration;

use super::env::{AwsEnv, vars};

/// Bound on the ECS task metadata request. The endpoint is on the task's own network namespace
/// and answers in milliseconds; 2 s only matters when it is broken.
pub const ECS_TASK_METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// The region from configuration and environment alone, in product order.
pub(crate) fn static_region(
    explicit: Option<&str>,
    configured: Option<&str>,
    env: &AwsEnv,
) -> Option<String> {
    [
        explicit,
        configured,
        env.get(vars::REGION),
        env.get(vars::DEFAULT_REGION),
    ]
    .into_iter()
    .flatten()
    .map(str::trim)
    .find(|r| !r.is_empty())
    .map(str::to_owned)
}

/// The region of an ECS task from `${ECS_CONTAINER_METADATA_URI_V4}/task`: the task ARN's region
/// field, else the availability zone without its letter.
pub(crate) async fn from_ecs_task_metadata(env: &AwsEnv) -> Option<String> {
    let base = env
        .get(vars::ECS_METADATA_URI_V4)?
        .trim()
        .trim_end_matches('/');
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(ECS_TASK_METADATA_TIMEOUT)
        .build()
        .ok()?;
    let response = client.get(format!("{base}/task")).send().await;
    let document: serde_json::Value = match response {
        Ok(r) if r.status().is_success() => {
            let body = super::http::read_capped(r, super::http::MAX_SDK_BODY_BYTES)
                .await
                .map_err(|e| tracing::debug!(error = %e, "ECS task metadata unusable; region not detected from it."))
                .ok()?;
            serde_json::from_slice(&body).ok()?
        }
        Ok(r) => {
            tracing::debug!(status = %r.status(), "ECS task metadata answered an error; region not detected from it.");
            return None;
        }
        Err(e) => {
            tracing::debug!(error = %e, "ECS task metadata unreachable; region not detected from it.");
            return None;
        }
    };
    region_from_task_document(&document)
}

/// See [`from_ecs_task_metadata`].
pub(crate) fn region_from_task_document(document: &serde_json::Value) -> Option<String> {
    let from_arn = document
        .get("TaskARN")
        .and_then(|v| v.as_str())
        .and_then(|arn| arn.split(':').nth(3))
        .filter(|r| !r.is_empty());
    let from_az = || {
        document
            .get("AvailabilityZone")
            .and_then(|v| v.as_str())
            .map(|az| az.trim_end_matches(|c: char| c.is_ascii_alphabetic()))
            .filter(|r| !r.is_empty() && r.contains('-'))
    };
    from_arn.or_else(from_az).map(str::to_owned)
}

/// The `region` field of an IMDS instance identity document.
pub(crate) fn region_from_identity_document(body: &str) -> Option<String> {
    let document: serde_json::Value = serde_json::from_str(body).ok()?;
    document
        .get("region")
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_order() {
        let env = AwsEnv::from_pairs([
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "eu-west-2"),
        ]);
        assert_eq!(
            static_region(Some("ap-south-1"), Some("us-west-2"), &env).as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(
            static_region(Some(" "), Some("us-west-2"), &env).as_deref(),
            Some("us-west-2")
        );
        assert_eq!(
            static_region(None, None, &env).as_deref(),
            Some("eu-west-1")
        );
        let env = AwsEnv::from_pairs([("AWS_REGION", ""), ("AWS_DEFAULT_REGION", "eu-west-2")]);
        assert_eq!(
            static_region(None, None, &env).as_deref(),
            Some("eu-west-2")
        );
        assert_eq!(static_region(None, None, &AwsEnv::default()), None);
    }

    #[test]
    fn task_document() {
        let doc = serde_json::json!({"TaskARN": "arn:aws:ecs:eu-central-1:123:task/c/abc", "AvailabilityZone": "us-east-2b"});
        assert_eq!(
            region_from_task_document(&doc).as_deref(),
            Some("eu-central-1")
        );
        let doc = serde_json::json!({"AvailabilityZone": "us-east-2b"});
        assert_eq!(
            region_from_task_document(&doc).as_deref(),
            Some("us-east-2")
        );
        assert_eq!(region_from_task_document(&serde_json::json!({})), None);
    }

    #[test]
    fn identity_document() {
        assert_eq!(
            region_from_identity_document(r#"{"region":"sa-east-1"}"#).as_deref(),
            Some("sa-east-1")
        );
        assert_eq!(region_from_identity_document("not json"), None);
        assert_eq!(region_from_identity_document(r#"{"region":""}"#), None);
    }
}
