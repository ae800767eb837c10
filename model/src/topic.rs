//! Topic names on the bus. One prefix (default `floodcmd`) namespaces a deployment, so a
//! replay can run through the same code on its own topics.

/// The topics floodcmd uses, under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics::new("floodcmd")
    }
}

impl Topics {
    /// Topics named `<prefix>.readings` and so on.
    pub fn new(prefix: impl Into<String>) -> Self {
        Topics {
            prefix: prefix.into(),
        }
    }
    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    fn name(&self, leaf: &str) -> String {
        format!("{}.{}", self.prefix, leaf)
    }
    /// Validated readings, keyed by sensor id.
    pub fn readings(&self) -> String {
        self.name("readings")
    }
    /// Dead letters: rejected input with the original bytes and a reason.
    pub fn rejects(&self) -> String {
        self.name("rejects")
    }
    /// Per-point status deltas from the stream stage, keyed by point id.
    pub fn status(&self) -> String {
        self.name("status")
    }
    /// Alert transitions from the stream stage, keyed by point id.
    pub fn alerts(&self) -> String {
        self.name("alerts")
    }
    /// Operator actions (acknowledge, check in, closure steps, notes), keyed by incident id.
    pub fn actions(&self) -> String {
        self.name("actions")
    }
    /// The notification outbox, keyed by idempotency key.
    pub fn notifications(&self) -> String {
        self.name("notifications")
    }
    /// Incident state as the alerts stage sees it, keyed by incident id (latest wins).
    pub fn incidents(&self) -> String {
        self.name("incidents")
    }
    /// The sender's claims and results per outbox message, keyed by idempotency key.
    pub fn deliveries(&self) -> String {
        self.name("deliveries")
    }
    /// Drill notifications: captured here, never read by a sender.
    pub fn drill(&self) -> String {
        self.name("drill")
    }
    /// Every topic, for creating them at start-up.
    pub fn all(&self) -> Vec<String> {
        vec![
            self.readings(),
            self.rejects(),
            self.status(),
            self.alerts(),
            self.actions(),
            self.notifications(),
            self.incidents(),
            self.deliveries(),
            self.drill(),
        ]
    }
}
