//! Prepared sets: preprocessed once into the cache, read case by case, re-prepared only when
//! a source changes or the parameters differ.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pretext::data::synthetic::fundus::{self, FundusConfig};
use pretext::data::synthetic::pancreas::{self, PhantomConfig};
use pretext::data::{FundusPreprocess, FundusSet, Image, PancreasPreprocess, PancreasSet, Volume};

fn pancreas_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PhantomConfig {
        labelled: 3,
        unlabelled: 2,
        shape: [48, 48, 24],
        seed: 4,
        tumour_share: 1.0,
    };
    pancreas::write(&cfg, &dir.path().join("ds"), None).unwrap();
    dir
}

fn params() -> PancreasPreprocess {
    PancreasPreprocess {
        shape: [16, 12, 8],
        ..Default::default()
    }
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn cache_files(set: &PancreasSet) -> Vec<PathBuf> {
    (0..set.len())
        .map(|i| {
            set.cache_dir()
                .join(format!("{}.safetensors", set.id(i).unwrap()))
        })
        .collect()
}

#[test]
fn a_pancreas_set_serves_preprocessed_images_and_labels_equal_to_direct_preprocessing() {
    let dir = pancreas_dir();
    let root = dir.path().join("ds");
    let set = PancreasSet::open(&root, &params(), &dir.path().join("cache")).unwrap();
    assert_eq!(set.len(), 5);
    assert_eq!(set.labelled(), &[0, 1, 2]);
    assert_eq!(set.unlabelled(), &[3, 4]);
    assert_eq!(set.shape(), [16, 12, 8]);
    let img = set.image(1).unwrap();
    assert_eq!(
        (img.dims(), img.dtype()),
        (&[16, 12, 8][..], candle_core::DType::F32)
    );
    let lab = set.label(1).unwrap().unwrap();
    assert_eq!(lab.dtype(), candle_core::DType::U8);
    assert!(set.label(4).unwrap().is_none());

    let v = Volume::load(root.join("imagesTr/case_001.nii.gz")).unwrap();
    let l = Volume::load(root.join("labelsTr/case_001.nii.gz")).unwrap();
    let want = params().apply(&v, Some(&l)).unwrap();
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&img), flat(&want.image));
    assert_eq!(
        lab.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        want.label
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap()
    );
    let e = set.image(5).unwrap_err().to_string();
    assert!(e.contains("out of range") && e.contains('5'), "{e}");
}

#[test]
fn a_second_open_reuses_the_cache_and_a_changed_source_is_prepared_again() {
    let dir = pancreas_dir();
    let root = dir.path().join("ds");
    let cache = dir.path().join("cache");
    let set = PancreasSet::open(&root, &params(), &cache).unwrap();
    let files = cache_files(&set);
    let before: Vec<SystemTime> = files.iter().map(|f| mtime(f)).collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = PancreasSet::open(&root, &params(), &cache).unwrap();
    assert_eq!(again.cache_dir(), set.cache_dir());
    let after: Vec<SystemTime> = files.iter().map(|f| mtime(f)).collect();
    assert_eq!(before, after, "nothing was prepared again");

    // Rewrite case 2's image: only that case is prepared again.
    let src = root.join("imagesTr/case_002.nii.gz");
    let v = Volume::load(&src).unwrap();
    v.save(&src).unwrap();
    PancreasSet::open(&root, &params(), &cache).unwrap();
    let now: Vec<SystemTime> = files.iter().map(|f| mtime(f)).collect();
    let changed: Vec<usize> = (0..5).filter(|&i| now[i] != before[i]).collect();
    assert_eq!(changed, vec![2]);

    // Other parameters use another folder.
    let other = PancreasPreprocess {
        off_by_one: false,
        ..params()
    };
    let set2 = PancreasSet::open(&root, &other, &cache).unwrap();
    assert_ne!(set2.cache_dir(), set.cache_dir());
}

#[test]
fn a_case_that_cannot_be_prepared_is_named_and_the_others_are_kept() {
    let dir = pancreas_dir();
    let root = dir.path().join("ds");
    let bad = root.join("imagesTr/case_001.nii.gz");
    std::fs::write(&bad, b"garbage").unwrap();
    let e = PancreasSet::open(&root, &params(), &dir.path().join("cache"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 case(s)") && e.contains(bad.to_str().unwrap()),
        "{e}"
    );
    let cached = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "safetensors")
        })
        .count();
    assert_eq!(cached, 4);
}

#[test]
fn a_corrupt_cache_file_is_an_error_naming_it() {
    let dir = pancreas_dir();
    let set =
        PancreasSet::open(&dir.path().join("ds"), &params(), &dir.path().join("cache")).unwrap();
    let f = &cache_files(&set)[0];
    std::fs::write(f, b"xx").unwrap();
    let e = set.image(0).unwrap_err().to_string();
    assert!(
        e.contains(f.to_str().unwrap()) && e.contains("delete the cache"),
        "{e}"
    );
}

#[test]
fn a_fundus_set_serves_resized_photographs_with_their_grades() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("aptos");
    let cfg = FundusConfig {
        counts: [2, 1, 1, 0, 1],
        size: 80,
        seed: 0,
    };
    fundus::write(&cfg, &root, None).unwrap();
    let p = FundusPreprocess {
        size: 32,
        ..Default::default()
    };
    let set = FundusSet::open(&root, &p, &dir.path().join("cache")).unwrap();
    assert_eq!(set.len(), 5);
    let mut g = set.grades().to_vec();
    g.sort_unstable();
    assert_eq!(g, vec![0, 0, 1, 2, 4]);
    let img = set.image(2).unwrap();
    assert_eq!(img.dims(), &[3, 32, 32]);
    let src = root.join(format!("train_images/{}.png", set.id(2).unwrap()));
    let want = p.apply(&Image::load(src).unwrap()).unwrap();
    let d = (img - want)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all() // not max_all, which skips NaN
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    assert!(set.grade(5).is_err());
}

#[test]
fn a_same_size_rewrite_with_the_old_modification_time_is_prepared_again() {
    let dir = pancreas_dir();
    let root = dir.path().join("ds");
    let cache = dir.path().join("cache");
    let set = PancreasSet::open(&root, &params(), &cache).unwrap();
    let files = cache_files(&set);
    let before: Vec<SystemTime> = files.iter().map(|f| mtime(f)).collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // Rewrite case 2's image in place (same inode, same size: one byte of the gzip header's
    // timestamp), then put its modification time back: size and mtime are as recorded.
    let src = root.join("imagesTr/case_002.nii.gz");
    let (size, old_mtime) = (std::fs::metadata(&src).unwrap().len(), mtime(&src));
    let mut bytes = std::fs::read(&src).unwrap();
    bytes[4] ^= 0x5a;
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&bytes).unwrap();
        f.set_modified(old_mtime).unwrap();
    }
    assert_eq!(std::fs::metadata(&src).unwrap().len(), size);
    assert_eq!(mtime(&src), old_mtime);
    PancreasSet::open(&root, &params(), &cache).unwrap();
    let now: Vec<SystemTime> = files.iter().map(|f| mtime(f)).collect();
    let changed: Vec<usize> = (0..5).filter(|&i| now[i] != before[i]).collect();
    assert_eq!(
        changed,
        vec![2],
        "only the rewritten case is prepared again"
    );
}

#[test]
fn threads_opening_one_set_at_once_all_get_valid_cache_files() {
    // Every thread prepares the same cases into the same folder: their temporary files must
    // not collide (a name made of the process id alone is shared by all of them).
    let dir = pancreas_dir();
    let root = dir.path().join("ds");
    let cache = dir.path().join("cache");
    let sets: Vec<PancreasSet> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PancreasSet::open(&root, &params(), &cache)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    let want = PancreasSet::open(&root, &params(), &dir.path().join("fresh")).unwrap();
    for set in &sets {
        for i in 0..set.len() {
            let a = set.image(i).unwrap().flatten_all().unwrap();
            let b = want.image(i).unwrap().flatten_all().unwrap();
            assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(sets[0].cache_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
