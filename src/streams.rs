//! Named random streams. Every random draw in pretext comes from a generator derived here from
//! a parent seed, the stream's purpose and an index, so two purposes never share or overlap a
//! stream (before, `mix(seed, 1000 + epoch)` met `mix(seed, 7)` after 993 epochs), and a
//! stream does not depend on which thread draws from it or in what order items are built.
//!
//! Streams nest: the seed of epoch 3's batch order is `derive(master, Stream::EpochOrder, 3)`;
//! a sampler batch derives its items' streams from its own seed with `Stream::Item`.

use rand::SeedableRng;
use rand::rngs::StdRng;

/// What a random stream is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// A model's parameter initialisation.
    Init,
    /// The dropout masks of one layer (index: the layer's position in its model).
    Dropout,
    /// The shuffled order of the training items in one epoch (index: the epoch).
    EpochOrder,
    /// The pretext batches of one training epoch (index: the epoch); batch `b` derives
    /// `Stream::Batch` from it.
    EpochBatches,
    /// One batch of an epoch (index: the batch).
    Batch,
    /// The fixed pretext batches that validate every epoch.
    Validation,
    /// One item of a batch (index: the item's position in the batch).
    Item,
    /// The exemplar task's negatives (index: the item).
    Negative,
    /// The CPC task's negative columns of one batch.
    CpcNegatives,
    /// Augmentation of one finetuning item (index: its position in the batch).
    Augment,
    /// A dataset's train/test split.
    Split,
    /// The nested label fractions of a training set.
    Subsets,
    /// A K-fold partition.
    Folds,
    /// A permutation set of the jigsaw task.
    Permutations,
    /// One case of a synthetic dataset (index: the case).
    SyntheticCase,
    /// Random tensors drawn by a script function.
    Script,
    /// The dropout masks of a pretext model's second and later classifier heads (index: the
    /// head's position).
    Head,
    /// One task of a joint pretraining: its batch order and sampling (index: the task's
    /// position in the list).
    Task,
}

impl Stream {
    /// The stream's name, which also keys its derivation.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Init => "init",
            Stream::Dropout => "dropout",
            Stream::EpochOrder => "epoch-order",
            Stream::EpochBatches => "epoch-batches",
            Stream::Batch => "batch",
            Stream::Validation => "validation",
            Stream::Item => "item",
            Stream::Negative => "negative",
            Stream::CpcNegatives => "cpc-negatives",
            Stream::Augment => "augment",
            Stream::Split => "split",
            Stream::Subsets => "subsets",
            Stream::Folds => "folds",
            Stream::Permutations => "permutations",
            Stream::SyntheticCase => "synthetic-case",
            Stream::Script => "script",
            Stream::Head => "head",
            Stream::Task => "task",
        }
    }

    /// FNV-1a of the name: a constant per purpose.
    fn tag(self) -> u64 {
        self.name().bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
        })
    }
}

/// The splitmix64 finaliser: a bijection that scatters neighbouring inputs.
fn scramble(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of stream `(purpose, index)` under `parent`.
pub fn derive(parent: u64, purpose: Stream, index: u64) -> u64 {
    scramble(scramble(scramble(parent) ^ purpose.tag()) ^ index)
}

/// A generator for stream `(purpose, index)` under `parent`.
pub fn rng(parent: u64, purpose: Stream, index: u64) -> StdRng {
    StdRng::seed_from_u64(derive(parent, purpose, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn streams_of_different_purposes_and_indices_do_not_collide() {
        let purposes = [
            Stream::Init,
            Stream::Dropout,
            Stream::EpochOrder,
            Stream::EpochBatches,
            Stream::Batch,
            Stream::Validation,
            Stream::Item,
            Stream::Negative,
            Stream::CpcNegatives,
            Stream::Augment,
            Stream::Split,
            Stream::Subsets,
            Stream::Folds,
            Stream::Permutations,
            Stream::SyntheticCase,
            Stream::Script,
            Stream::Head,
            Stream::Task,
        ];
        let mut seen = HashSet::new();
        for seed in 0..4 {
            for p in purposes {
                for i in 0..2000 {
                    assert!(seen.insert(derive(seed, p, i)), "{p:?} {seed} {i}");
                }
            }
        }
    }

    #[test]
    fn a_stream_depends_on_its_parent() {
        assert_ne!(
            derive(1, Stream::Item, 0),
            derive(2, Stream::Item, 0),
            "parents 1 and 2"
        );
        assert_eq!(derive(5, Stream::Item, 3), derive(5, Stream::Item, 3));
    }
}
