//! What each component of a process says about itself, for `/health`.
//!
//! A process runs several components (drivers, the clock, the API's read model, host agents) on
//! their own threads. Each reports its state here as it changes; the API's `/health` answers from
//! the whole board, so it is not ok while any component is starting, degraded or failed, and it
//! names the part that is not. A component reports by name; the board keeps the latest state of
//! each and when it began.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a component is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentState {
    /// Not serving yet (rebuilding its state, waiting for the log).
    Starting(String),
    /// Doing its work.
    Ok,
    /// Running, but not doing its work (the log is unreadable, a retry loop): the reason.
    Degraded(String),
    /// Stopped by an error it cannot recover from: the error.
    Failed(String),
}

impl ComponentState {
    /// `starting`, `ok`, `degraded` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            ComponentState::Starting(_) => "starting",
            ComponentState::Ok => "ok",
            ComponentState::Degraded(_) => "degraded",
            ComponentState::Failed(_) => "failed",
        }
    }

    /// Why the component is not ok, if it is not.
    pub fn detail(&self) -> Option<&str> {
        match self {
            ComponentState::Ok => None,
            ComponentState::Starting(detail) | ComponentState::Degraded(detail) | ComponentState::Failed(detail) => {
                Some(detail)
            }
        }
    }
}

/// One component's latest report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentReport {
    pub component: String,
    pub state: ComponentState,
    /// How long the component has been in this state.
    pub for_duration: Duration,
}

/// The board every component of a process reports to. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, (ComponentState, Instant)>>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Records `component`'s state; the time it began changes only when the state does.
    pub fn set(&self, component: &str, state: ComponentState) {
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        match components.get_mut(component) {
            Some((current, _)) if *current == state => {}
            _ => {
                components.insert(component.to_owned(), (state, Instant::now()));
            }
        }
    }

    /// Every component's latest report, by name.
    pub fn report(&self) -> Vec<ComponentReport> {
        let components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        components
            .iter()
            .map(|(component, (state, since))| ComponentReport {
                component: component.clone(),
                state: state.clone(),
                for_duration: since.elapsed(),
            })
            .collect()
    }

    /// True when every component reported is ok.
    pub fn all_ok(&self) -> bool {
        self.report().iter().all(|report| report.state == ComponentState::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_is_ok_only_when_every_component_is() {
        let health = Health::new();
        assert!(health.all_ok());
        health.set("allocator", ComponentState::Starting("rebuilding".into()));
        health.set("api", ComponentState::Ok);
        assert!(!health.all_ok());
        health.set("allocator", ComponentState::Ok);
        assert!(health.all_ok());
        health.set("api", ComponentState::Degraded("the log is unreadable".into()));
        let report = health.report();
        assert_eq!(report[1].component, "api");
        assert_eq!(report[1].state.name(), "degraded");
        assert_eq!(report[1].state.detail(), Some("the log is unreadable"));
        assert!(!health.all_ok());
    }
}
