//! Samplers: turn volumes (or images) into one batch of a pretext task's inputs and targets.
//! Items are built in parallel (rayon), each from its own generator seeded by `(seed, item)`,
//! so a batch is the same at any thread count.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rayon::prelude::*;

use super::patches::PatchGrid;
use super::permutations::PermutationSet;
use super::{CpcOptions, ExemplarOptions, Negatives, Task, TaskConfig, exemplar, rotation};
use crate::data::Dataset;
use crate::data::augment;
use crate::data::grid::{
    Block, CropGroup, Grid, assemble, assemble_blocks, assemble_crops, assemble_oriented,
};
use crate::streams::{self, Stream};
use crate::{Error, Result};

/// One batch of a pretext task. Patch tasks put every patch in `x`'s batch axis (the encoder is
/// shared across patches).
#[derive(Clone, Debug)]
pub struct Batch {
    /// Inputs `[M, C, ...]`: volumes (rotation), 27 or 9 patches per item in slot order
    /// (jigsaw), centre and query per item (RPL), anchors then positives then (dataset)
    /// negatives (exemplar), every patch of every item plus one zero patch (CPC).
    pub x: Tensor,
    /// Targets `[B]` (u32 classes; CPC: 1 positive, 0 negative); none for exemplar.
    pub y: Option<Tensor>,
    /// CPC: indices into `x` of each example's context patches `[E, L]`.
    pub context: Option<Tensor>,
    /// CPC: indices into `x` of each example's target patches `[E, K]`.
    pub targets: Option<Tensor>,
    /// Items in the batch.
    pub items: usize,
}

/// Builds batches of one task for grids of one size.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: TaskConfig,
    dims: [usize; 3],
    channels: usize,
    grid: Option<PatchGrid>,
    perms: Option<PermutationSet>,
}

fn item_rng(seed: u64, item: usize) -> StdRng {
    streams::rng(seed, Stream::Item, item as u64)
}

/// The `size` block of `g` at `origin`, with cells outside `g` reading as zero.
fn whole_crop(g: &Grid, origin: [isize; 3], size: [usize; 3]) -> Block {
    Block {
        origin,
        size,
        valid: g.dims.map(|d| 0..d as isize),
        reverse_depth: false,
    }
}

fn u32s(v: Vec<u32>, dims: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

impl Sampler {
    /// A sampler of `cfg.task` for grids of `channels` × `dims` (images: `dims[0] == 1`).
    pub fn new(cfg: &TaskConfig, channels: usize, dims: [usize; 3]) -> Result<Self> {
        let planar = dims[0] == 1;
        let (grid, perms) = match cfg.task {
            Task::Jigsaw | Task::Rpl => {
                let g = PatchGrid::new(dims, cfg.per_side(planar), cfg.jitter(planar))?;
                let perms = (cfg.task == Task::Jigsaw)
                    .then(|| {
                        PermutationSet::generate(
                            cfg.options.permutations,
                            g.count(planar),
                            cfg.options.permutation_kind,
                            cfg.options.permutation_seed,
                        )
                    })
                    .transpose()?;
                (Some(g), perms)
            }
            Task::Rotation => {
                let square = if planar {
                    dims[1] == dims[2]
                } else {
                    dims[0] == dims[1] && dims[1] == dims[2]
                };
                if !square {
                    return Err(Error::shape(
                        "rotation",
                        format!("rotation needs cubic volumes or square images, got {dims:?}"),
                    ));
                }
                (None, None)
            }
            Task::Exemplar | Task::Cpc => (None, None),
        };
        let s = Sampler {
            cfg: cfg.clone(),
            dims,
            channels,
            grid,
            perms,
        };
        if s.cfg.task == Task::Cpc {
            s.cpc_geometry()?;
        }
        Ok(s)
    }

    /// The task.
    pub fn task(&self) -> Task {
        self.cfg.task
    }

    /// The task and its settings.
    pub fn task_config(&self) -> &TaskConfig {
        &self.cfg
    }

    /// Whether the grids are 2D images.
    pub fn planar(&self) -> bool {
        self.dims[0] == 1
    }

    /// Classes of the task's classifier (1 for exemplar and CPC, which have no classifier).
    pub fn classes(&self) -> usize {
        let planar = self.planar();
        match self.cfg.task {
            Task::Rotation => {
                if planar {
                    rotation::CLASSES_2D
                } else {
                    rotation::CLASSES_3D
                }
            }
            Task::Jigsaw => self.perms.as_ref().map_or(0, PermutationSet::len),
            Task::Rpl => self.grid.map_or(0, |g| g.count(planar) - 1),
            Task::Exemplar | Task::Cpc => 1,
        }
    }

    /// Patches (or whole inputs) per item that the encoder sees.
    pub fn views(&self) -> usize {
        match self.cfg.task {
            Task::Rotation => 1,
            Task::Jigsaw => self.grid.map_or(1, |g| g.count(self.planar())),
            Task::Rpl => 2,
            Task::Exemplar => 3,
            Task::Cpc => {
                let n = self.cpc_geometry().map_or(0, |g| g.per_side);
                if self.planar() { n * n } else { n * n * n }
            }
        }
    }

    /// The spatial size of what the encoder sees (whole grid, or one patch).
    pub fn input_dims(&self) -> [usize; 3] {
        match self.cfg.task {
            Task::Rotation | Task::Exemplar => self.dims,
            Task::Jigsaw | Task::Rpl => self.grid.map_or(self.dims, |g| g.patch),
            Task::Cpc => self.cpc_geometry().map_or(self.dims, |g| g.patch),
        }
    }

    /// The permutation set (jigsaw).
    pub fn permutations(&self) -> Option<&PermutationSet> {
        self.perms.as_ref()
    }

    fn check(&self, g: &Grid, i: usize) -> Result<()> {
        if g.c != self.channels || g.dims != self.dims {
            return Err(Error::shape(
                "pretext sampler",
                format!(
                    "item {i} has {} x {:?}, the sampler expects {} x {:?}",
                    g.c, g.dims, self.channels, self.dims
                ),
            ));
        }
        Ok(())
    }

    fn load(&self, src: &dyn Dataset<Arc<Grid>>, ids: &[usize]) -> Result<Vec<Arc<Grid>>> {
        if ids.is_empty() {
            return Err(Error::arg("batch", "a batch needs at least one item"));
        }
        ids.par_iter()
            .map(|&i| {
                let g = src.get(i)?;
                self.check(&g, i)?;
                Ok(g)
            })
            .collect()
    }

    /// One batch from the items `ids` of `src`; `train` selects random (rather than centred)
    /// crops where the task distinguishes them; `seed` fixes every random choice.
    pub fn batch(
        &self,
        src: &dyn Dataset<Arc<Grid>>,
        ids: &[usize],
        seed: u64,
        train: bool,
    ) -> Result<Batch> {
        let mut grids = self.load(src, ids)?;
        if train && self.planar() && self.cfg.options.augment_2d {
            let flips = self.cfg.task != Task::Rotation;
            grids = grids
                .par_iter()
                .enumerate()
                .map(|(k, g)| {
                    let mut rng = streams::rng(seed, Stream::Augment, k as u64);
                    Arc::new(augment::zoom_flips_2d(g, flips, &mut rng))
                })
                .collect();
        }
        match self.cfg.task {
            Task::Rotation => self.rotation(&grids, seed),
            Task::Jigsaw => self.jigsaw(&grids, seed, train),
            Task::Rpl => self.rpl(&grids, seed),
            Task::Exemplar => self.exemplar(src, ids, &grids, seed),
            Task::Cpc => self.cpc(&grids, seed),
        }
    }

    fn rotation(&self, grids: &[Arc<Grid>], seed: u64) -> Result<Batch> {
        let classes = self.classes();
        let planar = self.planar();
        let labels: Vec<usize> = (0..grids.len())
            .map(|k| item_rng(seed, k).random_range(0..classes))
            .collect();
        let orient = |r: usize| {
            if planar {
                rotation::orientation_2d(r)
            } else {
                rotation::orientation_3d(r)
            }
        };
        // Each rotated item is written straight into the batch (cubic/square, so same shape).
        let items = grids
            .iter()
            .zip(&labels)
            .map(|(g, &r)| Ok((&**g, orient(r)?)))
            .collect::<Result<Vec<_>>>()?;
        let x = assemble_oriented(&items, planar)?;
        Ok(Batch {
            x,
            y: Some(u32s(
                labels.iter().map(|&r| r as u32).collect(),
                &[grids.len()],
            )?),
            context: None,
            targets: None,
            items: grids.len(),
        })
    }

    fn jigsaw(&self, grids: &[Arc<Grid>], seed: u64, train: bool) -> Result<Batch> {
        let (grid, perms) = (
            self.grid.expect("jigsaw grid"),
            self.perms.as_ref().expect("jigsaw permutations"),
        );
        let planar = self.planar();
        let tiles = grid.count(planar);
        // Per item: the permutation and every patch's origin, drawn in patch order.
        let plans: Vec<(usize, Vec<[isize; 3]>)> = (0..grids.len())
            .map(|k| {
                let mut rng = item_rng(seed, k);
                let label = rng.random_range(0..perms.len());
                (
                    label,
                    (0..tiles)
                        .map(|i| grid.origin(planar, i, train, &mut rng))
                        .collect(),
                )
            })
            .collect();
        // Slot t of item k holds patch perm[t], cropped straight into the batch; one group per
        // item and row of cells along axis 0, whose patches read the same planes.
        // Within a group, patches go in the order they lie in the grid.
        let rows = if planar { 1 } else { grid.per_side };
        let per_row = tiles / rows;
        let mut groups: Vec<CropGroup> = Vec::new();
        for (k, (label, origins)) in plans.iter().enumerate() {
            let mut slot_of = vec![0; tiles];
            for (t, &p) in perms.perms()[*label].iter().enumerate() {
                slot_of[p] = k * tiles + t;
            }
            for row in 0..rows {
                let crops = (row * per_row..(row + 1) * per_row)
                    .map(|p| (slot_of[p], origins[p].map(|v| v as usize)))
                    .collect();
                groups.push((&*grids[k], crops));
            }
        }
        let x = assemble_crops(
            &groups,
            grids.len() * tiles,
            self.channels,
            grid.patch,
            planar,
        )?;
        Ok(Batch {
            x,
            y: Some(u32s(
                plans.iter().map(|(l, _)| *l as u32).collect(),
                &[grids.len()],
            )?),
            context: None,
            targets: None,
            items: grids.len(),
        })
    }

    fn rpl(&self, grids: &[Arc<Grid>], seed: u64) -> Result<Batch> {
        let grid = self.grid.expect("rpl grid");
        let planar = self.planar();
        let count = grid.count(planar);
        let centre = count / 2;
        // Per item: the class, then the centre's and the query's origins. O draws random
        // offsets for training and validation alike.
        let plans: Vec<(u32, [[isize; 3]; 2])> = (0..grids.len())
            .map(|k| {
                let mut rng = item_rng(seed, k);
                let class = rng.random_range(0..count - 1);
                let query = if class < centre { class } else { class + 1 };
                let c = grid.origin(planar, centre, true, &mut rng);
                let q = grid.origin(planar, query, true, &mut rng);
                (class as u32, [c, q])
            })
            .collect();
        let blocks: Vec<(&Grid, Block)> = (0..grids.len() * 2)
            .map(|slot| {
                let g = &grids[slot / 2];
                (&**g, whole_crop(g, plans[slot / 2].1[slot % 2], grid.patch))
            })
            .collect();
        let x = assemble_blocks(&blocks, self.channels, grid.patch, [0; 3], planar)?;
        Ok(Batch {
            x,
            y: Some(u32s(
                plans.iter().map(|(c, _)| *c).collect(),
                &[grids.len()],
            )?),
            context: None,
            targets: None,
            items: grids.len(),
        })
    }

    fn exemplar(
        &self,
        src: &dyn Dataset<Arc<Grid>>,
        ids: &[usize],
        grids: &[Arc<Grid>],
        seed: u64,
    ) -> Result<Batch> {
        let opts: &ExemplarOptions = &self.cfg.options.exemplar;
        let planar = self.planar();
        let mut negatives = Vec::new();
        if opts.negatives == Negatives::Dataset {
            if src.len() < 2 {
                return Err(Error::arg(
                    "exemplar",
                    "dataset negatives need at least two items",
                ));
            }
            let negs: Vec<usize> = ids
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let mut rng = streams::rng(seed, Stream::Negative, k as u64);
                    let j = rng.random_range(0..src.len() - 1);
                    if j >= i { j + 1 } else { j }
                })
                .collect();
            negatives = self.load(src, &negs)?;
        }
        // Anchors (augmented), positives (as they are), then the min-max scaled negatives,
        // each written straight into the batch.
        let b = grids.len();
        let x = assemble(
            2 * b + negatives.len(),
            self.channels,
            self.dims,
            planar,
            |slot, dst| {
                if slot < b {
                    let mut rng = item_rng(seed, slot);
                    let anchor = if planar {
                        exemplar::augment_2d(&grids[slot], &mut rng)
                    } else {
                        exemplar::augment_3d(&grids[slot], &mut rng)
                    };
                    dst.copy_from_slice(&anchor.data);
                } else if slot < 2 * b {
                    dst.copy_from_slice(&grids[slot - b].data);
                } else {
                    negatives[slot - 2 * b].min_max_into(dst);
                }
                Ok(())
            },
        )?;
        Ok(Batch {
            x,
            y: None,
            context: None,
            targets: None,
            items: grids.len(),
        })
    }
}

/// The patch layout of CPC for one grid size.
#[derive(Clone, Copy, Debug)]
struct CpcGeometry {
    per_side: usize,
    /// Patch size per axis.
    patch: [usize; 3],
    /// Step between patch origins.
    step: [usize; 3],
    /// Each patch's random crop (then zero-padded back to `patch`).
    inner: [usize; 3],
    /// The volume-level random crop (3D only), zero-padded back to the volume size.
    outer: [usize; 3],
}

impl Sampler {
    fn cpc_geometry(&self) -> Result<CpcGeometry> {
        let o: &CpcOptions = &self.cfg.options.cpc;
        let planar = self.planar();
        let n = self.cfg.per_side(planar);
        let fit = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Error::arg(
                    "cpc",
                    format!("a {n}-per-side CPC grid does not fit size {:?}", self.dims),
                ))
            }
        };
        // Context rows 0-1 and target rows 2-3 (3D) or 3-4 (2D).
        fit(n >= if planar { 5 } else { 4 })?;
        let mut g = CpcGeometry {
            per_side: n,
            patch: [1; 3],
            step: [1; 3],
            inner: [1; 3],
            outer: self.dims,
        };
        for a in (if planar { 1 } else { 0 })..3 {
            let size = self.dims[a];
            if planar {
                // O 2D: patches of 2·(size/6) with 50 % overlap (224 → 74 px, step 37).
                g.step[a] = size / (n + 1);
                g.patch[a] = 2 * g.step[a];
                fit(g.step[a] > 0 && (n - 1) * g.step[a] + g.patch[a] <= size)?;
                g.inner[a] = (g.patch[a] as f64 * o.patch_crop_2d) as usize;
            } else {
                g.patch[a] = size / n;
                g.step[a] = g.patch[a];
                fit(g.patch[a] > 0)?;
                g.inner[a] = (g.patch[a] as f64 * o.patch_crop_3d) as usize;
                g.outer[a] = (size as f64 * o.volume_crop) as usize;
            }
            fit(g.inner[a] > 0)?;
        }
        Ok(g)
    }

    /// Where each patch of one item (axis 0 outermost) reads, augmented as O does: a crop of
    /// the (padded, 3D) volume, flipped in depth with probability 0.5 (3D), then a random
    /// `inner` crop zero-padded back (centred) to the patch size. Both crops and the flip are
    /// one block of the volume, placed at `(patch - inner) / 2` in a zero patch.
    fn cpc_blocks(&self, g: &Grid, geo: &CpcGeometry, rng: &mut StdRng) -> Vec<Block> {
        let planar = self.planar();
        // 3D: a random crop of the whole volume, zero-padded back (121³ in 128³: 3 before, 4
        // after). Patches read that padded volume through `shift` and `valid`, without making it.
        let (shift, valid): ([isize; 3], [std::ops::Range<isize>; 3]) = if planar {
            ([0; 3], g.dims.map(|d| 0..d as isize))
        } else {
            let origin: [isize; 3] =
                std::array::from_fn(|a| rng.random_range(0..=(g.dims[a] - geo.outer[a])) as isize);
            let before: [isize; 3] =
                std::array::from_fn(|a| ((g.dims[a] - geo.outer[a]) / 2) as isize);
            (
                std::array::from_fn(|a| origin[a] - before[a]),
                std::array::from_fn(|a| origin[a]..origin[a] + geo.outer[a] as isize),
            )
        };
        let n = geo.per_side;
        let depth = if planar { 1 } else { n };
        let mut out = Vec::with_capacity(depth * n * n);
        for i in 0..depth {
            for j in 0..n {
                for k in 0..n {
                    let cell = [i, j, k];
                    let origin: [isize; 3] = std::array::from_fn(|a| {
                        if planar && a == 0 {
                            0
                        } else {
                            (cell[a] * geo.step[a]) as isize + shift[a]
                        }
                    });
                    let flip = !planar && rng.random_bool(0.5);
                    let offset: [isize; 3] = std::array::from_fn(|a| {
                        rng.random_range(0..=(geo.patch[a] - geo.inner[a])) as isize
                    });
                    // The inner crop of the flipped patch starts `offset[0]` from the patch's
                    // far end in depth.
                    let start = |a: usize| {
                        if a == 0 && flip {
                            origin[0] + (geo.patch[0] - geo.inner[0]) as isize - offset[0]
                        } else {
                            origin[a] + offset[a]
                        }
                    };
                    out.push(Block {
                        origin: std::array::from_fn(start),
                        size: geo.inner,
                        valid: valid.clone(),
                        reverse_depth: flip,
                    });
                }
            }
        }
        out
    }

    fn cpc(&self, grids: &[Arc<Grid>], seed: u64) -> Result<Batch> {
        let geo = self.cpc_geometry()?;
        let planar = self.planar();
        let per_item = self.views();
        let blocks: Vec<Vec<Block>> = grids
            .par_iter()
            .enumerate()
            .map(|(k, g)| self.cpc_blocks(g, &geo, &mut item_rng(seed, k)))
            .collect();
        let zero = (grids.len() * per_item) as u32;
        let pad = std::array::from_fn(|a| (geo.patch[a] - geo.inner[a]) / 2);
        // Every patch, then one zero patch (an empty block), straight into the batch.
        let empty = whole_crop(&grids[0], [0; 3], [0; 3]);
        let mut patches: Vec<(&Grid, Block)> = blocks
            .into_iter()
            .enumerate()
            .flat_map(|(k, v)| v.into_iter().map(move |b| (&*grids[k], b)))
            .collect();
        patches.push((&grids[0], empty));
        let x = assemble_blocks(&patches, self.channels, geo.patch, pad, planar)?;
        let n = geo.per_side;
        let items = grids.len();
        let mut rng = streams::rng(seed, Stream::CpcNegatives, 0);
        let (mut ctx, mut tgt, mut ys) = (Vec::new(), Vec::new(), Vec::new());
        let columns: Vec<(usize, usize)> = if planar {
            (0..n).map(|c| (0, c)).collect()
        } else {
            (0..n).flat_map(|y| (0..n).map(move |z| (y, z))).collect()
        };
        let id = |b: usize, x: usize, y: usize, z: usize| -> u32 {
            if planar {
                (b * per_item + x * n + z) as u32
            } else {
                (b * per_item + (x * n + y) * n + z) as u32
            }
        };
        // Target rows: 3D rows 2 and 3 after a context row 0 and a bridge row 1; 2D rows 3 and 4
        // (row 2 skipped), as O's `preprocess_grid`.
        let rows: [usize; 2] = if planar { [3, 4] } else { [2, 3] };
        for b in 0..items {
            for &(y, z) in &columns {
                let mut c = Vec::new();
                if planar {
                    for dz in [-1isize, 0, 1] {
                        let zz = z as isize + dz;
                        c.push(if zz < 0 || zz >= n as isize {
                            zero
                        } else {
                            id(b, 0, 0, zz as usize)
                        });
                    }
                    c.push(id(b, 1, 0, z));
                } else {
                    let mirror = |v: isize| -> usize {
                        if v < 0 {
                            (-v) as usize
                        } else if v >= n as isize {
                            (2 * (n as isize - 1) - v) as usize
                        } else {
                            v as usize
                        }
                    };
                    for dy in [-1isize, 0, 1] {
                        for dz in [-1isize, 0, 1] {
                            c.push(id(b, 0, mirror(y as isize + dy), mirror(z as isize + dz)));
                        }
                    }
                    c.push(id(b, 1, y, z));
                }
                // Positive: this column's own targets.
                ctx.extend_from_slice(&c);
                tgt.extend(rows.iter().map(|&r| id(b, r, y, z)));
                ys.push(1u32);
                // Negative: the same context with another column's targets (any item).
                let (nb, (ny, nz)) = loop {
                    let nb = rng.random_range(0..items);
                    let col = *columns.choose(&mut rng).expect("columns");
                    if nb != b || col != (y, z) {
                        break (nb, col);
                    }
                    if items == 1 && columns.len() == 1 {
                        return Err(Error::arg("cpc", "negatives need a second column or item"));
                    }
                };
                ctx.extend_from_slice(&c);
                tgt.extend(rows.iter().map(|&r| id(nb, r, ny, nz)));
                ys.push(0u32);
            }
        }
        let examples = ys.len();
        let context_len = ctx.len() / examples;
        Ok(Batch {
            x,
            y: Some(u32s(ys, &[examples])?),
            context: Some(u32s(ctx, &[examples, context_len])?),
            targets: Some(u32s(tgt, &[examples, 2])?),
            items,
        })
    }
}
