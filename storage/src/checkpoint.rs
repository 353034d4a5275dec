//! The checkpoint engine (issue 3, in progress). What is here so far: the
//! resharding planner, which maps any target shard layout onto stored
//! chunks from metadata alone (global shapes and chunk regions), without
//! reading tensor bytes. Save/load, the Lance index table and the commit
//! protocol build on it.

pub mod layout;
pub mod plan;

pub use layout::Region;
pub use plan::{PlanError, ReadOp, plan_region};
