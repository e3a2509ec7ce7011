//! The options of the two prepared datasets (`pancreas(#{..})`, `fundus(#{..})` in scripts):
//! where the data is (a real folder, or the synthetic default generated once under the data
//! folder), where the cache goes, and how each case is preprocessed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::synthetic::{self, FundusConfig, PhantomConfig, fundus, pancreas};
use super::{FundusPreprocess, FundusSet, PancreasPreprocess, PancreasSet};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Where a dataset's files and cache live.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Folders {
    /// The dataset folder (Decathlon `Task07_Pancreas` or APTOS 2019); "" = the synthetic
    /// default.
    pub root: String,
    /// The data folder holding the synthetic default and the cache; "" = `PRETEXT_DATA` or
    /// `data/`.
    pub data: String,
    /// The cache folder; "" = `<data>/cache`.
    pub cache: String,
}

impl Folders {
    /// The data folder and the cache folder.
    fn resolve(&self) -> (PathBuf, PathBuf) {
        let home = if self.data.is_empty() {
            super::home()
        } else {
            PathBuf::from(&self.data)
        };
        let cache = if self.cache.is_empty() {
            home.join("cache")
        } else {
            PathBuf::from(&self.cache)
        };
        (home, cache)
    }
}

/// The options of the pancreas CT set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct PancreasOptions {
    /// Folders.
    #[serde(flatten)]
    pub folders: Folders,
    /// The preprocessing of every case (the original code's by default).
    #[serde(flatten)]
    pub preprocess: PancreasPreprocess,
    /// The synthetic default (when `root` is "").
    pub synthetic: PhantomConfig,
}

impl PancreasOptions {
    /// Opens (and on first use prepares) the set; generates the synthetic default first when
    /// no root is given.
    pub fn open(&self) -> Result<PancreasSet> {
        self.preprocess.validate()?;
        let (home, cache) = self.folders.resolve();
        let root = if self.folders.root.is_empty() {
            let cfg = &self.synthetic;
            cfg.validate()?;
            synthetic::ensure(&home, "pancreas", &cfg.key(), |dir| {
                let p = Progress::new((cfg.labelled + cfg.unlabelled) as u64, "synth pancreas");
                pancreas::write(cfg, dir, Some(&p)).inspect(|_| p.finish())
            })?
        } else {
            PathBuf::from(&self.folders.root)
        };
        PancreasSet::open(&root, &self.preprocess, &cache)
    }
}

/// The synthetic fundus photographs: `n` in APTOS's class balance, or `counts` per grade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FundusSynthOptions {
    /// Photographs in APTOS's class balance (500); ignored when `counts` is given.
    pub n: usize,
    /// Photographs per grade 0..4; () = `n` in APTOS's balance.
    pub counts: Option<[usize; 5]>,
    /// Width and height in pixels.
    pub size: usize,
    /// The seed; photograph `i` draws from its own stream derived from it.
    pub seed: u64,
}

impl Default for FundusSynthOptions {
    fn default() -> Self {
        let d = FundusConfig::default();
        FundusSynthOptions {
            n: d.n(),
            counts: None,
            size: d.size,
            seed: d.seed,
        }
    }
}

impl FundusSynthOptions {
    /// The generator's configuration, checked.
    pub fn config(&self) -> Result<FundusConfig> {
        let cfg = match self.counts {
            Some(counts) => FundusConfig {
                counts,
                size: self.size,
                seed: self.seed,
            },
            None => FundusConfig::aptos(self.n, self.size, self.seed),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The options of the fundus photograph set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct FundusOptions {
    /// Folders.
    #[serde(flatten)]
    pub folders: Folders,
    /// The preprocessing of every photograph (the original code's by default).
    #[serde(flatten)]
    pub preprocess: FundusPreprocess,
    /// The synthetic default (when `root` is "").
    pub synthetic: FundusSynthOptions,
}

impl FundusOptions {
    /// Opens (and on first use prepares) the set; generates the synthetic default first when
    /// no root is given.
    pub fn open(&self) -> Result<FundusSet> {
        if self.preprocess.size == 0 {
            return Err(Error::arg("size", "expected a positive image size"));
        }
        let (home, cache) = self.folders.resolve();
        let root = if self.folders.root.is_empty() {
            let cfg = self.synthetic.config()?;
            synthetic::ensure(&home, "fundus", &cfg.key(), |dir| {
                let p = Progress::new(cfg.n() as u64, "synth fundus");
                fundus::write(&cfg, dir, Some(&p)).inspect(|_| p.finish())
            })?
        } else {
            PathBuf::from(&self.folders.root)
        };
        FundusSet::open(&root, &self.preprocess, &cache)
    }
}
