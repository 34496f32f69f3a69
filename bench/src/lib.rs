//! Shared setup for the Lanes benchmarks.
