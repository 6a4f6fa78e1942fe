//! Data parallelism: several processes (ranks) train one prompt, each computing its share of
//! every batch. The trainer sums each micro-batch's weighted loss and gradient over the ranks
//! through a [`Reducer`] and every rank applies the same update; only rank 0 writes files.
//! The library knows no transport: the CLI's `mpi` feature implements [`Reducer`] with an
//! MPI all-reduce. [`Single`] (one process) is the default and changes nothing.

use crate::Result;

/// The ranks of a run, and the one collective the trainer needs.
pub trait Reducer {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Sum `buf` element-wise over the ranks, in place; every rank gets the same sums.
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()>;
    /// A line on what the reductions cost, for the end of a run (None: nothing to say).
    fn summary(&self) -> Option<String> {
        None
    }
}

/// One process: nothing to reduce.
pub struct Single;

impl Reducer for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// The examples of batch `idx` that `rank` of `size` computes: a contiguous slice, the
/// slices' lengths differing by at most one (empty when the batch has fewer examples than
/// ranks).
pub fn share(idx: &[usize], rank: usize, size: usize) -> &[usize] {
    let n = idx.len();
    &idx[n * rank / size..n * (rank + 1) / size]
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_the_batch_once_in_order() {
        for n in 0..12 {
            let idx: Vec<usize> = (100..100 + n).collect();
            for size in 1..5 {
                let joined: Vec<usize> = (0..size)
                    .flat_map(|r| share(&idx, r, size).to_vec())
                    .collect();
                assert_eq!(joined, idx, "n {n} size {size}");
                let lens: Vec<usize> = (0..size).map(|r| share(&idx, r, size).len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }
}
