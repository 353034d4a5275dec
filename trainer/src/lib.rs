//! granary-trainer: the dataloader and the DiT trainer. Empty until the
//! trainer issues land; it exists now so the dependency direction
//! `sdk → trainer → query → storage` is fixed from the first commit.
//!
//! Architecture invariant: the trainer never sees Lance or DataFusion types
//! and never touches files except through granary-storage.

/// Re-export so the facade reaches the query layer through the trainer's view of it.
pub use granary_query as query;
