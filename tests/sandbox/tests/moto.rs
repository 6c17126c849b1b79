//! The moto launcher against a real moto_server.

use sandbox::moto::{DEFAULT_ROLE, Moto};

#[tokio::test]
async fn starts_bootstraps_and_assumes_roles() {
    let moto = Moto::start().await.expect("moto starts");
    assert!(moto.url().starts_with("http://127.0.0.1:"));
    assert!(moto.user_creds().access_key_id.starts_with("AKIA"));
    let creds = moto
        .assume_role(DEFAULT_ROLE, "i-0123456789abcdef0")
        .await
        .expect("assume role");
    assert!(creds.access_key_id.starts_with("ASIA"), "{creds:?}");
    assert!(creds.session_token.is_some());
    let arn = moto.create_role("OtherRole").await.expect("create role");
    assert_eq!(arn, "arn:aws:iam::123456789012:role/OtherRole");
    moto.assume_role("OtherRole", "s2")
        .await
        .expect("assume the new role");
    moto.reset_auth(1).await.expect("reset auth");
}
