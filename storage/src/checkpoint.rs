//! The checkpoint engine: ByteCheckpoint's ideas on Lance.
//!
//! Tensor bytes live in per-rank chunk files; their index (one row per
//! chunk) and per-step metadata live in two Lance tables, so resharding is
//! planned from metadata alone and the index is queryable with SQL. Saving
//! blocks the caller only for a copy into a reused aligned buffer; the rest
//! (dedup planning, checksums, io_uring writes, the multi-rank atomic
//! commit) runs in the background. Loading maps any target layout (boxes or
//! flat FSDP ranges) onto stored chunks and reads only the verified blocks
//! it needs. `docs/checkpoint-format.md` specifies the format.

pub mod codec;
pub mod dtype;
pub mod io;
pub mod layout;
pub mod load;
pub mod meta;
pub mod plan;
pub mod safetensors;
pub mod save;
pub mod store;

pub use codec::Codec;
pub use dtype::DType;
pub use layout::Region;
pub use load::{Checkpoint, LoadOptions, LoadReport, Target, TensorInfo, VerifyReport};
pub use plan::{PlanError, ReadOp, plan_region};
pub use save::{RegionSpec, SaveHandle, SaveOptions, SaveReport, Saver, Shard, ShardSpec};
pub use store::{CkptRoot, CommittedStep, GcReport};

#[cfg(test)]
mod tests;
