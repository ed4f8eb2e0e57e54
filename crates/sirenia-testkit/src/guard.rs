//! A store that owns a clean-up guard: a temporary directory, a throwaway schema.

use std::sync::Arc;

use sirenia_core::{EventStore, StoreWrapper};

/// `store`, keeping `guard` alive as long as any clone lives. The store is dropped before the
/// guard, so a guard that deletes files or schemas runs after the store has closed them.
pub struct Guarded<S, G> {
    store: S,
    guard: Arc<G>,
}

impl<S: Clone, G> Clone for Guarded<S, G> {
    fn clone(&self) -> Self {
        Guarded {
            store: self.store.clone(),
            guard: self.guard.clone(),
        }
    }
}

impl<S, G> Guarded<S, G> {
    /// Wraps `store` with `guard`.
    pub fn new(store: S, guard: G) -> Self {
        Guarded {
            store,
            guard: Arc::new(guard),
        }
    }

    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The guard.
    pub fn guard(&self) -> &G {
        &self.guard
    }
}

/// Forwards the whole port (and the admin port, and the capabilities) to the wrapped store.
impl<S: EventStore, G: Send + Sync + 'static> StoreWrapper for Guarded<S, G> {
    type Inner = S;

    fn inner(&self) -> &S {
        &self.store
    }
}
