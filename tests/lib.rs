//! Placeholder library target for the end-to-end test package; the tests live in `e2e/`.
