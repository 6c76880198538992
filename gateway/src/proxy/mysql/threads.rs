//! The connection ids Sluice gives MySQL agents and the upstream threads
//! behind them, so that `KILL QUERY <id>` from an agent's second connection
//! (what the client's Ctrl-C sends) reaches the upstream thread of its own
//! first connection, and no other (DESIGN.md §6 "MySQL / MariaDB").
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
};

/// Whose a connection id is.
struct Owner {
    agent: String,
    service: String,
    /// The upstream's connection (thread) id, once logged in.
    thread: Option<u32>,
}

/// Connection ids in use on this gateway.
pub struct Threads {
    next: AtomicU32,
    owners: Mutex<HashMap<u32, Owner>>,
}

impl Default for Threads {
    /// Ids start at a random point, so they do not repeat those of an
    /// earlier run of the gateway.
    fn default() -> Self {
        Threads {
            next: AtomicU32::new(rand::random::<u32>() >> 8 | 1),
            owners: Mutex::default(),
        }
    }
}

impl Threads {
    /// A fresh connection id (never 0) for a connection of `agent` to
    /// `service`; [`Threads::release`] it when the connection ends.
    pub fn open(&self, agent: &str, service: &str) -> u32 {
        let mut owners = self.owners.lock().unwrap();
        loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            if id != 0 && !owners.contains_key(&id) {
                owners.insert(
                    id,
                    Owner {
                        agent: agent.to_string(),
                        service: service.to_string(),
                        thread: None,
                    },
                );
                return id;
            }
        }
    }

    /// Notes the upstream thread behind `id`.
    pub fn logged_in(&self, id: u32, thread: u32) {
        if let Some(owner) = self.owners.lock().unwrap().get_mut(&id) {
            owner.thread = Some(thread);
        }
    }

    /// Forgets `id`.
    pub fn release(&self, id: u32) {
        self.owners.lock().unwrap().remove(&id);
    }

    /// The upstream thread behind `id` when `agent` holds it for `service`;
    /// `None` for anyone else's id or an unknown one.
    pub fn owned_by(&self, id: u32, agent: &str, service: &str) -> Option<u32> {
        let owners = self.owners.lock().unwrap();
        let owner = owners.get(&id)?;
        (owner.agent == agent && owner.service == service)
            .then_some(owner.thread)
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_reaches_the_thread() {
        let t = Threads::default();
        let id = t.open("ci", "db");
        assert_eq!(t.owned_by(id, "ci", "db"), None);
        t.logged_in(id, 42);
        assert_eq!(t.owned_by(id, "ci", "db"), Some(42));
        assert_eq!(t.owned_by(id, "other", "db"), None);
        assert_eq!(t.owned_by(id, "ci", "other-db"), None);
        assert_eq!(t.owned_by(id.wrapping_add(1), "ci", "db"), None);
        t.release(id);
        assert_eq!(t.owned_by(id, "ci", "db"), None);
    }
}
