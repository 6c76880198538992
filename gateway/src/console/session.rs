//! Server-side web sessions and sign-ins in progress.
//!
//! A signed-in browser holds only a random id in the cookie [`COOKIE`]
//! (`Secure; HttpOnly; SameSite=Strict`); the person, their groups and
//! the session's CSRF token stay in this process. A sign-in in progress
//! holds a random id in [`LOGIN_COOKIE`] (`SameSite=Lax`, since the
//! issuer's redirect back is a cross-site navigation; path `/callback`
//! only), naming the `state`, `nonce` and PKCE verifier kept here until
//! the callback. Both expire ([`SESSION_TTL`], [`LOGIN_TTL`]) and both
//! stores are bounded.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::{rngs::OsRng, RngCore};

use super::oidc::{Pending, Person};

/// The session cookie's name.
pub const COOKIE: &str = "sluice_console";
/// The sign-in-in-progress cookie's name.
pub const LOGIN_COOKIE: &str = "sluice_signin";
/// How long a web session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a sign-in may take at the issuer.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// At most this many sessions and as many sign-ins in progress; past it
/// the oldest go.
const MAX_ENTRIES: usize = 10_000;

/// A signed-in person's session.
#[derive(Debug, Clone)]
pub struct WebSession {
    pub person: Person,
    /// The token every form of this session carries.
    pub csrf: String,
    expires: Instant,
}

/// Both stores.
#[derive(Default)]
pub struct Sessions {
    web: Mutex<HashMap<String, WebSession>>,
    logins: Mutex<HashMap<String, (Pending, Instant)>>,
}

/// 32 random bytes, hex: session ids, sign-in ids and CSRF tokens.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Drops expired entries, then the soonest to expire while over the bound.
fn prune<V>(map: &mut HashMap<String, V>, expires: impl Fn(&V) -> Instant) {
    let now = Instant::now();
    map.retain(|_, v| expires(v) > now);
    while map.len() >= MAX_ENTRIES {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| expires(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Sessions {
    /// Keeps a sign-in in progress; returns the id for [`LOGIN_COOKIE`].
    pub fn begin_login(&self, pending: Pending) -> String {
        let id = random_id();
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut logins, |(_, at)| *at + LOGIN_TTL);
        logins.insert(id.clone(), (pending, Instant::now()));
        id
    }

    /// Takes the sign-in `id` (once) if it has not expired.
    pub fn take_login(&self, id: &str) -> Option<Pending> {
        let mut logins = self.logins.lock().unwrap_or_else(|p| p.into_inner());
        let (pending, at) = logins.remove(id)?;
        (at.elapsed() < LOGIN_TTL).then_some(pending)
    }

    /// Starts a session for `person`; returns its id for [`COOKIE`].
    pub fn start(&self, person: Person) -> String {
        let id = random_id();
        let mut web = self.web.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut web, |s| s.expires);
        web.insert(
            id.clone(),
            WebSession {
                person,
                csrf: random_id(),
                expires: Instant::now() + SESSION_TTL,
            },
        );
        id
    }

    /// The live session `id`.
    pub fn get(&self, id: &str) -> Option<WebSession> {
        let web = self.web.lock().unwrap_or_else(|p| p.into_inner());
        web.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Ends the session `id`.
    pub fn end(&self, id: &str) {
        self.web
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for the session.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// `Set-Cookie` for a sign-in in progress (empty `id` with age 0 clears it).
pub fn login_cookie(id: &str, max_age: u64) -> String {
    format!(
        "{LOGIN_COOKIE}={id}; Path=/callback; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    )
}

/// `Set-Cookie` that clears the session cookie.
pub fn cleared_session_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = "a=1; sluice_console=abc; sluice_console_x=no";
        assert_eq!(cookie(h, COOKIE), Some("abc"));
        assert_eq!(cookie(h, "b"), None);
        assert!(session_cookie("x").contains("Secure; HttpOnly; SameSite=Strict"));
    }

    #[test]
    fn sessions_have_their_own_csrf_token_and_end() {
        let s = Sessions::default();
        let person = Person {
            subject: "alice".into(),
            name: "Alice".into(),
            groups: vec!["security".into()],
        };
        let a = s.start(person.clone());
        let b = s.start(person);
        assert_ne!(s.get(&a).unwrap().csrf, s.get(&b).unwrap().csrf);
        assert_eq!(a.len(), 64);
        s.end(&a);
        assert!(s.get(&a).is_none());
        assert!(s.get("unknown").is_none());
    }
}
