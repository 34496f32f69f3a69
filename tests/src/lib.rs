//! End-to-end tests of Lanes live in `tests/`; this library holds their shared helpers.
