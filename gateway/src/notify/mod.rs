//! Notifications (DESIGN.md §9, `[[notify]]`): for each chosen event, a POST
//! to a webhook from a background task, never on the data path.
//!
//! The recorder hands every written line to [`Notifier::offer`], which only
//! formats the message and puts it on a bounded queue ([`QUEUE`] messages
//! per target); a full queue drops the message with a warning and the
//! `sluice_notifications_dropped_total` counter. One task per target sends
//! them in order, retrying a failed POST with exponential backoff
//! ([`send::RETRIES`]). Messages carry the record line's fields, which never
//! hold a secret, a bind value or a masked value.
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

pub use crate::config::notify::{Format, Target};
use crate::{metrics::Metrics, recorder::Observed, vault::VaultCache};

mod message;
mod send;

pub use message::{signature, SIGNATURE_HEADER};
pub use send::connect;

/// Messages queued per target before new ones are dropped.
pub const QUEUE: usize = 1024;

/// The running notifier: one queue and sending task per target.
pub struct Notifier {
    queues: Vec<(Target, mpsc::Sender<message::Message>)>,
    metrics: Arc<Metrics>,
    /// The console's approvals page, linked from Slack messages.
    console: Option<String>,
}

impl Notifier {
    /// Starts a sending task per target (inside the current runtime);
    /// `console` is the console's approvals page URL, when there is one.
    pub fn start(
        targets: &[Target],
        vault: VaultCache,
        metrics: Arc<Metrics>,
        console: Option<String>,
    ) -> Arc<Notifier> {
        let vault = Arc::new(vault);
        let queues = targets
            .iter()
            .map(|t| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(send::run(t.clone(), vault.clone(), metrics.clone(), rx));
                (t.clone(), tx)
            })
            .collect();
        Arc::new(Notifier {
            queues,
            metrics,
            console,
        })
    }

    /// Queues a message for every target that chose this line's event.
    /// Never waits: a full queue drops the message (counted and logged).
    pub fn offer(&self, line: &Observed<'_>) {
        let name = line.event.name();
        for (target, tx) in &self.queues {
            if !target.events.iter().any(|e| e == name) {
                continue;
            }
            let msg = message::Message::new(target.format, line, self.console.as_deref());
            if tx.try_send(msg).is_err() {
                self.metrics.notification_dropped(&target.host);
                warn!(target = %target.host, event = name, "notification queue full; message dropped");
            }
        }
    }
}
