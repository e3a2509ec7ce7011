//! The Rhai host: engine construction and one module per exposed domain.
