//! The upstream login against scripted servers over an in-memory pipe.
use rsa::{pkcs8::EncodePublicKey, Oaep, RsaPrivateKey};
use tokio::io::{duplex, DuplexStream};

use super::*;
use crate::{
    auth::{
        scramble::xor,
        verifier::{Proof, Verifier},
    },
    handshake::{ClientHello, STATUS_AUTOCOMMIT},
    response::OkPacket,
};

const PASSWORD: &[u8] = b"vault-secret-123";

fn params(tls: UpstreamTls) -> LoginParams<'static> {
    LoginParams {
        user: "orders",
        password: PASSWORD,
        database: Some(b"shop"),
        tls,
        tls_config: None,
        server_name: ServerName::try_from("db.internal").unwrap(),
        // Even when asked for, LOCAL_FILES is never sent.
        capabilities: Capabilities::UPSTREAM | Capabilities::LOCAL_FILES,
    }
}

fn handshake(plugin: Plugin, capabilities: Capabilities) -> InitialHandshake {
    InitialHandshake {
        server_version: b"8.0.36".to_vec(),
        connection_id: 42,
        nonce: crate::auth::new_nonce().to_vec(),
        capabilities,
        charset: UTF8MB4_GENERAL_CI,
        status: STATUS_AUTOCOMMIT,
        auth_plugin: plugin.name().as_bytes().to_vec(),
    }
}

/// A server offering everything, LOCAL_FILES included.
fn all_capabilities() -> Capabilities {
    Capabilities(0xFFFF_FFFF).without(Capabilities::SSL)
}

async fn greet_client(
    plugin: Plugin,
    caps: Capabilities,
) -> (PacketStream<DuplexStream>, InitialHandshake, DuplexStream) {
    let (client, server) = duplex(64 * 1024);
    let mut server = PacketStream::new(server);
    let hs = handshake(plugin, caps);
    server.write(&hs.encode()).await.unwrap();
    (server, hs, client)
}

async fn read_response(server: &mut PacketStream<DuplexStream>) -> HandshakeResponse {
    let p = server.read().await.unwrap();
    match ClientHello::decode(&p.payload).unwrap() {
        ClientHello::Response(r) => r,
        ClientHello::SslRequest(_) => panic!("unexpected SSLRequest"),
    }
}

#[tokio::test]
async fn caching_sha2_full_auth_without_tls_uses_the_rsa_key() {
    let (mut server, hs, client) =
        greet_client(Plugin::CachingSha2Password, all_capabilities()).await;
    let script = tokio::spawn(async move {
        let resp = read_response(&mut server).await;
        assert!(!resp.header.capabilities.contains(Capabilities::LOCAL_FILES));
        assert_eq!(resp.user, b"orders");
        assert_eq!(resp.database.as_deref(), Some(&b"shop"[..]));
        let proof = Proof::CachingSha2 {
            nonce: hs.nonce.clone(),
            response: resp.auth_response,
        };
        assert!(proof.matches(&Verifier::from_token(PASSWORD)));
        server
            .write(&AuthPacket::MoreData(vec![PERFORM_FULL_AUTHENTICATION]).encode())
            .await
            .unwrap();
        assert_eq!(
            &server.read().await.unwrap().payload[..],
            &[REQUEST_PUBLIC_KEY]
        );
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let pem = key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        server
            .write(&AuthPacket::MoreData(pem.into_bytes()).encode())
            .await
            .unwrap();
        let sealed = server.read().await.unwrap();
        let opened = key
            .decrypt(Oaep::new::<sha1::Sha1>(), &sealed.payload)
            .unwrap();
        assert_eq!(xor(&opened, &hs.nonce), b"vault-secret-123\0");
        server.write(&OkPacket::default().encode()).await.unwrap();
    });
    let up = login(client, &params(UpstreamTls::Disable)).await.unwrap();
    script.await.unwrap();
    assert_eq!(up.handshake.connection_id, 42);
    assert!(!up.capabilities.contains(Capabilities::LOCAL_FILES));
}

#[tokio::test]
async fn auth_switch_to_ed25519_signs_the_new_nonce() {
    let (mut server, _hs, client) =
        greet_client(Plugin::MysqlNativePassword, all_capabilities()).await;
    let script = tokio::spawn(async move {
        read_response(&mut server).await;
        // A zero last byte is part of ed25519's nonce, not a terminator.
        let mut nonce = [7u8; 32];
        nonce[31] = 0;
        let switch = AuthPacket::Switch {
            plugin: b"client_ed25519".to_vec(),
            data: nonce.to_vec(),
        };
        server.write(&switch.encode()).await.unwrap();
        let sig = server.read().await.unwrap();
        let public =
            ed25519_dalek::VerifyingKey::from_bytes(&scramble::ed25519_public_key(PASSWORD))
                .unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig.payload).unwrap();
        public.verify_strict(&nonce, &sig).unwrap();
        server.write(&OkPacket::default().encode()).await.unwrap();
    });
    login(client, &params(UpstreamTls::Disable)).await.unwrap();
    script.await.unwrap();
}

#[tokio::test]
async fn server_refusal_is_reported_with_its_err_packet() {
    let (mut server, _hs, client) =
        greet_client(Plugin::MysqlNativePassword, all_capabilities()).await;
    let script = tokio::spawn(async move {
        read_response(&mut server).await;
        server
            .write(&ErrPacket::access_denied("Access denied for user 'orders'").encode())
            .await
            .unwrap();
    });
    let err = login(client, &params(UpstreamTls::Disable))
        .await
        .unwrap_err();
    script.await.unwrap();
    assert!(
        matches!(err, UpstreamError::Refused(ref e) if e.code == 1045),
        "{err}"
    );
}

#[tokio::test]
async fn no_credential_without_verified_tls() {
    // verify-full against a server without TLS: refused before any answer.
    let (mut server, _hs, client) =
        greet_client(Plugin::MysqlNativePassword, all_capabilities()).await;
    let err = login(client, &params(UpstreamTls::VerifyFull))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::TlsNotOffered), "{err}");
    assert!(matches!(server.read().await, Err(PacketError::Closed)));
    // prefer, no TLS offered: the connection stays plain and nothing is sent.
    let (mut server, _hs, client) =
        greet_client(Plugin::MysqlNativePassword, all_capabilities()).await;
    let err = login(client, &params(UpstreamTls::Prefer))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unverified), "{err}");
    assert!(matches!(server.read().await, Err(PacketError::Closed)));
}
