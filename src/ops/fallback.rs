//! Choosing an algorithm among candidates, the way PyTorch does for cuDNN convolutions: the
//! preferred one first, and when it cannot run (no workspace size for this geometry, a
//! workspace above the budget, an allocation or a launch that fails) the next one, instead of
//! failing the step.

use std::fmt::{Debug, Display};

/// `first` (when given) followed by every other member of `all`, each once, in `all`'s order.
pub(crate) fn in_order<A: Copy + PartialEq>(first: Option<A>, all: &[A]) -> Vec<A> {
    first
        .into_iter()
        .chain(all.iter().copied().filter(|a| Some(*a) != first))
        .collect()
}

/// The first of `candidates` that runs: its workspace size is known (`size` succeeds) and at
/// most `budget` bytes, and `run` succeeds with it. Returns the candidate, its workspace size
/// and what `run` returned; when none runs, an error saying why each was passed over.
pub(crate) fn first_working<A: Copy + Debug, R, E: Display, F: Display>(
    candidates: &[A],
    budget: usize,
    size: impl Fn(A) -> Result<usize, E>,
    mut run: impl FnMut(A, usize) -> Result<R, F>,
) -> Result<(A, usize, R), String> {
    let mut passed_over = Vec::new();
    for &a in candidates {
        match size(a) {
            Err(e) => passed_over.push(format!("{a:?}: no workspace size ({e})")),
            Ok(s) if s > budget => passed_over.push(format!(
                "{a:?}: needs {s} bytes of workspace, over the budget of {budget}"
            )),
            Ok(s) => match run(a, s) {
                Ok(r) => return Ok((a, s, r)),
                Err(e) => passed_over.push(format!("{a:?}: {e}")),
            },
        }
    }
    Err(format!(
        "no algorithm could run ({})",
        if passed_over.is_empty() {
            "no candidates".to_string()
        } else {
            passed_over.join("; ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_candidate_comes_first_and_none_twice() {
        assert_eq!(in_order(Some(3), &[0, 1, 2, 3, 4]), [3, 0, 1, 2, 4]);
        assert_eq!(in_order(None, &[0, 1]), [0, 1]);
    }

    #[test]
    fn a_candidate_that_cannot_run_gives_way_to_the_next() {
        // 0: no workspace size; 1: over the budget; 2: fails to launch; 3 runs.
        let size = |a: u32| match a {
            0 => Err("not supported"),
            1 => Ok(1 << 40),
            _ => Ok(64),
        };
        let mut tried = Vec::new();
        let got = first_working(&[0, 1, 2, 3, 4], 1 << 20, size, |a, s| {
            tried.push(a);
            if a == 2 {
                Err("launch failed")
            } else {
                Ok(a * 10 + s as u32)
            }
        })
        .unwrap();
        assert_eq!(got, (3, 64, 94));
        assert_eq!(
            tried,
            [2, 3],
            "only candidates with an affordable workspace run"
        );
    }

    #[test]
    fn when_nothing_runs_the_error_says_why_for_each() {
        let e = first_working(
            &[7, 8],
            100,
            |a: u8| if a == 7 { Ok(1000) } else { Err("bad") },
            |_, _| Ok::<(), &str>(()),
        )
        .unwrap_err();
        assert!(
            e.contains("7: needs 1000 bytes") && e.contains("8: no workspace size (bad)"),
            "{e}"
        );
    }
}
