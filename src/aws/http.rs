//! The HTTP client every aws-config provider gets (IMDS, the ECS/EKS container endpoint, IRSA's
//! STS call): aws-config's own connector with the answer's body capped.
//!
//! aws-config reads each answer whole into memory. The answers it expects are small (a role
//! name, a credentials document, an STS XML document), but the endpoint is whatever the
//! environment names: an endless answer from a broken or hostile endpoint grew the daemon by
//! hundreds of megabytes before the call's timeout. Past [`MAX_SDK_BODY_BYTES`] the body fails
//! with an error, which the provider reports as a failed call.

use aws_smithy_http_client::{Connector, proxy::ProxyConfig, tls};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use http_body_util::BodyExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bound on one answer to an AWS credentials call. The largest real one, an STS
/// AssumeRoleWithWebIdentity document, is about 2 KiB.
pub const MAX_SDK_BODY_BYTES: usize = 64 * 1024;

/// A connector whose answers fail once their body passes `limit` bytes.
#[derive(Debug)]
struct Capped {
    inner: SharedHttpConnector,
    limit: usize,
}

impl HttpConnector for Capped {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let answer = self.inner.call(request);
        let limit = self.limit;
        HttpConnectorFuture::new(async move {
            let response = answer.await?;
            Ok(response.map(move |body| {
                SdkBody::from_body_1_x(http_body_util::Limited::new(body, limit).map_err(
                    move |e| -> BoxError {
                        if e.is::<http_body_util::LengthLimitError>() {
                            format!(
                                "the answer is larger than {} KiB, far more than a credentials \
                                 answer: is the endpoint the one it should be?",
                                limit / 1024
                            )
                            .into()
                        } else {
                            e
                        }
                    },
                ))
            }))
        })
    }
}

/// aws-config's connector (rustls with aws-lc, as its default client), through `proxy` when
/// one is given, with every answer capped at [`MAX_SDK_BODY_BYTES`].
pub(crate) fn capped_client(proxy: Option<ProxyConfig>) -> SharedHttpClient {
    http_client_fn(move |settings, components| {
        let mut builder = Connector::builder().connector_settings(settings.clone());
        if let Some(proxy) = &proxy {
            builder = builder.proxy_config(proxy.clone());
        }
        if let Some(sleep) = components.sleep_impl() {
            builder = builder.sleep_impl(sleep);
        }
        SharedHttpConnector::new(Capped {
            inner: SharedHttpConnector::new(
                builder
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::AwsLc,
                    ))
                    .build(),
            ),
            limit: MAX_SDK_BODY_BYTES,
        })
    })
}

/// The body of a `reqwest` answer from a metadata endpoint (the IMDSv1 fallback, ECS task
/// metadata), at most `cap` bytes: [`crate::net::read_capped`], worded for these callers.
///
/// # Errors
/// A transport error, or a body over `cap`, as a sentence.
pub(crate) async fn read_capped(
    response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, String> {
    match crate::net::read_capped(response, cap).await {
        Ok(mut body) => Ok(std::mem::take(&mut *body)),
        Err(crate::net::CappedReadError::Transport(e)) => Err(e.to_string()),
        Err(crate::net::CappedReadError::TooLarge) => Err(format!(
            "the answer is larger than {} KiB: is the endpoint the one it should be?",
            cap / 1024
        )),
    }
}
