//! Deterministic shuffling and length-bucketed batching.
//!
//! The random numbers come from [`SplitMix64`] (Steele, Lea & Flood 2014), written out here
//! rather than taken from `rand`: `rand`'s `StdRng` may change its output between versions, and a
//! resumed training run must see exactly the batches it would have seen without the interruption,
//! whatever version of softprompt resumes it. The algorithms below are part of the on-disk
//! contract: changing them changes which batches a (seed, epoch) produces.

/// SplitMix64: a 64-bit counter passed through a fixed mixing function. Small, fast, and its
/// output for a given seed is fixed forever (it is the generator Java's `SplittableRandom` and
/// many seeding routines use, so its reference values are widely published).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`; returns 0 for `n == 0`), by the multiply-shift method
    /// `(x * n) >> 64`. Its bias is below `n / 2^64`, irrelevant for shuffling datasets.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A uniform number in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fisher–Yates shuffle (Durstenfeld's version: from the last position down, swap with a
    /// position drawn from `0..=i`).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// How many batches' worth of examples are sorted by length together (see [`bucket_batches`]).
pub const BUCKET_WINDOW_BATCHES: usize = 50;

/// The generator for one epoch: the seed and the epoch are mixed so that nearby seeds and epochs
/// give unrelated streams.
fn epoch_rng(seed: u64, epoch: u64) -> SplitMix64 {
    let mut mix = SplitMix64::new(seed);
    let a = mix.next_u64();
    let mut mix = SplitMix64::new(a ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    SplitMix64::new(mix.next_u64())
}

/// Batches of example indices for one epoch, grouping examples of similar length.
///
/// 1. The indices `0..lengths.len()` are shuffled (Fisher–Yates with [`SplitMix64`] seeded from
///    `(seed, epoch)`).
/// 2. The shuffled order is cut into windows of `batch_size * 50` indices; each window is sorted by
///    length (stable, so ties keep their shuffled order) and cut into batches of `batch_size` (the
///    last batch of a window may be smaller). A batch therefore holds similar lengths, which
///    wastes little padding, while the windows keep the batches random.
/// 3. The order of all batches is shuffled with the same generator, so long and short batches
///    alternate rather than follow the windows' sorted order.
///
/// Every index appears exactly once; the same `(seed, epoch)` always gives the same batches.
/// `batch_size == 0` is treated as 1.
pub fn bucket_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = epoch_rng(seed, epoch);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);

    let window = batch_size.saturating_mul(BUCKET_WINDOW_BATCHES);
    let mut batches = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for chunk in order.chunks_mut(window) {
        chunk.sort_by_key(|&i| lengths[i]);
        batches.extend(chunk.chunks(batch_size).map(|b| b.to_vec()));
    }
    rng.shuffle(&mut batches);
    batches
}

/// The training data order: the batches of [`bucket_batches`] for `(seed, epoch)`, epoch after
/// epoch, without end. Its position `(epoch, batches taken in that epoch)` is all a checkpoint
/// needs to continue the same order ([`EpochBatches::new`] at a saved position).
#[derive(Clone, Debug)]
pub struct EpochBatches {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    /// Batches of this epoch already taken.
    taken: usize,
    order: Vec<Vec<usize>>,
}

impl EpochBatches {
    /// The order of examples of `lengths` rows each, at `taken` batches into `epoch`.
    pub fn new(
        lengths: Vec<usize>,
        batch_size: usize,
        seed: u64,
        epoch: u64,
        taken: usize,
    ) -> Self {
        let order = bucket_batches(&lengths, batch_size, seed, epoch);
        EpochBatches {
            lengths,
            batch_size,
            seed,
            epoch,
            taken,
            order,
        }
    }

    /// `(epoch, batches taken in it)`.
    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.taken)
    }
}

impl Iterator for EpochBatches {
    type Item = Vec<usize>;

    /// The next batch's example indices, starting the next epoch when this one is done
    /// (`None` only when there are no examples).
    fn next(&mut self) -> Option<Vec<usize>> {
        if self.taken >= self.order.len() {
            if self.lengths.is_empty() {
                return None;
            }
            self.epoch += 1;
            self.taken = 0;
            self.order = bucket_batches(&self.lengths, self.batch_size, self.seed, self.epoch);
        }
        self.taken += 1;
        Some(self.order[self.taken - 1].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Reference output of SplitMix64 seeded with 0 (as published with the algorithm).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn below_and_f64_in_range() {
        let mut r = SplitMix64::new(7);
        for n in 1..50 {
            assert!(r.below(n) < n);
        }
        assert_eq!(r.below(0), 0);
        for _ in 0..1000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn shuffle_is_a_permutation_and_reproducible() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        SplitMix64::new(3).shuffle(&mut a);
        SplitMix64::new(3).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn pinned_batches() {
        // Pins the exact output: if this changes, resumed runs would see different batches.
        let lengths = [5, 1, 4, 2, 3, 9, 7, 8, 6, 0];
        let b = bucket_batches(&lengths, 3, 42, 1);
        let flat: Vec<usize> = b.iter().flatten().copied().collect();
        let mut sorted = flat.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(b, bucket_batches(&lengths, 3, 42, 1));
        assert_eq!(
            b,
            vec![vec![8, 6, 7], vec![4, 2, 0], vec![5], vec![9, 1, 3]]
        );
        // All 10 fit in one window, so batches are consecutive runs of the sorted lengths.
        let mut lens: Vec<Vec<usize>> = b
            .iter()
            .map(|v| v.iter().map(|&i| lengths[i]).collect())
            .collect();
        lens.sort();
        assert_eq!(
            lens,
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]
        );
    }

    #[test]
    fn empty_and_zero_batch() {
        assert!(bucket_batches(&[], 4, 0, 0).is_empty());
        let b = bucket_batches(&[1, 2, 3], 0, 0, 0);
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn epoch_batches_continue_from_a_saved_position() {
        let lengths: Vec<usize> = (0..10).map(|i| i % 4 + 1).collect();
        let mut it = EpochBatches::new(lengths.clone(), 3, 5, 0, 0);
        let all: Vec<Vec<usize>> = it.by_ref().take(9).collect();
        // Epoch 0 has 4 batches (3 + 3 + 3 + 1), then epoch 1, then epoch 2.
        assert_eq!(all[..4], bucket_batches(&lengths, 3, 5, 0)[..]);
        assert_eq!(all[4..8], bucket_batches(&lengths, 3, 5, 1)[..]);
        assert_eq!(it.position(), (2, 1));
        // Resuming at a position gives the same continuation.
        let mut resumed = EpochBatches::new(lengths, 3, 5, 1, 2);
        assert_eq!(resumed.next().unwrap(), all[6]);
        assert!(EpochBatches::new(Vec::new(), 3, 5, 0, 0).next().is_none());
    }
}
