//! APTOS folders: train.csv rows, images, and errors that name the file and line.

use std::path::Path;

use pretext::data::synthetic::fundus::{self, FundusConfig};
use pretext::data::{Aptos, verify};

fn dataset() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FundusConfig {
        counts: [2, 1, 1, 1, 1],
        size: 48,
        seed: 1,
    };
    fundus::write(&cfg, dir.path(), None).unwrap();
    dir
}

fn set_csv(dir: &Path, text: &str) {
    std::fs::write(dir.join("train.csv"), text).unwrap();
}

fn first_id(dir: &Path) -> String {
    Aptos::open(dir).unwrap().entries()[0].id.clone()
}

fn open_err(dir: &Path) -> String {
    Aptos::open(dir).unwrap_err().to_string()
}

#[test]
fn train_csv_gives_ids_grades_and_images() {
    let dir = dataset();
    let ds = Aptos::open(dir.path()).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(ds.grade_counts(), [2, 1, 1, 1, 1]);
    let csv = std::fs::read_to_string(dir.path().join("train.csv")).unwrap();
    let line2: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(ds.entries()[0].id, line2[0]);
    assert_eq!(ds.entries()[0].grade.to_string(), line2[1]);
}

#[test]
fn columns_in_another_order_and_jpeg_images_are_accepted() {
    let dir = dataset();
    let id = first_id(dir.path());
    let img = pretext::Image::load(dir.path().join(format!("train_images/{id}.png"))).unwrap();
    img.save(dir.path().join("train_images/abc.jpg")).unwrap();
    set_csv(dir.path(), &format!("diagnosis,id_code\n3,{id}\n1,abc\n"));
    let ds = Aptos::open(dir.path()).unwrap();
    assert_eq!(ds.entries()[1].grade, 1);
    assert!(ds.entries()[1].image.ends_with("train_images/abc.jpg"));
}

#[test]
fn bad_rows_are_errors_naming_train_csv_and_the_line() {
    let dir = dataset();
    let id = first_id(dir.path());
    set_csv(dir.path(), &format!("id_code,diagnosis\n{id},7\n"));
    let e = open_err(dir.path());
    assert!(
        e.contains("train.csv") && e.contains("line 2") && e.contains("`7`"),
        "{e}"
    );
    set_csv(dir.path(), &format!("id_code,diagnosis\n{id},2\n{id},2\n"));
    let e = open_err(dir.path());
    assert!(
        e.contains("line 3") && e.contains("already on line 2"),
        "{e}"
    );
    set_csv(dir.path(), "id,grade\nx,1\n");
    let e = open_err(dir.path());
    assert!(e.contains("train.csv") && e.contains("id_code"), "{e}");
    set_csv(dir.path(), &format!("id_code,diagnosis\n{id},two\n,1\n"));
    let e = open_err(dir.path());
    assert!(e.contains("`two`") && e.contains("1 more"), "{e}");
}

#[test]
fn a_missing_image_is_an_error_naming_it() {
    let dir = dataset();
    set_csv(dir.path(), "id_code,diagnosis\nnothere,0\n");
    let e = open_err(dir.path());
    assert!(
        e.contains("train_images/nothere.png") && e.contains("line 2"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("train.csv")).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("train.csv"), "{e}");
}

#[test]
fn verify_names_a_corrupt_photograph_and_nothing_else() {
    let dir = dataset();
    let ds = Aptos::open(dir.path()).unwrap();
    let bad = ds.entries()[3].image.clone();
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n broken").unwrap();
    let r = verify(dir.path()).unwrap();
    assert_eq!(r.problems.len(), 1, "{r}");
    assert_eq!(r.problems[0].file, bad);
    assert_eq!(r.cases.len(), 6);
    assert_eq!(
        r.cases[0].labels.as_deref(),
        Some(&[ds.entries()[0].grade as i64][..])
    );
}
