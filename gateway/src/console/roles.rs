//! Who may do what in the console (DESIGN.md §9): roles come from the
//! groups in the person's ID token.
//!
//! - members of a `[console] admins` group see and do everything;
//! - members of a service's `approvers` group may approve or deny that
//!   service's held operations;
//! - anyone in a group the console knows (an admins or approvers group)
//!   may view approvals, sessions and tokens;
//! - anyone else gets 403.
use crate::config::Config;

use super::oidc::Person;

/// A signed-in person's roles under one config.
pub struct Roles<'a> {
    cfg: &'a Config,
    person: &'a Person,
}

impl<'a> Roles<'a> {
    pub fn new(cfg: &'a Config, person: &'a Person) -> Self {
        Roles { cfg, person }
    }

    fn member(&self, groups: &[String]) -> bool {
        self.person.groups.iter().any(|g| groups.contains(g))
    }

    /// In a `[console] admins` group.
    pub fn admin(&self) -> bool {
        self.cfg
            .console
            .as_ref()
            .is_some_and(|c| self.member(&c.admins))
    }

    /// May approve or deny held operations of `service`.
    pub fn may_decide(&self, service: &str) -> bool {
        self.admin()
            || self
                .cfg
                .service(service)
                .is_some_and(|s| self.member(&s.approvers))
    }

    /// May revoke tokens.
    pub fn may_revoke(&self) -> bool {
        self.admin()
    }

    /// May see the console at all: in a group the console knows.
    pub fn may_view(&self) -> bool {
        self.admin() || self.cfg.services.iter().any(|s| self.member(&s.approvers))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn admins_approvers_and_strangers() {
        let cfg = Config::parse(
            Path::new("t.toml"),
            "[console]\nlisten = '127.0.0.1:9443'\noidc = 'corp'\nadmins = ['group:security']\n\
             [[oidc]]\nname = 'corp'\nissuer = 'https://idp.test'\naudience = 'sluice'\n\
             client_id = 'console'\nclient_secret = 'console-secret'\n\
             [[service]]\nname = 'db'\nprotocol = 'postgres'\nupstream = 'db.test:5432'\n\
             credential = { secret = 's', user = 'u' }\napprovers = ['group:db-leads']\n\
             [[service]]\nname = 'api'\nprotocol = 'https'\nupstream = 'api.test:443'\n\
             credential = { secret = 's' }\napprovers = ['group:api-leads']\n",
        )
        .unwrap();
        let person = |groups: &[&str]| Person {
            subject: "s".into(),
            name: "n".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let admin = person(&["security"]);
        let r = Roles::new(&cfg, &admin);
        assert!(r.admin() && r.may_decide("db") && r.may_decide("api") && r.may_revoke());
        let lead = person(&["db-leads", "staff"]);
        let r = Roles::new(&cfg, &lead);
        assert!(r.may_view() && r.may_decide("db"));
        assert!(!r.may_decide("api") && !r.may_revoke() && !r.admin());
        let stranger = person(&["staff"]);
        assert!(!Roles::new(&cfg, &stranger).may_view());
    }
}
