//! Sluice as the server of an agent's login: which packets to send after
//! the agent's `HandshakeResponse41` and what to check (MySQL Internals,
//! "Authentication Phase", "Authentication Method Switch", "Caching_sha2
//! authentication").
//!
//! [`ServerAuth`] is a pure state machine: the handler writes the payloads
//! of [`Step::Send`], checks each [`Step::Check`] proof against the stored
//! [`super::verifier::Verifier`]s of the agent's tokens, and ends with
//! [`Step::Accept`] (write the preface, then an OK once the upstream is
//! ready) or [`Step::Refuse`] (ERR 1045).
//!
//! Accepted: `mysql_native_password` and `caching_sha2_password` answers to
//! Sluice's nonce; any other plugin the client starts with is switched
//! (`AuthSwitchRequest`) to the one announced in the handshake. A failed
//! `caching_sha2_password` fast path falls back to full authentication
//! (`perform_full_authentication`, cleartext) only over TLS.
use bytes::BytesMut;
use zeroize::Zeroizing;

use super::{new_nonce, verifier::Proof, Plugin, NONCE_LEN};
use crate::handshake::{AuthPacket, HandshakeResponse};

/// `caching_sha2_password`'s `fast_auth_success` status byte.
pub const FAST_AUTH_SUCCESS: u8 = 0x03;
/// `caching_sha2_password`'s `perform_full_authentication` status byte.
pub const PERFORM_FULL_AUTHENTICATION: u8 = 0x04;

/// What the handler does next.
#[derive(Debug)]
pub enum Step {
    /// Write this payload to the agent, then pass its reply to
    /// [`ServerAuth::reply`].
    Send(BytesMut),
    /// Check this proof against the agent's token verifiers, then call
    /// [`ServerAuth::verdict`].
    Check(Proof),
    /// Authenticated. Write `preface` (if any) now; the OK packet follows
    /// once the upstream login succeeded.
    Accept { preface: Option<BytesMut> },
    /// Refused: answer ERR 1045 / `28000`.
    Refuse(Refused),
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The proof matched no token.
    #[error("the token is not valid")]
    BadToken,
    /// Full authentication was needed on a connection without TLS.
    #[error("this login needs TLS")]
    NeedsTls,
    /// A packet came that does not belong here.
    #[error("unexpected packet during authentication")]
    Unexpected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the first call, [`ServerAuth::start`].
    Start,
    /// An `AuthSwitchRequest` to this plugin was sent.
    Switched(Plugin),
    /// A proof was handed out; `fast` for a `caching_sha2_password` fast path.
    Checking { fast: bool },
    /// `perform_full_authentication` was sent; the token comes in cleartext.
    FullAuth,
    /// Accepted or refused.
    Done,
}

/// One agent login, from the handshake to accept or refuse.
#[derive(Debug)]
pub struct ServerAuth {
    nonce: [u8; NONCE_LEN],
    announced: Plugin,
    tls: bool,
    state: State,
}

impl ServerAuth {
    /// A login with a fresh nonce; `announced` is the plugin of the
    /// handshake (`mysql_native_password` or `caching_sha2_password`),
    /// `tls` whether the agent's connection is TLS already.
    pub fn new(announced: Plugin, tls: bool) -> ServerAuth {
        ServerAuth {
            nonce: new_nonce(),
            announced,
            tls,
            state: State::Start,
        }
    }

    /// The nonce to put in the handshake.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// The plugin to name in the handshake.
    pub fn announced(&self) -> Plugin {
        self.announced
    }

    /// Records that the connection switched to TLS after an SSLRequest.
    pub fn set_tls(&mut self) {
        self.tls = true;
    }

    /// The first step after the agent's `HandshakeResponse41`.
    pub fn start(&mut self, response: &HandshakeResponse) -> Step {
        if self.state != State::Start {
            return self.refuse(Refused::Unexpected);
        }
        let plugin = match &response.auth_plugin {
            Some(name) => Plugin::from_name(name),
            None => Some(Plugin::MysqlNativePassword),
        };
        match plugin {
            Some(p @ (Plugin::MysqlNativePassword | Plugin::CachingSha2Password)) => {
                self.check(p, response.auth_response.clone())
            }
            Some(Plugin::MysqlClearPassword) if self.tls => {
                self.check(Plugin::MysqlClearPassword, response.auth_response.clone())
            }
            _ => {
                self.state = State::Switched(self.announced);
                Step::Send(
                    AuthPacket::Switch {
                        plugin: self.announced.name().as_bytes().to_vec(),
                        data: [&self.nonce[..], &[0]].concat(),
                    }
                    .encode(),
                )
            }
        }
    }

    /// The step after the agent's reply to a [`Step::Send`].
    pub fn reply(&mut self, payload: &[u8]) -> Step {
        match self.state {
            State::Switched(p) => self.check(p, payload.to_vec()),
            State::FullAuth => {
                let token = payload.strip_suffix(&[0]).unwrap_or(payload);
                self.check(Plugin::MysqlClearPassword, token.to_vec())
            }
            _ => self.refuse(Refused::Unexpected),
        }
    }

    /// The step after checking a [`Step::Check`] proof: `matched` when it
    /// matched a valid token of the agent.
    pub fn verdict(&mut self, matched: bool) -> Step {
        let State::Checking { fast } = self.state else {
            return self.refuse(Refused::Unexpected);
        };
        match (matched, fast) {
            (true, fast) => {
                self.state = State::Done;
                Step::Accept {
                    preface: fast.then(|| AuthPacket::MoreData(vec![FAST_AUTH_SUCCESS]).encode()),
                }
            }
            (false, true) if self.tls => {
                self.state = State::FullAuth;
                Step::Send(AuthPacket::MoreData(vec![PERFORM_FULL_AUTHENTICATION]).encode())
            }
            (false, true) => self.refuse(Refused::NeedsTls),
            (false, false) => self.refuse(Refused::BadToken),
        }
    }

    fn check(&mut self, plugin: Plugin, response: Vec<u8>) -> Step {
        let nonce = self.nonce.to_vec();
        let (proof, fast) = match plugin {
            _ if response.is_empty() => (Proof::Absent, false),
            Plugin::MysqlNativePassword => (Proof::Native { nonce, response }, false),
            Plugin::CachingSha2Password => (Proof::CachingSha2 { nonce, response }, true),
            _ => (Proof::Cleartext(Zeroizing::new(response)), false),
        };
        self.state = State::Checking { fast };
        Step::Check(proof)
    }

    fn refuse(&mut self, why: Refused) -> Step {
        self.state = State::Done;
        Step::Refuse(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        auth::{scramble, verifier::Verifier},
        handshake::{ClientHeader, UTF8MB4_GENERAL_CI},
        Capabilities,
    };

    const TOKEN: &[u8] = b"sluice_tok_abc";

    fn response(plugin: &str, auth_response: Vec<u8>) -> HandshakeResponse {
        HandshakeResponse {
            header: ClientHeader {
                capabilities: Capabilities::UPSTREAM,
                max_packet: 1 << 24,
                charset: UTF8MB4_GENERAL_CI,
            },
            user: b"anyone".to_vec(),
            auth_response,
            database: None,
            auth_plugin: Some(plugin.as_bytes().to_vec()),
            attributes: Vec::new(),
        }
    }

    fn check(step: Step) -> bool {
        match step {
            Step::Check(p) => p.matches(&Verifier::from_token(TOKEN)),
            other => panic!("expected a check, got {other:?}"),
        }
    }

    #[test]
    fn native_answer_is_accepted_without_preface() {
        let mut a = ServerAuth::new(Plugin::MysqlNativePassword, false);
        let r = scramble::native_password(TOKEN, a.nonce());
        let ok = check(a.start(&response("mysql_native_password", r)));
        assert!(matches!(a.verdict(ok), Step::Accept { preface: None }));
    }

    #[test]
    fn caching_sha2_fast_path_sends_fast_auth_success() {
        let mut a = ServerAuth::new(Plugin::CachingSha2Password, false);
        let r = scramble::caching_sha2(TOKEN, a.nonce());
        let ok = check(a.start(&response("caching_sha2_password", r)));
        let Step::Accept { preface: Some(p) } = a.verdict(ok) else {
            panic!()
        };
        assert_eq!(&p[..], &[0x01, FAST_AUTH_SUCCESS]);
    }

    #[test]
    fn other_plugins_are_switched_to_the_announced_one() {
        let mut a = ServerAuth::new(Plugin::MysqlNativePassword, false);
        let Step::Send(p) = a.start(&response("client_ed25519", vec![1; 64])) else {
            panic!()
        };
        let AuthPacket::Switch { plugin, data } = AuthPacket::decode(p.freeze()).unwrap() else {
            panic!()
        };
        assert_eq!(plugin, b"mysql_native_password");
        assert_eq!(data.last(), Some(&0), "the nonce is NUL-terminated");
        let nonce = Plugin::MysqlNativePassword.nonce(&data);
        let ok = check(a.reply(&scramble::native_password(TOKEN, nonce)));
        assert!(matches!(a.verdict(ok), Step::Accept { .. }));
    }

    #[test]
    fn failed_fast_path_needs_tls_for_full_auth() {
        let wrong = scramble::caching_sha2(b"wrong", &[0; 20]);
        let mut plain = ServerAuth::new(Plugin::CachingSha2Password, false);
        let ok = check(plain.start(&response("caching_sha2_password", wrong.clone())));
        assert!(matches!(plain.verdict(ok), Step::Refuse(Refused::NeedsTls)));

        let mut tls = ServerAuth::new(Plugin::CachingSha2Password, true);
        let ok = check(tls.start(&response("caching_sha2_password", wrong)));
        let Step::Send(p) = tls.verdict(ok) else {
            panic!()
        };
        assert_eq!(&p[..], &[0x01, PERFORM_FULL_AUTHENTICATION]);
        let ok = check(tls.reply(b"sluice_tok_abc\0"));
        assert!(matches!(tls.verdict(ok), Step::Accept { preface: None }));
    }

    #[test]
    fn wrong_token_and_empty_password_are_refused() {
        let mut a = ServerAuth::new(Plugin::MysqlNativePassword, true);
        let r = scramble::native_password(b"wrong", a.nonce());
        let ok = check(a.start(&response("mysql_native_password", r)));
        assert!(matches!(a.verdict(ok), Step::Refuse(Refused::BadToken)));
        let mut b = ServerAuth::new(Plugin::MysqlNativePassword, true);
        let ok = check(b.start(&response("mysql_native_password", Vec::new())));
        assert!(matches!(b.verdict(ok), Step::Refuse(Refused::BadToken)));
        assert!(matches!(
            b.reply(b"late"),
            Step::Refuse(Refused::Unexpected)
        ));
    }
}
