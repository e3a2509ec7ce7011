//! Experiments: the cells of data-efficiency sweeps and their shards, the append-only results
//! store (resume after a kill, merge shards, CSV export), the statistics and their report, and
//! the figures, and a run folder's report.

pub mod cells;
pub mod plot;
pub mod report;
pub mod results;
pub mod stats;
pub mod summary;

pub use cells::{Cell, Shard, cells};
pub use plot::{CurvePlot, PaperFigure};
pub use results::{ResultRow, ResultsFile, config_hash, merge, merge_with, read_rows};
