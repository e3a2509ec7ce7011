//! Prepared datasets: preprocessed once into a cache folder (one safetensors file per case),
//! then read case by case, so a set is never held in memory as a whole.
//!
//! The folder is `<cache>/<kind>-<key>/`, `key` a hash of the preprocessing parameters and the
//! dataset folder's path; its `manifest.json` records, per case, the identity of the source
//! files (see [`identity`]). Opening a set again prepares only the cases whose sources changed
//! or that are missing, in parallel, with a progress display.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::preprocess::{FundusPreprocess, PancreasPreprocess, rgb8_tensor};
use super::{Aptos, Decathlon, Image, Volume};
use crate::error::{Error, FileContext, Result};
use crate::progress::Progress;

const MANIFEST: &str = "manifest.json";

#[derive(Serialize, Deserialize, Default)]
struct Manifest {
    kind: String,
    params: serde_json::Value,
    source: PathBuf,
    cases: BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct Entry {
    /// Identities of the source files (image, then label).
    sources: Vec<String>,
    /// The cache file, relative to the cache folder.
    file: String,
}

/// Files changed less than this long before they are recorded are "racy": a rewrite within the
/// same timestamp tick (up to 2 s on some file systems) would leave their times unchanged.
const RACY_NS: u128 = 2_000_000_000;

fn nanos(t: std::io::Result<std::time::SystemTime>) -> u128 {
    t.ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// A file's identity for the cache, compared with the one recorded before (`old`): its size,
/// modification time and (on Unix) change time, device and inode, so that a same-size
/// rewrite, a replaced file or a restored modification time is seen; plus, when the file
/// changed within [`RACY_NS`] of now, a SHA-256 of its contents (`meta#hash`), so that a
/// rewrite within one timestamp tick is seen too (as git does for "racily clean" entries).
/// Returns the identity to record and whether the file is unchanged since `old`.
fn identity(path: &Path, old: Option<&str>) -> Result<(String, bool)> {
    let m = std::fs::metadata(path).with_file(path)?;
    let mtime = nanos(m.modified());
    #[cfg(unix)]
    let (meta, changed) = {
        use std::os::unix::fs::MetadataExt;
        let ctime = m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128;
        let meta = format!("{}:{mtime}:{ctime}:{}:{}", m.len(), m.dev(), m.ino());
        (meta, mtime.max(ctime.max(0) as u128))
    };
    #[cfg(not(unix))]
    let (meta, changed) = (format!("{}:{mtime}", m.len()), mtime);
    let mut digest: Option<String> = None;
    let mut hash = || -> Result<String> {
        if digest.is_none() {
            use sha2::{Digest, Sha256};
            let bytes = std::fs::read(path).with_file(path)?;
            let d = Sha256::digest(&bytes);
            digest = Some(d.iter().map(|b| format!("{b:02x}")).collect());
        }
        Ok(digest.clone().unwrap_or_default())
    };
    let (old_meta, old_hash) = match old.map(|o| o.split_once('#').unwrap_or((o, ""))) {
        Some((m, h)) => (Some(m), (!h.is_empty()).then_some(h)),
        None => (None, None),
    };
    let unchanged = old_meta == Some(meta.as_str())
        && match old_hash {
            Some(h) => hash()? == h,
            None => true,
        };
    let racy = nanos(Ok(std::time::SystemTime::now())).saturating_sub(changed) < RACY_NS;
    let id = if racy {
        format!("{meta}#{}", hash()?)
    } else {
        meta
    };
    Ok((id, unchanged))
}

/// One case to prepare: its id and source files.
pub(super) struct Item {
    pub(super) id: String,
    pub(super) sources: Vec<PathBuf>,
}

/// Prepares the missing or stale cases of `items` into `dir` with `work`, then writes the
/// manifest. Cases that fail are left out of the manifest and reported together.
pub(super) fn prepare(
    dir: &Path,
    kind: &str,
    params: serde_json::Value,
    source: &Path,
    items: &[Item],
    footprint: impl Fn(&Item) -> u64 + Sync,
    work: impl Fn(&Item) -> Result<HashMap<String, Tensor>> + Sync,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_file(dir)?;
    crate::io::clean_stale_temps(dir);
    // Ids name the cache files: they must be plain names that stay inside the cache folder.
    for it in items {
        crate::io::plain_name(&it.id, "case id")
            .map_err(|m| Error::file(it.sources.first().map_or(source, PathBuf::as_path), m))?;
    }
    let manifest_path = dir.join(MANIFEST);
    let old: Manifest = std::fs::read_to_string(&manifest_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|m: &Manifest| m.params == params)
        .unwrap_or_default();
    // Each case with whether its recorded entry still holds.
    let wanted: Vec<(usize, Entry, bool)> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let before = old.cases.get(&it.id);
            let file = format!("{}.safetensors", it.id);
            let mut same =
                before.is_some_and(|b| b.sources.len() == it.sources.len() && b.file == file);
            let sources = it
                .sources
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let recorded = before.and_then(|b| b.sources.get(k)).map(String::as_str);
                    let (id, unchanged) = identity(p, recorded)?;
                    same &= unchanged;
                    Ok(id)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((i, Entry { sources, file }, same))
        })
        .collect::<Result<_>>()?;
    let todo: Vec<(usize, &Entry)> = wanted
        .iter()
        .filter(|(_, e, same)| !same || !dir.join(&e.file).is_file())
        .map(|(i, e, _)| (*i, e))
        .collect();
    let progress =
        (!todo.is_empty()).then(|| Progress::new(todo.len() as u64, &format!("prepare {kind}")));
    // In parallel within the memory budget (each case's footprint estimated from its headers).
    let failures: Vec<(usize, Error)> = super::budget::map_cases(
        &todo,
        |(i, _)| footprint(&items[*i]),
        |(i, e)| {
            let done = work(&items[*i]).and_then(|t| save(&dir.join(&e.file), &t));
            if let Some(p) = &progress {
                p.inc(1);
            }
            done.err().map(|e| (*i, e))
        },
    )
    .into_iter()
    .flatten()
    .collect();
    if let Some(p) = &progress {
        p.finish();
    }
    let failed: std::collections::HashSet<usize> = failures.iter().map(|(i, _)| *i).collect();
    let manifest = Manifest {
        kind: kind.into(),
        params,
        source: source.to_path_buf(),
        cases: wanted
            .into_iter()
            .filter(|(i, _, _)| !failed.contains(i))
            .map(|(i, e, _)| (items[i].id.clone(), e))
            .collect(),
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(Error::msg)?;
    replace(&manifest_path, |tmp| {
        std::fs::write(tmp, text.as_bytes()).with_file(tmp)
    })?;
    match failures.len() {
        0 => Ok(()),
        n => {
            let first: Vec<String> = failures
                .iter()
                .take(3)
                .map(|(_, e)| e.to_string())
                .collect();
            Err(Error::msg(format!(
                "{n} case(s) could not be prepared: {}{}",
                first.join("; "),
                if n > 3 { "; ..." } else { "" }
            )))
        }
    }
}

/// Writes `path` atomically: `write` fills a temporary file beside it (named by
/// `io::temp_name`, so threads writing the same file do not collide), which then replaces it.
fn replace(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("case");
    let tmp = dir.join(crate::io::temp_name(name));
    write(&tmp)
        .and_then(|_| std::fs::rename(&tmp, path).with_file(path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Writes tensors to a safetensors file atomically.
fn save(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    replace(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp)
            .map_err(|e| Error::file(path, format!("cannot write cache file: {e}")))
    })
}

/// Reads one tensor of a cache file.
pub(super) fn load(path: &Path, name: &str) -> Result<Option<Tensor>> {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        Error::file(
            path,
            format!("unreadable cache file ({e}); delete the cache folder to rebuild it"),
        )
    })?;
    Ok(t.remove(name))
}

pub(super) fn cache_dir(
    cache: &Path,
    kind: &str,
    params: &serde_json::Value,
    root: &Path,
) -> PathBuf {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let key = super::key(&format!("{kind} {params} {}", root.display()));
    cache.join(format!("{kind}-{key}"))
}

/// A preprocessed Decathlon dataset: labelled and unlabelled cases of one target shape.
#[derive(Clone, Debug)]
pub struct PancreasSet {
    dir: PathBuf,
    name: String,
    ids: Vec<String>,
    labelled: Vec<usize>,
    unlabelled: Vec<usize>,
    shape: [usize; 3],
}

impl PancreasSet {
    /// Preprocesses `ds` with `params` into a folder under `cache` (skipping cases already
    /// there) and opens the result.
    pub fn prepare(
        ds: &Decathlon,
        params: &PancreasPreprocess,
        cache: &Path,
    ) -> Result<PancreasSet> {
        params.validate()?;
        let pj = serde_json::to_value(params).map_err(Error::msg)?;
        let dir = cache_dir(cache, "pancreas", &pj, ds.root());
        let items: Vec<Item> = ds
            .cases()
            .map(|c| Item {
                id: c.id.clone(),
                sources: std::iter::once(c.image.clone())
                    .chain(c.label.clone())
                    .collect(),
            })
            .collect();
        if items.is_empty() {
            return Err(Error::file(ds.root(), "the dataset has no cases"));
        }
        // The labels dataset.json defines, else background, pancreas and tumour.
        let allowed: std::collections::BTreeSet<i64> = match ds.labels() {
            Some(m) => m.keys().map(|&k| k as i64).collect(),
            None => [0, 1, 2].into(),
        };
        // A case holds its image and label (f32) and, while preprocessing, the cropped image
        // or label and a resized copy of it (at most the image's size each).
        let footprint = |it: &Item| {
            let image = super::budget::volume_bytes(&it.sources[0]);
            let label = it
                .sources
                .get(1)
                .map_or(0, |p| super::budget::volume_bytes(p));
            3 * image + label
        };
        prepare(&dir, "pancreas", pj, ds.root(), &items, footprint, |it| {
            let image = Volume::load(&it.sources[0])?;
            let label = it.sources.get(1).map(Volume::load).transpose()?;
            // The checks of `pretext data verify`: finite images, whole allowed labels.
            if let Some(msg) =
                image.with_values(|v| super::verify::image_problem(v, image.shape()))?
            {
                return Err(Error::file(&it.sources[0], msg));
            }
            if let Some(l) = &label {
                l.with_values(|v| super::verify::label_problem(v, l.shape(), Some(&allowed)))?
                    .map_err(|(_, msg)| Error::file(&it.sources[1], msg))?;
            }
            let out = params
                .apply(&image, label.as_ref())
                .map_err(|e| Error::file(&it.sources[0], e))?;
            let mut t = HashMap::from([("image".to_string(), out.image)]);
            if let Some(l) = out.label {
                t.insert("label".into(), l);
            }
            Ok(t)
        })?;
        let n = ds.labelled().len();
        Ok(PancreasSet {
            dir,
            name: ds.name().to_string(),
            ids: items.into_iter().map(|it| it.id).collect(),
            labelled: (0..n).collect(),
            unlabelled: (n..n + ds.unlabelled().len()).collect(),
            shape: params.shape,
        })
    }

    /// Opens the Decathlon folder `root` and prepares it (see [`PancreasSet::prepare`]).
    pub fn open(root: &Path, params: &PancreasPreprocess, cache: &Path) -> Result<PancreasSet> {
        Self::prepare(&Decathlon::open(root)?, params, cache)
    }

    /// The number of cases.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The indices of the labelled cases.
    pub fn labelled(&self) -> &[usize] {
        &self.labelled
    }

    /// The indices of the unlabelled cases.
    pub fn unlabelled(&self) -> &[usize] {
        &self.unlabelled
    }

    /// The id of case `i`.
    pub fn id(&self, i: usize) -> Result<&str> {
        self.check(i).map(|_| self.ids[i].as_str())
    }

    /// The target shape [x, y, z].
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The dataset's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cache folder.
    pub fn cache_dir(&self) -> &Path {
        &self.dir
    }

    fn check(&self, i: usize) -> Result<()> {
        if i < self.len() {
            Ok(())
        } else {
            Err(Error::arg(
                "i",
                format!(
                    "case index {i} out of range: the set has {} cases",
                    self.len()
                ),
            ))
        }
    }

    fn file(&self, i: usize) -> Result<PathBuf> {
        self.check(i)?;
        Ok(self.dir.join(format!("{}.safetensors", self.ids[i])))
    }

    /// The preprocessed image of case `i`: f32 `[x, y, z]` in [0, 1], on the CPU.
    pub fn image(&self, i: usize) -> Result<Tensor> {
        let f = self.file(i)?;
        load(&f, "image")?.ok_or_else(|| Error::file(&f, "no `image` tensor in the cache file"))
    }

    /// The label of case `i`: u8 `[x, y, z]` (0, 1, 2), or `None` for unlabelled cases.
    pub fn label(&self, i: usize) -> Result<Option<Tensor>> {
        let f = self.file(i)?;
        if self.unlabelled.contains(&i) {
            return Ok(None);
        }
        load(&f, "label")?
            .ok_or_else(|| Error::file(&f, "no `label` tensor in the cache file"))
            .map(Some)
    }
}

/// A preprocessed APTOS dataset: photographs of one size with their grades.
#[derive(Clone, Debug)]
pub struct FundusSet {
    dir: PathBuf,
    ids: Vec<String>,
    grades: Vec<u8>,
    size: usize,
}

impl FundusSet {
    /// Resizes the photographs of `ds` with `params` into a folder under `cache` (skipping
    /// those already there; stored as 8-bit RGB as the original code's resized PNGs) and
    /// opens the result.
    pub fn prepare(ds: &Aptos, params: &FundusPreprocess, cache: &Path) -> Result<FundusSet> {
        if params.size == 0 {
            return Err(Error::arg("size", "the fundus image size must be positive"));
        }
        let pj = serde_json::to_value(params).map_err(Error::msg)?;
        let dir = cache_dir(cache, "fundus", &pj, ds.root());
        let items: Vec<Item> = ds
            .entries()
            .iter()
            .map(|e| Item {
                id: e.id.clone(),
                sources: vec![e.image.clone()],
            })
            .collect();
        let footprint = |it: &Item| super::budget::image_bytes(&it.sources[0]);
        prepare(&dir, "fundus", pj, ds.root(), &items, footprint, |it| {
            let img = Image::load(&it.sources[0])?;
            let chw = params.resize_rgb8(&img)?;
            let s = params.size;
            let t = Tensor::from_vec(chw, (3, s, s), &Device::Cpu)?;
            Ok(HashMap::from([("image".to_string(), t)]))
        })?;
        Ok(FundusSet {
            dir,
            ids: ds.entries().iter().map(|e| e.id.clone()).collect(),
            grades: ds.entries().iter().map(|e| e.grade).collect(),
            size: params.size,
        })
    }

    /// Opens the APTOS folder `root` and prepares it (see [`FundusSet::prepare`]).
    pub fn open(root: &Path, params: &FundusPreprocess, cache: &Path) -> Result<FundusSet> {
        Self::prepare(&Aptos::open(root)?, params, cache)
    }

    /// The number of photographs.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The grade of photograph `i` (0..4).
    pub fn grade(&self, i: usize) -> Result<u8> {
        self.check(i).map(|_| self.grades[i])
    }

    /// Every grade, in order.
    pub fn grades(&self) -> &[u8] {
        &self.grades
    }

    /// The id of photograph `i`.
    pub fn id(&self, i: usize) -> Result<&str> {
        self.check(i).map(|_| self.ids[i].as_str())
    }

    /// The image size in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The cache folder.
    pub fn cache_dir(&self) -> &Path {
        &self.dir
    }

    fn check(&self, i: usize) -> Result<()> {
        if i < self.len() {
            Ok(())
        } else {
            Err(Error::arg(
                "i",
                format!(
                    "photograph index {i} out of range: the set has {}",
                    self.len()
                ),
            ))
        }
    }

    /// Photograph `i`: f32 `[3, size, size]` in [0, 1], on the CPU.
    pub fn image(&self, i: usize) -> Result<Tensor> {
        self.check(i)?;
        let f = self.dir.join(format!("{}.safetensors", self.ids[i]));
        let t = load(&f, "image")?.ok_or_else(|| Error::file(&f, "no `image` tensor"))?;
        if t.dtype() != DType::U8 || t.dims() != [3, self.size, self.size] {
            return Err(Error::file(
                &f,
                "cache file of another shape; delete the cache folder",
            ));
        }
        rgb8_tensor(t.flatten_all()?.to_vec1::<u8>()?, self.size)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn temporary_names_differ_between_calls_and_threads() {
        let a = crate::io::temp_name("case_000.safetensors");
        let b = crate::io::temp_name("case_000.safetensors");
        let c = std::thread::spawn(|| crate::io::temp_name("case_000.safetensors"))
            .join()
            .unwrap();
        assert!(a != b && b != c && a != c, "{a} {b} {c}");
        assert!(a.starts_with(".case_000.safetensors"), "{a}");
    }
}
