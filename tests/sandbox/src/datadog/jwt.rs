//! The delegated tokens the emulator mints: compact HS256 JWTs (RFC 7519) signed with a random
//! per-emulator secret.
//!
//! Only the emulator ever verifies them, so the format is the smallest that looks like what
//! Datadog returns (a JWT a client treats as opaque) while still letting the emulator refuse a
//! tampered or expired token the way a real server would: a fixed header, the claims below, and
//! an HMAC-SHA256 signature compared in constant time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The `iss` of every token (tests can tell the emulator's tokens from anything else).
pub const ISSUER: &str = "sandbox-datadog";

/// The only header the emulator writes or accepts.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What a delegated token says. `exp` is also the `expires` the exchange answers, so a client
/// that trusts `expires` and the server agree on when the token stops working.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The account's UUID (the persona mapping's `account_uuid`).
    pub sub: String,
    /// The account identifier (user email or service account) the mapping names.
    pub account: String,
    /// The org the token acts in (as registered with the emulator).
    pub org_uuid: String,
    /// The AWS caller ARN STS reported for the proof.
    pub arn: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expiry, unix seconds: the token is refused from this second on.
    pub exp: u64,
    /// A unique id (UUID v4), so two tokens minted in the same second differ.
    pub jti: String,
}

impl Claims {
    /// The instant the token stops working.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.exp)
    }
}

/// Why a bearer token was refused. The Display text is the 401's JSON:API `detail`, which tests
/// match on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, not JSON, or not our header.
    #[error("malformed token")]
    Malformed,
    /// The signature is not the emulator's over these bytes.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Revoked by a test ([`super::DatadogEmulator::revoke_token`]).
    #[error("token revoked")]
    Revoked,
    /// The org the token acts in is no longer registered.
    #[error("unknown org")]
    UnknownOrg,
}

/// The emulator's signing key.
#[derive(Clone)]
pub struct Signer {
    secret: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer with a fresh random secret. `fastrand` is not a CSPRNG; that is fine for an
    /// emulator whose tokens only need to differ between instances and resist accidental reuse.
    pub fn random() -> Signer {
        let mut secret = [0u8; 32];
        fastrand::fill(&mut secret);
        Signer { secret }
    }

    /// A signer with a fixed secret (unit tests).
    #[cfg(test)]
    pub fn with_secret(secret: [u8; 32]) -> Signer {
        Signer { secret }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        <HmacSha256 as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }

    /// The compact JWT for `claims`.
    pub fn encode(&self, claims: &Claims) -> String {
        // Strings and integers always serialise; an empty payload would only fail to verify.
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = mac.finalize().into_bytes();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The claims of `token` when it is well formed, signed by this signer and not expired at
    /// `now`. Revocation and the org's existence are the caller's to check (they live in the
    /// emulator's state, not in the token).
    ///
    /// # Errors
    /// [`TokenError::Malformed`], [`TokenError::BadSignature`] or [`TokenError::Expired`].
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed)
        };
        let header_json: serde_json::Value =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if header_json.get("alg").and_then(serde_json::Value::as_str) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let signature = decode(signature)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Malformed)?;
        if claims.expires_at() <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
            account: "automation@example.com".into(),
            org_uuid: "11111111-2222-3333-4444-555555555555".into(),
            arn: "arn:aws:sts::123456789012:assumed-role/R/s".into(),
            iat: exp - 900,
            exp,
            jti: "j".into(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn round_trip() {
        let signer = Signer::with_secret([7; 32]);
        let token = signer.encode(&claims(2_000));
        assert_eq!(token.split('.').count(), 3);
        assert!(token.starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'));
        assert_eq!(signer.verify(&token, at(1_999)), Ok(claims(2_000)));
    }

    #[test]
    fn expiry_is_exclusive() {
        let signer = Signer::with_secret([7; 32]);
        let token = signer.encode(&claims(2_000));
        assert_eq!(signer.verify(&token, at(2_000)), Err(TokenError::Expired));
        assert_eq!(signer.verify(&token, at(5_000)), Err(TokenError::Expired));
    }

    #[test]
    fn tampering_and_other_secrets_are_refused() {
        let signer = Signer::with_secret([7; 32]);
        let token = signer.encode(&claims(2_000));
        let other = Signer::with_secret([8; 32]);
        assert_eq!(other.verify(&token, at(0)), Err(TokenError::BadSignature));

        // A longer lifetime with the old signature.
        let (head, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(9_999)).unwrap());
        let forged = format!("{head}.{forged_payload}.{signature}");
        assert_eq!(signer.verify(&forged, at(0)), Err(TokenError::BadSignature));

        // One flipped signature character.
        let mut bytes = token.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(
            signer.verify(&flipped, at(0)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens() {
        let signer = Signer::with_secret([7; 32]);
        let token = signer.encode(&claims(2_000));
        let none_alg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            token.split_once('.').unwrap().1
        );
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            &format!("{token}.x"),
            &none_alg,
        ] {
            assert_eq!(
                signer.verify(bad, at(0)),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_texts_are_the_api_details() {
        assert_eq!(TokenError::Expired.to_string(), "token expired");
        assert_eq!(TokenError::Revoked.to_string(), "token revoked");
        assert_eq!(TokenError::BadSignature.to_string(), "bad signature");
        assert_eq!(TokenError::Malformed.to_string(), "malformed token");
    }
}
