//! Fundus-like photographs with diabetic-retinopathy lesions by grade, written as an APTOS 2019
//! folder (`train.csv` with `id_code,diagnosis`, `train_images/<id>.png`).
//!
//! Each picture is a vignetted, textured retina disc on black (sometimes cut at the top and
//! bottom, as many APTOS photographs), an optic disc with its cup, a darker macula, and a vessel
//! tree (arteries and darker, wider veins in four arcades curving around the macula, branching).
//! Lesions follow the international grading (0 none, 1 mild: microaneurysms only, 2 moderate:
//! plus haemorrhages, hard exudates, a few cotton-wool spots, 3 severe: many haemorrhages in all
//! quadrants, venous beading, 4 proliferative: new vessels at the disc or elsewhere, pre-retinal
//! haemorrhage, fibrosis, laser scars). Counts are Poisson with grade-dependent means, so
//! neighbouring grades overlap; camera dust, reflexes, blur, exposure, tint and noise vary
//! for every grade, so the grade is learnable but not trivially so.

use std::f32::consts::PI;
use std::path::Path;

use image::RgbImage;
use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Poisson, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::item_rng;
use super::noise::ValueNoise;
use crate::data::{Image, resize::gaussian3d};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// The class counts of APTOS 2019's 3662 training photographs, grades 0..4.
pub const APTOS_COUNTS: [usize; 5] = [1805, 370, 999, 193, 295];

/// `n` photographs split over the grades in APTOS's proportions (largest remainders; every
/// grade gets at least one when `n >= 5`).
pub fn aptos_counts(n: usize) -> [usize; 5] {
    let total: usize = APTOS_COUNTS.iter().sum();
    let mut c = APTOS_COUNTS.map(|k| k * n / total);
    let mut rest: Vec<usize> = (0..5).collect();
    rest.sort_by_key(|&g| std::cmp::Reverse((APTOS_COUNTS[g] * n) % total));
    let missing = n - c.iter().sum::<usize>();
    for &g in rest.iter().take(missing) {
        c[g] += 1;
    }
    if n >= 5 {
        while let Some(g) = (0..5).find(|&g| c[g] == 0) {
            let big = (0..5).max_by_key(|&g| c[g]).unwrap_or(0);
            c[big] -= 1;
            c[g] += 1;
        }
    }
    c
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FundusConfig {
    /// Photographs per grade 0..4.
    pub counts: [usize; 5],
    /// Width and height in pixels.
    pub size: usize,
    /// The seed; photograph `i` draws from its own stream derived from it.
    pub seed: u64,
}

impl Default for FundusConfig {
    fn default() -> Self {
        FundusConfig {
            counts: aptos_counts(500),
            size: 320,
            seed: 0,
        }
    }
}

impl FundusConfig {
    /// `n` photographs in APTOS's class balance.
    pub fn aptos(n: usize, size: usize, seed: u64) -> FundusConfig {
        FundusConfig {
            counts: aptos_counts(n),
            size,
            seed,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.size < 32 {
            return Err(Error::arg(
                "size",
                format!(
                    "the photograph size must be at least 32 pixels, got {}",
                    self.size
                ),
            ));
        }
        if self.n() == 0 {
            return Err(Error::arg("n", "at least one photograph is needed"));
        }
        // A photograph holds a few RGB planes while it is drawn: about 64 bytes a pixel.
        crate::memory::check_shape(&[self.size, self.size], 64, "size")?;
        Ok(())
    }

    /// The number of photographs.
    pub fn n(&self) -> usize {
        self.counts.iter().sum()
    }

    /// A short hash of the configuration (names the embedded default's folder).
    pub fn key(&self) -> String {
        crate::data::key(&format!(
            "fundus-v1 {}",
            serde_json::to_string(self).unwrap_or_default()
        ))
    }

    /// The (id, grade) of every photograph in train.csv order: grades shuffled by the seed,
    /// ids 12 hex digits like APTOS's.
    pub fn entries(&self) -> Vec<(String, u8)> {
        let mut grades: Vec<u8> = (0..5u8)
            .flat_map(|g| std::iter::repeat_n(g, self.counts[g as usize]))
            .collect();
        let mut rng = item_rng(self.seed, u64::MAX);
        grades.shuffle(&mut rng);
        let mut seen = std::collections::HashSet::new();
        grades
            .into_iter()
            .map(|g| {
                loop {
                    let id = format!("{:012x}", rng.random::<u64>() & 0xffff_ffff_ffff);
                    if seen.insert(id.clone()) {
                        break (id, g);
                    }
                }
            })
            .collect()
    }
}

/// An RGB canvas with values in [0, 1].
struct Canvas {
    s: usize,
    px: Vec<[f32; 3]>,
}

/// A coverage mask: vessels are drawn into it (overlapping stamps take the maximum) and
/// applied to the canvas once.
struct Mask {
    s: usize,
    a: Vec<f32>,
}

impl Mask {
    fn new(s: usize) -> Mask {
        Mask {
            s,
            a: vec![0.0; s * s],
        }
    }

    fn stamp(&mut self, c: [f32; 2], r: f32, soft: f32) {
        let reach = r + soft + 1.0;
        let s = self.s as i64;
        let x0 = ((c[0] - reach).floor() as i64).clamp(0, s);
        let x1 = ((c[0] + reach).ceil() as i64).clamp(0, s);
        let y0 = ((c[1] - reach).floor() as i64).clamp(0, s);
        let y1 = ((c[1] + reach).ceil() as i64).clamp(0, s);
        for y in y0..y1 {
            for x in x0..x1 {
                let d = ((x as f32 + 0.5 - c[0]).powi(2) + (y as f32 + 0.5 - c[1]).powi(2)).sqrt();
                let a = (0.5 - (d - r) / soft).clamp(0.0, 1.0);
                let m = &mut self.a[y as usize * self.s + x as usize];
                *m = m.max(a);
            }
        }
    }

    /// Multiplies the canvas by `f` where covered.
    fn apply(&self, cv: &mut Canvas, f: [f32; 3]) {
        let dark = darken(f);
        for (p, &a) in cv.px.iter_mut().zip(&self.a) {
            if a > 0.0 {
                dark(p, a);
            }
        }
    }
}

impl Canvas {
    /// Applies `f(pixel, coverage)` inside the ellipse (rx, ry, rotated by `angle`) with an
    /// edge `soft` pixels wide.
    fn ellipse(
        &mut self,
        c: [f32; 2],
        r: [f32; 2],
        angle: f32,
        soft: f32,
        f: impl Fn(&mut [f32; 3], f32),
    ) {
        let reach = r[0].max(r[1]) + soft + 1.0;
        let (sin, cos) = angle.sin_cos();
        let s = self.s as i64;
        let x0 = ((c[0] - reach).floor() as i64).clamp(0, s);
        let x1 = ((c[0] + reach).ceil() as i64).clamp(0, s);
        let y0 = ((c[1] - reach).floor() as i64).clamp(0, s);
        let y1 = ((c[1] + reach).ceil() as i64).clamp(0, s);
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f32 + 0.5 - c[0], y as f32 + 0.5 - c[1]);
                let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
                let k = ((u / r[0]).powi(2) + (v / r[1]).powi(2)).sqrt();
                let d = (k - 1.0) * r[0].min(r[1]);
                let a = (0.5 - d / soft.max(0.3)).clamp(0.0, 1.0);
                if a > 0.0 {
                    f(&mut self.px[y as usize * self.s + x as usize], a);
                }
            }
        }
    }

    fn disc(&mut self, c: [f32; 2], r: f32, soft: f32, f: impl Fn(&mut [f32; 3], f32)) {
        self.ellipse(c, [r, r], 0.0, soft, f);
    }
}

/// Blends towards `col` by `alpha × coverage`.
fn paint(col: [f32; 3], alpha: f32) -> impl Fn(&mut [f32; 3], f32) {
    move |p, a| {
        for i in 0..3 {
            p[i] += alpha * a * (col[i] - p[i]);
        }
    }
}

/// Multiplies by `f` where covered (vessels and dark lesions keep the illumination).
fn darken(f: [f32; 3]) -> impl Fn(&mut [f32; 3], f32) {
    move |p, a| {
        for i in 0..3 {
            p[i] *= 1.0 - a + a * f[i];
        }
    }
}

fn u(rng: &mut StdRng, lo: f32, hi: f32) -> f32 {
    rng.random_range(lo..hi)
}

fn poisson(rng: &mut StdRng, mean: f64) -> usize {
    if mean <= 0.0 {
        return 0;
    }
    Poisson::new(mean)
        .map(|p| p.sample(rng) as usize)
        .unwrap_or(0)
}

/// The geometry of one eye.
struct Eye {
    c: [f32; 2],
    r: f32,
    disc: [f32; 2],
    disc_r: f32,
    macula: [f32; 2],
    /// +1 when the macula is to the right of the disc.
    temporal: f32,
}

impl Eye {
    fn inside(&self, p: [f32; 2], frac: f32) -> bool {
        ((p[0] - self.c[0]).powi(2) + (p[1] - self.c[1]).powi(2)).sqrt() < frac * self.r
    }

    fn random_point(&self, rng: &mut StdRng, frac: f32) -> [f32; 2] {
        loop {
            let rr = self.r * frac * rng.random::<f32>().sqrt();
            let t = u(rng, 0.0, 2.0 * PI);
            let p = [self.c[0] + rr * t.cos(), self.c[1] + rr * t.sin()];
            let dd = ((p[0] - self.disc[0]).powi(2) + (p[1] - self.disc[1]).powi(2)).sqrt();
            if dd > 1.6 * self.disc_r {
                return p;
            }
        }
    }
}

/// One vessel: direction (radians), bend per pixel, width and length in pixels, venous
/// beading and the branching depth.
#[derive(Clone, Copy)]
struct Stroke {
    heading: f32,
    bend: f32,
    width: f32,
    length: f32,
    beading: f32,
    depth: u32,
}

/// Draws a vessel from `p` and, recursively, its branches.
fn vessel(cv: &mut Mask, rng: &mut StdRng, eye: &Eye, mut p: [f32; 2], v: Stroke) {
    let step = 0.8f32;
    let steps = (v.length / step) as usize;
    let wiggle = u(rng, 0.0, 100.0);
    let mut heading = v.heading;
    for k in 0..steps {
        let t = k as f32 / steps.max(1) as f32;
        heading += v.bend * step + 0.015 * ((k as f32) * 0.07 + wiggle).sin();
        p = [p[0] + step * heading.cos(), p[1] + step * heading.sin()];
        if !eye.inside(p, 0.97) {
            break;
        }
        let mut w = v.width * (1.0 - 0.45 * t);
        if v.beading > 0.0 {
            w *= 1.0 + v.beading * (k as f32 * 0.35).sin().max(0.0);
        }
        if w < 0.35 {
            break;
        }
        cv.stamp(p, 0.5 * w, 0.8);
        let branch_p = 0.007 * (1.0 + v.depth as f32);
        if v.depth < 4 && w > 0.9 && rng.random::<f32>() < branch_p {
            let side = if rng.random::<bool>() { 1.0 } else { -1.0 };
            let child = Stroke {
                heading: heading + side * u(rng, 0.45, 1.0),
                bend: v.bend * u(rng, -0.5, 1.2),
                width: w * u(rng, 0.55, 0.8),
                length: v.length * (1.0 - t) * u(rng, 0.4, 0.8),
                depth: v.depth + 1,
                ..v
            };
            vessel(cv, rng, eye, p, child);
        }
    }
}

/// The lesions drawn on one photograph (clusters of hard exudates count once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lesions {
    /// Microaneurysms.
    pub microaneurysms: usize,
    /// Dot, blot and flame haemorrhages.
    pub haemorrhages: usize,
    /// Hard exudates (single specks and clusters).
    pub exudates: usize,
    /// Cotton-wool spots.
    pub cotton_wool: usize,
    /// Tufts of new vessels (grade 4).
    pub new_vessels: usize,
}

/// Renders photograph `index` of grade `grade`, with the lesions drawn on it.
pub fn photo(cfg: &FundusConfig, index: usize, grade: u8) -> Result<(RgbImage, Lesions)> {
    cfg.validate()?;
    if grade > 4 {
        return Err(Error::arg("grade", format!("expected 0..4, got {grade}")));
    }
    let mut rng = item_rng(cfg.seed, index as u64);
    let rng = &mut rng;
    let s = cfg.size;
    let sf = s as f32;
    let mut cv = Canvas {
        s,
        px: vec![[0.0; 3]; s * s],
    };
    // Geometry: the disc is cut at top and bottom in a third of the photographs.
    let r = if rng.random::<f32>() < 0.33 {
        sf * u(rng, 0.52, 0.6)
    } else {
        sf * u(rng, 0.43, 0.48)
    };
    let c = [
        sf / 2.0 + u(rng, -0.02, 0.02) * sf,
        sf / 2.0 + u(rng, -0.02, 0.02) * sf,
    ];
    let temporal = if rng.random::<bool>() { 1.0 } else { -1.0 };
    let disc_r = r * u(rng, 0.11, 0.14);
    let disc = [
        c[0] - temporal * r * u(rng, 0.28, 0.38),
        c[1] + r * u(rng, -0.08, 0.08),
    ];
    let macula = [
        disc[0] + temporal * disc_r * u(rng, 3.2, 3.9),
        disc[1] + r * u(rng, -0.03, 0.05),
    ];
    let eye = Eye {
        c,
        r,
        disc,
        disc_r,
        macula,
        temporal,
    };

    // Background: pigmentation, vignetting, choroidal texture.
    let base = [u(rng, 0.72, 0.95), u(rng, 0.28, 0.45), u(rng, 0.08, 0.2)];
    let tex = ValueNoise::new(rng, [0.0; 3], [sf, sf, 1.0], sf / 18.0);
    let fine = ValueNoise::new(rng, [0.0; 3], [sf, sf, 1.0], sf / 60.0);
    let glow = (u(rng, 0.0, 2.0 * PI), u(rng, 0.0, 0.25));
    for y in 0..s {
        for x in 0..s {
            let (dx, dy) = (x as f32 + 0.5 - c[0], y as f32 + 0.5 - c[1]);
            let rr = (dx * dx + dy * dy).sqrt() / r;
            let edge = ((1.0 - rr) * r / 1.5).clamp(0.0, 1.0);
            if edge <= 0.0 {
                continue;
            }
            let t = [x as f32, y as f32, 0.0];
            let light = 1.0 - 0.45 * rr.powf(2.5)
                + glow.1 * (dy.atan2(dx) - glow.0).cos().max(0.0) * rr.powi(4);
            let k = 1.0 + 0.07 * tex.at(t) + 0.04 * fine.at(t);
            cv.px[y * s + x] = base.map(|b| b * light * k * edge);
        }
    }
    // Macula (darker, with a small foveal reflex) and optic disc with its cup.
    let mac_r = disc_r * u(rng, 1.1, 1.5);
    cv.disc(macula, mac_r, mac_r, darken([0.72, 0.62, 0.6]));
    cv.disc(macula, disc_r * 0.12, 1.0, paint([0.95, 0.8, 0.6], 0.35));
    let disc_col = [u(rng, 0.95, 1.0), u(rng, 0.62, 0.78), u(rng, 0.38, 0.52)];
    cv.ellipse(
        disc,
        [disc_r * 0.9, disc_r],
        u(rng, -0.2, 0.2),
        disc_r * 0.3,
        paint(disc_col, 0.85),
    );
    let cup = [disc[0] + temporal * disc_r * 0.15, disc[1]];
    cv.disc(
        cup,
        disc_r * u(rng, 0.3, 0.5),
        disc_r * 0.25,
        paint([1.0, 0.88, 0.7], 0.7),
    );

    // Vessels: four arcades (artery + vein each) and small ones radiating from the disc.
    let beading = if grade >= 3 && rng.random::<f32>() < 0.6 {
        u(rng, 0.25, 0.5)
    } else {
        0.0
    };
    let mut arteries = Mask::new(s);
    let mut veins = Mask::new(s);
    let base_w = sf * 0.011;
    let t_dir = if temporal > 0.0 { 0.0 } else { PI };
    for up in [-1.0f32, 1.0] {
        for (is_vein, w, off) in [(false, 0.8, 0.0), (true, 1.1, 0.12)] {
            let bend = temporal * up * u(rng, 1.1, 1.6) / r;
            let arcade = Stroke {
                heading: t_dir - temporal * up * (1.35 + off + u(rng, -0.1, 0.1)),
                bend,
                width: base_w * w,
                length: r * u(rng, 1.1, 1.5),
                beading: if is_vein { beading } else { 0.0 },
                depth: 0,
            };
            let nasal = Stroke {
                heading: t_dir + PI + temporal * up * (0.6 + off + u(rng, -0.15, 0.15)),
                bend: -bend * 0.3,
                width: base_w * w * 0.75,
                length: r * u(rng, 0.6, 0.9),
                depth: 1,
                ..arcade
            };
            let mask = if is_vein { &mut veins } else { &mut arteries };
            vessel(mask, rng, &eye, disc, arcade);
            vessel(mask, rng, &eye, disc, nasal);
        }
    }
    for _ in 0..rng.random_range(3..7) {
        let small = Stroke {
            heading: u(rng, 0.0, 2.0 * PI),
            bend: u(rng, -0.5, 0.5) / r,
            width: base_w * 0.45,
            length: r * u(rng, 0.25, 0.5),
            beading: 0.0,
            depth: 2,
        };
        vessel(&mut arteries, rng, &eye, disc, small);
    }
    let depth = u(rng, 0.85, 1.15);
    veins.apply(&mut cv, [0.62, 0.36, 0.36].map(|f: f32| f.powf(depth)));
    arteries.apply(&mut cv, [0.84, 0.6, 0.58].map(|f: f32| f.powf(depth)));

    let drawn = lesions(&mut cv, rng, &eye, grade);

    // Artefacts of every grade: camera dust, light reflexes.
    for _ in 0..poisson(rng, 1.0) {
        let p = eye.random_point(rng, 0.9);
        let rr = sf * u(rng, 0.006, 0.02);
        cv.disc(p, rr, rr, darken([0.8, 0.8, 0.8]));
    }
    if rng.random::<f32>() < 0.3 {
        for _ in 0..rng.random_range(2..6) {
            let p = eye.random_point(rng, 0.7);
            let rr = [sf * u(rng, 0.02, 0.06), sf * u(rng, 0.004, 0.01)];
            cv.ellipse(
                p,
                rr,
                u(rng, 0.0, PI),
                rr[1] * 2.0,
                paint([0.95, 0.85, 0.8], 0.12),
            );
        }
    }

    // Camera: blur, exposure, gamma, noise.
    let mut chans: [Vec<f32>; 3] = [0, 1, 2].map(|i| cv.px.iter().map(|p| p[i]).collect());
    if rng.random::<f32>() < 0.35 {
        let sigma = (u(rng, 0.4, 1.3) * sf / 320.0) as f64;
        for ch in chans.iter_mut() {
            *ch = gaussian3d(ch, [s, s, 1], [sigma, sigma, 0.0])?;
        }
    }
    let exposure = u(rng, 0.6, 1.15);
    let gamma = u(rng, 0.8, 1.25);
    let noise = u(rng, 0.005, 0.025);
    let mut rgb = RgbImage::new(s as u32, s as u32);
    for (i, px) in rgb.pixels_mut().enumerate() {
        let lit = chans[0][i] + chans[1][i] + chans[2][i] > 0.0;
        for (k, ch) in chans.iter().enumerate() {
            let mut v = (ch[i] * exposure).max(0.0).powf(gamma);
            if lit {
                let n: f32 = StandardNormal.sample(rng);
                v += noise * n;
            }
            px.0[k] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    Ok((rgb, drawn))
}

/// Paints the lesions of `grade`.
fn lesions(cv: &mut Canvas, rng: &mut StdRng, eye: &Eye, grade: u8) -> Lesions {
    let g = grade as usize;
    let sf = cv.s as f32;
    let red = [0.42, 0.1, 0.08];
    // Microaneurysms: tiny dark red dots.
    let mut n = Lesions {
        microaneurysms: poisson(rng, [0.0, 6.0, 14.0, 24.0, 14.0][g]),
        ..Lesions::default()
    };
    for _ in 0..n.microaneurysms {
        let p = eye.random_point(rng, 0.85);
        let rr = sf * u(rng, 0.0025, 0.005);
        cv.disc(p, rr, 0.7, paint(red, u(rng, 0.6, 0.9)));
    }
    // Dot/blot and flame haemorrhages.
    let blots = poisson(rng, [0.0, 0.3, 5.0, 18.0, 10.0][g]);
    for _ in 0..blots {
        let p = eye.random_point(rng, 0.88);
        let rr = sf * u(rng, 0.006, 0.018);
        cv.ellipse(
            p,
            [rr, rr * u(rng, 0.6, 1.0)],
            u(rng, 0.0, PI),
            rr * 0.4,
            paint(red, u(rng, 0.5, 0.85)),
        );
    }
    let flames = poisson(rng, [0.0, 0.0, 1.0, 4.0, 3.0][g]);
    n.haemorrhages = blots + flames;
    for _ in 0..flames {
        let p = eye.random_point(rng, 0.75);
        let rr = [sf * u(rng, 0.015, 0.03), sf * u(rng, 0.004, 0.008)];
        let along = (p[1] - eye.disc[1]).atan2(p[0] - eye.disc[0]);
        cv.ellipse(p, rr, along, rr[1], paint([0.5, 0.12, 0.08], 0.7));
    }
    // Hard exudates: bright yellow specks, often in clusters around the macula.
    let yellow = [1.0, 0.88, 0.45];
    for _ in 0..poisson(rng, [0.0, 0.1, 1.5, 2.5, 2.0][g]) {
        n.exudates += 1;
        let near = rng.random::<f32>() < 0.6;
        let centre = if near {
            let a = u(rng, 0.0, 2.0 * PI);
            let d = eye.disc_r * u(rng, 1.0, 3.0);
            [eye.macula[0] + d * a.cos(), eye.macula[1] + d * a.sin()]
        } else {
            eye.random_point(rng, 0.8)
        };
        for _ in 0..rng.random_range(3..16) {
            let p = [
                centre[0] + sf * u(rng, -0.04, 0.04),
                centre[1] + sf * u(rng, -0.04, 0.04),
            ];
            if eye.inside(p, 0.95) {
                cv.disc(
                    p,
                    sf * u(rng, 0.002, 0.006),
                    0.8,
                    paint(yellow, u(rng, 0.6, 0.95)),
                );
            }
        }
    }
    let single = poisson(rng, [0.0, 0.3, 4.0, 8.0, 6.0][g]);
    n.exudates += single;
    for _ in 0..single {
        let p = eye.random_point(rng, 0.85);
        cv.disc(p, sf * u(rng, 0.002, 0.006), 0.8, paint(yellow, 0.8));
    }
    // Cotton-wool spots: pale, fluffy.
    n.cotton_wool = poisson(rng, [0.0, 0.0, 0.8, 3.0, 2.0][g]);
    for _ in 0..n.cotton_wool {
        let p = eye.random_point(rng, 0.7);
        let rr = sf * u(rng, 0.012, 0.028);
        cv.ellipse(
            p,
            [rr, rr * u(rng, 0.6, 1.0)],
            u(rng, 0.0, PI),
            rr * 0.8,
            paint([0.96, 0.88, 0.8], u(rng, 0.45, 0.7)),
        );
    }
    if grade < 4 {
        return n;
    }
    // Proliferative: tufts of fine tortuous new vessels at the disc or along the arcades.
    let mut nv = Mask::new(cv.s);
    n.new_vessels = rng.random_range(1..4);
    for _ in 0..n.new_vessels {
        let at_disc = rng.random::<f32>() < 0.5;
        let centre = if at_disc {
            eye.disc
        } else {
            let up = if rng.random::<bool>() { 1.0 } else { -1.0 };
            [
                eye.disc[0] + eye.temporal * eye.r * u(rng, 0.2, 0.5),
                eye.disc[1] + up * eye.r * u(rng, 0.2, 0.4),
            ]
        };
        for _ in 0..rng.random_range(6..14) {
            let mut p = [
                centre[0] + sf * u(rng, -0.03, 0.03),
                centre[1] + sf * u(rng, -0.03, 0.03),
            ];
            let mut h = u(rng, 0.0, 2.0 * PI);
            for _ in 0..rng.random_range(15..40) {
                h += u(rng, -0.9, 0.9);
                p = [p[0] + 0.8 * h.cos(), p[1] + 0.8 * h.sin()];
                if eye.inside(p, 0.95) {
                    nv.stamp(p, sf * 0.0022, 0.6);
                }
            }
        }
        if rng.random::<f32>() < 0.25 {
            cv.disc(
                centre,
                sf * u(rng, 0.03, 0.06),
                sf * 0.02,
                paint([0.92, 0.88, 0.82], 0.5),
            );
        }
    }
    nv.apply(cv, [0.6, 0.32, 0.32]);
    if rng.random::<f32>() < 0.3 {
        let p = eye.random_point(rng, 0.7);
        let rr = sf * u(rng, 0.04, 0.08);
        cv.ellipse(
            p,
            [rr, rr * 0.6],
            0.0,
            rr * 0.2,
            paint([0.35, 0.05, 0.04], 0.85),
        );
    }
    if rng.random::<f32>() < 0.2 {
        for _ in 0..rng.random_range(30..80) {
            let a = u(rng, 0.0, 2.0 * PI);
            let d = eye.r * u(rng, 0.6, 0.9);
            let p = [eye.c[0] + d * a.cos(), eye.c[1] + d * a.sin()];
            cv.disc(
                p,
                sf * u(rng, 0.006, 0.01),
                1.0,
                paint([0.3, 0.22, 0.12], 0.6),
            );
        }
    }
    n
}

/// Writes the APTOS folder `out`: `train.csv` (`id_code,diagnosis`) and
/// `train_images/<id>.png`.
pub fn write(cfg: &FundusConfig, out: &Path, progress: Option<&Progress>) -> Result<()> {
    cfg.validate()?;
    let entries = cfg.entries();
    entries
        .par_iter()
        .enumerate()
        .try_for_each(|(i, (id, grade))| -> Result<()> {
            let (img, _) = photo(cfg, i, *grade)?;
            Image::from_dynamic(image::DynamicImage::ImageRgb8(img))
                .save(out.join("train_images").join(format!("{id}.png")))?;
            if let Some(p) = progress {
                p.inc(1);
            }
            Ok(())
        })?;
    let mut csv = String::from("id_code,diagnosis\n");
    for (id, g) in &entries {
        csv.push_str(&format!("{id},{g}\n"));
    }
    crate::io::write_atomic(&out.join("train.csv"), csv.as_bytes())
}
