"""Storage backends behind one interface (sidecar.store.base.Store)."""
