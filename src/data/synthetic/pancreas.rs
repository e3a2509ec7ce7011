//! CT-like abdomen phantoms with a pancreas and, in a share of cases, a tumour, written as a
//! Medical Segmentation Decathlon folder (Task07_Pancreas layout).
//!
//! Each case is an axial stack (x: patient right to left, y: anterior to posterior, z: inferior
//! to superior; affine `diag(-sx, -sy, sz)` as CT converted from DICOM) of layered organs with
//! soft (partial-volume) edges and contrast-enhanced HU values: fat, abdominal wall, spine with
//! discs, kidneys, liver, gallbladder, spleen, stomach with an air pocket, bowel loops, duodenum,
//! aorta, IVC, SMA/SMV, the splenic vein running behind the pancreas, the pancreas itself (a
//! lobulated, curved tube from head to tail with an uncinate process) and the tumour: a small
//! hypodense ellipsoid 20–45 HU below the pancreas. Anatomy (sizes, positions, enhancement,
//! body habitus, patient shift and rotation) varies per case; correlated noise and a smooth
//! intensity bias are added and the result is stored as int16 HU. Labels: 0 background,
//! 1 pancreas, 2 tumour (uint8).

use std::path::Path;

use rand::RngExt;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::item_rng;
use super::noise::ValueNoise;
use crate::data::{Volume, VoxelType, resize::gaussian3d};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomConfig {
    /// Labelled cases (`imagesTr` + `labelsTr`).
    pub labelled: usize,
    /// Unlabelled cases (`imagesTs`).
    pub unlabelled: usize,
    /// Voxels per case [x, y, z]; the field of view is fixed (420 × 420 × 200 mm), so the
    /// spacing follows from the shape.
    pub shape: [usize; 3],
    /// The seed; case `i` draws from its own stream derived from it.
    pub seed: u64,
    /// The share of cases with a tumour (0..1).
    pub tumour_share: f64,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        PhantomConfig {
            labelled: 24,
            unlabelled: 12,
            shape: [128, 128, 64],
            seed: 0,
            tumour_share: 0.7,
        }
    }
}

/// Field of view in mm along x, y, z.
const FOV: [f64; 3] = [420.0, 420.0, 200.0];

impl PhantomConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.shape.iter().any(|&s| s < 8) {
            return Err(Error::arg(
                "shape",
                format!("each phantom size must be at least 8, got {:?}", self.shape),
            ));
        }
        if self.labelled + self.unlabelled == 0 {
            return Err(Error::arg("n", "at least one case is needed"));
        }
        // A phantom holds a few arrays of its shape (HU values, labels, noise): about 32 bytes
        // a voxel.
        crate::memory::check_shape(&self.shape, 32, "shape")?;
        if !(0.0..=1.0).contains(&self.tumour_share) {
            return Err(Error::arg(
                "tumour_share",
                format!("expected a share in [0, 1], got {}", self.tumour_share),
            ));
        }
        Ok(())
    }

    /// Voxel size in mm.
    pub fn spacing(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| FOV[a] / self.shape[a] as f64)
    }

    /// A short hash of the configuration (names the embedded default's folder).
    pub fn key(&self) -> String {
        crate::data::key(&format!(
            "pancreas-v1 {}",
            serde_json::to_string(self).unwrap_or_default()
        ))
    }

    /// The file id of case `i` (labelled cases first).
    pub fn case_id(&self, i: usize) -> String {
        format!("case_{i:03}")
    }
}

/// One generated case.
pub struct Phantom {
    /// HU values, C order [x][y][z].
    pub hu: Vec<f32>,
    /// Labels 0/1/2, C order.
    pub label: Vec<u8>,
    /// Voxels per axis.
    pub shape: [usize; 3],
    /// Voxel size in mm.
    pub spacing: [f64; 3],
    /// Whether a tumour was placed.
    pub tumour: bool,
}

type V3 = [f32; 3];

#[derive(Clone)]
enum Geom {
    Ellipsoid {
        c: V3,
        r: V3,
    },
    /// An elliptic cylinder along z from `z[0]` to `z[1]`.
    Cylinder {
        c: [f32; 2],
        r: [f32; 2],
        z: [f32; 2],
    },
    /// Round cones between consecutive points.
    Tube {
        p: Vec<V3>,
        r: Vec<f32>,
    },
    Slab {
        lo: V3,
        hi: V3,
    },
}

fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: V3, b: V3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: V3) -> f32 {
    dot(a, a).sqrt()
}

/// Approximate signed distance of an ellipse/ellipsoid (`q` relative to its centre).
fn ellipsoid_sd(q: &[f32], r: &[f32]) -> f32 {
    let k0 = q
        .iter()
        .zip(r)
        .map(|(q, r)| (q / r).powi(2))
        .sum::<f32>()
        .sqrt();
    let k1 = q
        .iter()
        .zip(r)
        .map(|(q, r)| (q / (r * r)).powi(2))
        .sum::<f32>()
        .sqrt();
    if k1 > 1e-9 {
        k0 * (k0 - 1.0) / k1
    } else {
        -r.iter().copied().fold(f32::INFINITY, f32::min)
    }
}

impl Geom {
    fn sd(&self, p: V3) -> f32 {
        match self {
            Geom::Ellipsoid { c, r } => ellipsoid_sd(&sub(p, *c), r),
            Geom::Cylinder { c, r, z } => {
                let d2 = ellipsoid_sd(&[p[0] - c[0], p[1] - c[1]], r);
                d2.max(z[0] - p[2]).max(p[2] - z[1])
            }
            Geom::Tube { p: pts, r } => pts
                .windows(2)
                .zip(r.windows(2))
                .map(|(s, rr)| {
                    let ab = sub(s[1], s[0]);
                    let t = (dot(sub(p, s[0]), ab) / dot(ab, ab).max(1e-9)).clamp(0.0, 1.0);
                    let q = [
                        s[0][0] + t * ab[0],
                        s[0][1] + t * ab[1],
                        s[0][2] + t * ab[2],
                    ];
                    norm(sub(p, q)) - (rr[0] + t * (rr[1] - rr[0]))
                })
                .fold(f32::INFINITY, f32::min),
            Geom::Slab { lo, hi } => (0..3)
                .map(|a| (lo[a] - p[a]).max(p[a] - hi[a]))
                .fold(f32::NEG_INFINITY, f32::max),
        }
    }

    /// A box containing the shape, grown by `m` mm.
    fn bounds(&self, m: f32) -> (V3, V3) {
        let (lo, hi) = match self {
            Geom::Ellipsoid { c, r } => (sub(*c, *r), [c[0] + r[0], c[1] + r[1], c[2] + r[2]]),
            Geom::Cylinder { c, r, z } => (
                [c[0] - r[0], c[1] - r[1], z[0]],
                [c[0] + r[0], c[1] + r[1], z[1]],
            ),
            Geom::Tube { p, r } => {
                let rm = r.iter().copied().fold(0.0, f32::max);
                let mut lo = [f32::INFINITY; 3];
                let mut hi = [f32::NEG_INFINITY; 3];
                for q in p {
                    for a in 0..3 {
                        lo[a] = lo[a].min(q[a] - rm);
                        hi[a] = hi[a].max(q[a] + rm);
                    }
                }
                (lo, hi)
            }
            Geom::Slab { lo, hi } => (*lo, *hi),
        };
        (lo.map(|v| v - m), hi.map(|v| v + m))
    }
}

/// One painted structure.
struct Layer {
    geom: Geom,
    hu: f32,
    /// Amplitude in HU of the smooth texture.
    texture: f32,
    /// The label voxels get where this layer covers more than half of them.
    label: u8,
    /// Only inside this shape (organs stay inside the abdominal cavity).
    clip: Option<Geom>,
    /// Lobulation: the surface moves by up to this many mm.
    wobble: f32,
    /// Placed in scanner coordinates (the table), not moved with the patient.
    fixed: bool,
    lo: V3,
    hi: V3,
}

impl Layer {
    /// Lobulates the surface by up to `mm`.
    fn wobble(&mut self, mm: f32) {
        self.wobble = mm;
        self.lo = self.lo.map(|v| v - mm);
        self.hi = self.hi.map(|v| v + mm);
    }
}

/// Collects layers in painting order.
struct Painter {
    layers: Vec<Layer>,
    margin: f32,
}

impl Painter {
    fn add(
        &mut self,
        geom: Geom,
        hu: f32,
        texture: f32,
        label: u8,
        clip: Option<&Geom>,
    ) -> &mut Layer {
        let (lo, hi) = geom.bounds(self.margin);
        self.layers.push(Layer {
            geom,
            hu,
            texture,
            label,
            clip: clip.cloned(),
            wobble: 0.0,
            fixed: false,
            lo,
            hi,
        });
        self.layers.last_mut().expect("just pushed")
    }
}

struct Anatomy {
    layers: Vec<Layer>,
    texture: ValueNoise,
    wobble: ValueNoise,
    bias: ValueNoise,
    tumour: bool,
}

fn u(rng: &mut StdRng, lo: f32, hi: f32) -> f32 {
    rng.random_range(lo..hi)
}

/// Catmull-Rom points through `ctrl` (each segment split into `k` steps) with radii.
fn spline(ctrl: &[(V3, f32)], k: usize) -> (Vec<V3>, Vec<f32>) {
    let n = ctrl.len();
    let at = |i: isize| ctrl[i.clamp(0, n as isize - 1) as usize];
    let mut pts = Vec::new();
    let mut rad = Vec::new();
    for i in 0..n as isize - 1 {
        let (p0, p1, p2, p3) = (at(i - 1), at(i), at(i + 1), at(i + 2));
        for s in 0..k {
            let t = s as f32 / k as f32;
            let (t2, t3) = (t * t, t * t * t);
            let f = |a: f32, b: f32, c: f32, d: f32| {
                0.5 * (2.0 * b
                    + (-a + c) * t
                    + (2.0 * a - 5.0 * b + 4.0 * c - d) * t2
                    + (-a + 3.0 * b - 3.0 * c + d) * t3)
            };
            pts.push([0, 1, 2].map(|a| f(p0.0[a], p1.0[a], p2.0[a], p3.0[a])));
            rad.push(p1.1 + (p2.1 - p1.1) * t);
        }
    }
    let last = ctrl[n - 1];
    pts.push(last.0);
    rad.push(last.1);
    (pts, rad)
}

impl Anatomy {
    fn new(rng: &mut StdRng, tumour_share: f64, edge: f32) -> Anatomy {
        let mut b = Painter {
            layers: Vec::new(),
            margin: edge + 3.0,
        };
        let ell = |c: V3, r: V3| Geom::Ellipsoid { c, r };
        let cyl = |c: [f32; 2], r: [f32; 2]| Geom::Cylinder {
            c,
            r,
            z: [-1000.0, 1000.0],
        };
        let (ax, ay) = (u(rng, 140.0, 178.0), u(rng, 100.0, 128.0));
        let (tf, tm) = (u(rng, 8.0, 30.0), u(rng, 7.0, 12.0));
        // Table under the patient, body with subcutaneous fat, muscle wall, cavity.
        b.add(
            Geom::Slab {
                lo: [-200.0, ay + 14.0, -1000.0],
                hi: [200.0, ay + 24.0, 1000.0],
            },
            u(rng, 100.0, 250.0),
            0.0,
            0,
            None,
        )
        .fixed = true;
        b.add(
            ell([0.0; 3], [ax, ay, 600.0]),
            u(rng, -115.0, -85.0),
            8.0,
            0,
            None,
        );
        let wall = ell([0.0; 3], [ax - tf, ay - tf, 600.0]);
        b.add(wall.clone(), u(rng, 40.0, 60.0), 6.0, 0, None);
        let cavity = ell([0.0, -6.0, 0.0], [ax - tf - tm, ay - tf - tm - 6.0, 600.0]);
        b.add(cavity.clone(), u(rng, -100.0, -75.0), 10.0, 0, None);
        let cav = Some(&cavity);

        // Spine: posterior elements, paraspinal muscles, psoas, vertebral bodies with discs.
        let ys = ay - tf - 52.0;
        for s in [-1.0, 1.0] {
            b.add(
                cyl([s * 32.0, ys + 40.0], [24.0, 19.0]),
                50.0,
                6.0,
                0,
                Some(&wall),
            );
            b.add(
                ell(
                    [s * u(rng, 27.0, 34.0), ys - 4.0, -110.0],
                    [16.0, 15.0, 165.0],
                ),
                u(rng, 45.0, 60.0),
                6.0,
                0,
                None,
            );
        }
        b.add(cyl([0.0, ys + 27.0], [14.0, 13.0]), 650.0, 40.0, 0, None);
        b.add(cyl([0.0, ys + 27.0], [8.0, 7.0]), 15.0, 4.0, 0, None);
        b.add(
            cyl([0.0, ys + 44.0], [4.0, 12.0]),
            600.0,
            40.0,
            0,
            Some(&wall),
        );
        let bone = u(rng, 650.0, 900.0);
        b.add(cyl([0.0, ys], [19.0, 16.0]), bone, 30.0, 0, None);
        b.add(
            cyl([0.0, ys], [16.5, 13.5]),
            u(rng, 180.0, 280.0),
            30.0,
            0,
            None,
        );
        let phase = u(rng, 0.0, 32.0);
        for d in -4..=4 {
            let z = phase + 32.0 * d as f32;
            b.add(
                Geom::Cylinder {
                    c: [0.0, ys],
                    r: [19.0, 16.0],
                    z: [z - 4.0, z + 4.0],
                },
                85.0,
                5.0,
                0,
                None,
            );
        }

        // Liver, gallbladder, spleen.
        let organ_hu = u(rng, 90.0, 120.0);
        b.add(
            ell(
                [u(rng, -95.0, -80.0), u(rng, -10.0, 5.0), u(rng, 55.0, 85.0)],
                [
                    u(rng, 60.0, 72.0),
                    u(rng, 85.0, 100.0),
                    u(rng, 100.0, 120.0),
                ],
            ),
            organ_hu,
            8.0,
            0,
            cav,
        )
        .wobble(u(rng, 5.0, 9.0));
        if rng.random::<f64>() < 0.7 {
            b.add(
                ell(
                    [
                        u(rng, -58.0, -42.0),
                        u(rng, -48.0, -32.0),
                        u(rng, -10.0, 10.0),
                    ],
                    [u(rng, 11.0, 17.0), u(rng, 15.0, 22.0), u(rng, 18.0, 30.0)],
                ),
                u(rng, 5.0, 20.0),
                3.0,
                0,
                cav,
            );
        }
        b.add(
            ell(
                [u(rng, 82.0, 98.0), u(rng, 25.0, 42.0), u(rng, 40.0, 70.0)],
                [u(rng, 24.0, 32.0), u(rng, 38.0, 50.0), u(rng, 40.0, 58.0)],
            ),
            organ_hu + u(rng, 0.0, 15.0),
            8.0,
            0,
            cav,
        )
        .wobble(u(rng, 3.0, 5.0));

        // Kidneys (cortex, medulla, sinus fat), left one higher.
        let enh = u(rng, 0.8, 1.25);
        for s in [-1.0f32, 1.0] {
            let c = [
                s * u(rng, 62.0, 78.0),
                ys - u(rng, 0.0, 8.0),
                u(rng, -40.0, -5.0) + if s > 0.0 { 10.0 } else { 0.0 },
            ];
            let r = [u(rng, 21.0, 27.0), u(rng, 26.0, 33.0), u(rng, 42.0, 58.0)];
            b.add(ell(c, r), 160.0 * enh, 8.0, 0, cav);
            b.add(ell(c, r.map(|v| v * 0.62)), 105.0 * enh, 8.0, 0, cav);
            b.add(
                ell([c[0] - s * 10.0, c[1] - 4.0, c[2]], r.map(|v| v * 0.28)),
                -60.0,
                6.0,
                0,
                cav,
            );
        }

        // Stomach (wall, content, air pocket in front).
        let sc = [u(rng, 35.0, 55.0), u(rng, -55.0, -38.0), u(rng, 45.0, 70.0)];
        let sr = [u(rng, 35.0, 50.0), u(rng, 28.0, 40.0), u(rng, 35.0, 50.0)];
        b.add(ell(sc, sr), 60.0, 6.0, 0, cav);
        let content = ell(sc, sr.map(|v| v - 4.0));
        b.add(content.clone(), u(rng, 5.0, 30.0), 5.0, 0, cav);
        b.add(
            ell(
                [sc[0], sc[1] - sr[1] * 0.75, sc[2]],
                [sr[0] * 0.8, sr[1] * 0.45, sr[2] * 0.8],
            ),
            -1000.0,
            0.0,
            0,
            Some(&content),
        );

        // Bowel loops in the lower and anterior abdomen.
        for _ in 0..rng.random_range(6..13) {
            let c = [
                u(rng, -95.0, 95.0),
                u(rng, -85.0, 10.0),
                u(rng, -100.0, 25.0),
            ];
            let r = [u(rng, 10.0, 20.0), u(rng, 10.0, 20.0), u(rng, 15.0, 40.0)];
            let fill = match rng.random::<f64>() {
                x if x < 0.3 => -950.0,
                x if x < 0.45 => u(rng, 200.0, 350.0),
                _ => u(rng, 0.0, 30.0),
            };
            b.add(ell(c, r), 55.0, 6.0, 0, cav);
            b.add(ell(c, r.map(|v| v - 3.0)), fill, 4.0, 0, cav);
        }

        // Pancreas centreline: head (right, inferior), neck, body, tail (left, superior).
        let zc = u(rng, -15.0, 20.0);
        let (dx, dy) = (u(rng, -6.0, 6.0), u(rng, -6.0, 6.0));
        let j = |rng: &mut StdRng, s: f32| u(rng, -s, s);
        let head_r = u(rng, 13.0, 17.0);
        let ctrl: Vec<(V3, f32)> = vec![
            (
                [
                    -38.0 + dx + j(rng, 5.0),
                    ys - 48.0 + dy + j(rng, 5.0),
                    zc - 12.0,
                ],
                head_r,
            ),
            (
                [-12.0 + dx + j(rng, 4.0), ys - 68.0 + dy + j(rng, 5.0), zc],
                u(rng, 8.0, 11.0),
            ),
            (
                [
                    22.0 + dx + j(rng, 6.0),
                    ys - 64.0 + dy + j(rng, 6.0),
                    zc + 6.0,
                ],
                u(rng, 9.0, 12.0),
            ),
            (
                [
                    56.0 + dx + j(rng, 6.0),
                    ys - 44.0 + dy + j(rng, 6.0),
                    zc + 14.0,
                ],
                u(rng, 7.5, 10.0),
            ),
            (
                [
                    78.0 + dx + j(rng, 6.0),
                    ys - 22.0 + dy + j(rng, 6.0),
                    zc + 19.0,
                ],
                u(rng, 5.0, 7.0),
            ),
        ];
        let (pts, rad) = spline(&ctrl, 8);
        let head = ctrl[0].0;

        // Duodenum: a C-loop around the head.
        let duo = vec![
            [head[0] + 4.0, head[1] - 22.0, head[2] + 22.0],
            [head[0] - head_r - 8.0, head[1] - 6.0, head[2] + 6.0],
            [head[0] - head_r - 8.0, head[1] + 4.0, head[2] - 16.0],
            [head[0] + 6.0, head[1] + 12.0, head[2] - 30.0],
        ];
        let duo_fill = if rng.random::<f64>() < 0.3 {
            -950.0
        } else {
            u(rng, 5.0, 30.0)
        };
        b.add(
            Geom::Tube {
                p: duo.clone(),
                r: vec![9.0; 4],
            },
            55.0,
            5.0,
            0,
            cav,
        );
        b.add(
            Geom::Tube {
                p: duo,
                r: vec![6.0; 4],
            },
            duo_fill,
            3.0,
            0,
            cav,
        );

        // Vessels: IVC, aorta, SMA and SMV.
        let art = u(rng, 150.0, 260.0);
        b.add(
            cyl([-22.0, ys - 30.0], [12.0, 9.0]),
            u(rng, 110.0, 160.0),
            5.0,
            0,
            None,
        );
        b.add(cyl([6.0, ys - 32.0], [11.0, 11.0]), art, 5.0, 0, None);
        let neck = ctrl[1].0;
        b.add(
            Geom::Tube {
                p: vec![
                    [6.0, ys - 38.0, zc + 12.0],
                    [neck[0] + 12.0, ys - 50.0, zc - 6.0],
                    [neck[0] + 10.0, ys - 58.0, -110.0],
                ],
                r: vec![4.0; 3],
            },
            art,
            3.0,
            0,
            None,
        );
        let vein = u(rng, 120.0, 170.0);
        b.add(
            Geom::Tube {
                p: vec![
                    [neck[0] - 2.0, neck[1] + 12.0, zc + 4.0],
                    [neck[0] - 4.0, ys - 60.0, -110.0],
                ],
                r: vec![5.0; 2],
            },
            vein,
            3.0,
            0,
            None,
        );

        // The pancreas, lobulated, with its uncinate process.
        let panc_hu = u(rng, 85.0, 120.0);
        let wobble = u(rng, 1.5, 3.5);
        for geom in [
            Geom::Tube {
                p: pts.clone(),
                r: rad.clone(),
            },
            ell(
                [head[0] + 4.0, head[1] + 4.0, head[2] - 14.0],
                [head_r * 0.8, head_r * 0.75, head_r * 0.9],
            ),
        ] {
            b.add(geom, panc_hu, 9.0, 1, cav).wobble(wobble);
        }

        // The splenic vein along the back of the body and tail.
        let k0 = pts.len() / 4;
        let sv: Vec<V3> = pts[k0..]
            .iter()
            .zip(&rad[k0..])
            .map(|(p, r)| [p[0], p[1] + r + 4.5, p[2] + 1.0])
            .collect();
        let n = sv.len();
        b.add(
            Geom::Tube {
                p: sv,
                r: vec![4.0; n],
            },
            vein,
            3.0,
            0,
            None,
        );

        // The tumour: small, hypodense, mostly in the head.
        let tumour = rng.random::<f64>() < tumour_share;
        if tumour {
            let t = if rng.random::<f64>() < 0.6 {
                rng.random_range(0..pts.len() / 4 + 1)
            } else {
                rng.random_range(0..pts.len())
            };
            let s = u(rng, 4.0, 11.0);
            let r = [0, 1, 2].map(|_| s * u(rng, 0.75, 1.25));
            let c = [0, 1, 2].map(|a| pts[t][a] + u(rng, -0.3, 0.3) * rad[t]);
            b.add(ell(c, r), panc_hu - u(rng, 20.0, 45.0), 8.0, 2, None);
        }

        let big = [-300.0, -300.0, -150.0];
        let far = [300.0, 300.0, 150.0];
        Anatomy {
            layers: b.layers,
            texture: ValueNoise::new(rng, big, far, 6.0),
            wobble: ValueNoise::new(rng, big, far, 9.0),
            bias: ValueNoise::new(rng, big, far, 90.0),
            tumour,
        }
    }

    /// HU and label at anatomical point `p` (scanner point `q`); `edge` is the
    /// partial-volume width in mm.
    fn sample(&self, p: V3, q: V3, edge: f32) -> (f32, u8) {
        let mut hu = -1000.0f32;
        let mut label = 0u8;
        let cover = |sd: f32| (0.5 - sd / edge).clamp(0.0, 1.0);
        for (i, l) in self.layers.iter().enumerate() {
            let p = if l.fixed { q } else { p };
            if (0..3).any(|a| p[a] < l.lo[a] || p[a] > l.hi[a]) {
                continue;
            }
            let mut sd = l.geom.sd(p);
            if l.wobble > 0.0 {
                sd -= l.wobble * self.wobble.at(p);
            }
            let mut a = cover(sd);
            if a > 0.0
                && let Some(c) = &l.clip
            {
                a *= cover(c.sd(p));
            }
            if a <= 0.0 {
                continue;
            }
            let off = i as f32 * 37.0;
            let v = l.hu + l.texture * self.texture.at([p[0] + off, p[1] - off, p[2]]);
            hu += a * (v - hu);
            if a > 0.5 {
                label = l.label;
            }
        }
        (hu + 12.0 * self.bias.at(p), label)
    }
}

/// Generates case `index` of `cfg`.
pub fn phantom(cfg: &PhantomConfig, index: usize) -> Result<Phantom> {
    cfg.validate()?;
    let mut rng = item_rng(cfg.seed, index as u64);
    let spacing = cfg.spacing();
    let sp = spacing.map(|s| s as f32);
    let edge = (sp[0] + sp[1] + sp[2]) / 3.0;
    let anatomy = Anatomy::new(&mut rng, cfg.tumour_share, edge);
    let [nx, ny, nz] = cfg.shape;
    let (angle, shift) = (
        u(&mut rng, -0.09, 0.09),
        [u(&mut rng, -12.0, 12.0), u(&mut rng, -10.0, 10.0)],
    );
    let (sin, cos) = angle.sin_cos();
    let mut hu = vec![0f32; nx * ny * nz];
    let mut label = vec![0u8; nx * ny * nz];
    hu.par_chunks_mut(ny * nz)
        .zip(label.par_chunks_mut(ny * nz))
        .enumerate()
        .for_each(|(i, (hs, ls))| {
            let qx = (i as f32 + 0.5 - nx as f32 / 2.0) * sp[0];
            let x = qx - shift[0];
            for j in 0..ny {
                let qy = (j as f32 + 0.5 - ny as f32 / 2.0) * sp[1];
                let y = qy - shift[1];
                let (ax, ay) = (cos * x + sin * y, -sin * x + cos * y);
                for k in 0..nz {
                    let z = (k as f32 + 0.5 - nz as f32 / 2.0) * sp[2];
                    let (h, l) = anatomy.sample([ax, ay, z], [qx, qy, z], edge);
                    hs[j * nz + k] = h;
                    ls[j * nz + k] = l;
                }
            }
        });
    // Correlated quantum noise: white noise blurred over about a voxel, rescaled to sigma.
    let sigma = u(&mut rng, 10.0, 22.0);
    let white: Vec<f32> = (0..hu.len())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let blurred = gaussian3d(&white, cfg.shape, [0.7, 0.7, 0.5])?;
    let sd = (blurred.iter().map(|v| v * v).sum::<f32>() / blurred.len() as f32).sqrt();
    let scale = sigma / sd.max(1e-6);
    hu.par_iter_mut()
        .zip(&blurred)
        .for_each(|(h, n)| *h = (*h + scale * n).round().clamp(-1024.0, 3071.0));
    Ok(Phantom {
        hu,
        label,
        shape: cfg.shape,
        spacing,
        tumour: anatomy.tumour,
    })
}

impl Phantom {
    fn volume(&self, data: Vec<f32>) -> Result<Volume> {
        let [nx, ny, nz] = self.shape;
        let t = candle_core::Tensor::from_vec(data, (nx, ny, nz), &candle_core::Device::Cpu)?;
        let s = self.spacing;
        let mut affine = [[0.0; 4]; 4];
        affine[0][0] = -s[0];
        affine[1][1] = -s[1];
        affine[2][2] = s[2];
        affine[0][3] = (nx as f64 / 2.0 - 0.5) * s[0];
        affine[1][3] = (ny as f64 / 2.0 - 0.5) * s[1];
        affine[2][3] = (0.5 - nz as f64 / 2.0) * s[2];
        affine[3][3] = 1.0;
        Ok(Volume::from_tensor(&t, s)?.with_affine(affine))
    }

    /// The CT as a volume (write it as i16).
    pub fn image_volume(&self) -> Result<Volume> {
        self.volume(self.hu.clone())
    }

    /// The label as a volume (write it as u8).
    pub fn label_volume(&self) -> Result<Volume> {
        self.volume(self.label.iter().map(|&l| l as f32).collect())
    }
}

/// Writes the Decathlon folder `out`: `imagesTr/`, `labelsTr/`, `imagesTs/` (`case_NNN.nii.gz`,
/// int16 HU and uint8 labels) and a `dataset.json` like Task07_Pancreas's.
pub fn write(cfg: &PhantomConfig, out: &Path, progress: Option<&Progress>) -> Result<()> {
    cfg.validate()?;
    let n = cfg.labelled + cfg.unlabelled;
    (0..n).into_par_iter().try_for_each(|i| -> Result<()> {
        let p = phantom(cfg, i)?;
        let id = cfg.case_id(i);
        let dir = if i < cfg.labelled {
            "imagesTr"
        } else {
            "imagesTs"
        };
        p.image_volume()?
            .save_as(out.join(dir).join(format!("{id}.nii.gz")), VoxelType::I16)?;
        if i < cfg.labelled {
            p.label_volume()?.save_as(
                out.join("labelsTr").join(format!("{id}.nii.gz")),
                VoxelType::U8,
            )?;
        }
        if let Some(pr) = progress {
            pr.inc(1);
        }
        Ok(())
    })?;
    let training: Vec<serde_json::Value> = (0..cfg.labelled)
        .map(|i| {
            let id = cfg.case_id(i);
            serde_json::json!({
                "image": format!("./imagesTr/{id}.nii.gz"),
                "label": format!("./labelsTr/{id}.nii.gz"),
            })
        })
        .collect();
    let test: Vec<String> = (cfg.labelled..n)
        .map(|i| format!("./imagesTs/{}.nii.gz", cfg.case_id(i)))
        .collect();
    let json = serde_json::json!({
        "name": "SyntheticPancreas",
        "description": "CT-like abdomen phantoms with pancreas and tumour labels, generated by pretext",
        "reference": "pretext data synth pancreas",
        "licence": "CC0",
        "release": env!("CARGO_PKG_VERSION"),
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
        "numTraining": cfg.labelled,
        "numTest": cfg.unlabelled,
        "training": training,
        "test": test,
        "pretext": cfg,
    });
    let text = serde_json::to_string_pretty(&json).map_err(Error::msg)?;
    crate::io::write_atomic(&out.join("dataset.json"), text.as_bytes())
}
