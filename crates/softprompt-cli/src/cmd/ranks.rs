//! `softprompt train` under `mpirun -np N`: the ranks and their all-reduce. With the `mpi`
//! feature, rsmpi over the system's MPI (OpenMPI); without it a multi-rank launch is refused
//! (N independent runs would write over one another's output).

use anyhow::Result;
use softprompt_core::train::{Reducer, Single};

/// Ranks in this launch, as the MPI launcher tells its processes (1 outside one).
fn launched_ranks() -> usize {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(1)
}

/// The reducer of this process: MPI's world when launched with several ranks.
pub fn reducer() -> Result<Box<dyn Reducer>> {
    let n = launched_ranks();
    if n <= 1 {
        return Ok(Box::new(Single));
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Box::new(mpi_world::World::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        anyhow::bail!(
            "launched with {n} MPI ranks, but this softprompt was built without MPI: \
             cargo build -p softprompt-cli --features mpi"
        )
    }
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use std::cell::Cell;
    use std::time::Instant;

    use anyhow::{Context, Result};
    use mpi::collective::SystemOperation;
    use mpi::traits::{Communicator, CommunicatorCollectives};
    use softprompt_core::train::Reducer;

    /// MPI_COMM_WORLD; MPI is finalized when dropped (after the communicator).
    pub struct World {
        world: mpi::topology::SimpleCommunicator,
        _universe: mpi::environment::Universe,
        /// Seconds waiting at the barrier (for the slowest rank), seconds in the all-reduce
        /// itself, all-reduces of the gradient.
        cost: Cell<(f64, f64, u64)>,
    }

    impl World {
        pub fn init() -> Result<World> {
            // Funneled: only this thread calls MPI (rayon's workers never do).
            let (universe, _) =
                mpi::initialize_with_threading(mpi::Threading::Funneled).context("MPI_Init")?;
            Ok(World {
                world: universe.world(),
                _universe: universe,
                cost: Cell::new((0.0, 0.0, 0)),
            })
        }
    }

    impl Reducer for World {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f64]) -> softprompt_core::Result<()> {
            // A barrier first, so the all-reduce's own cost is told apart from waiting for
            // the slowest rank (a few microseconds on one machine).
            let t0 = Instant::now();
            self.world.barrier();
            let t1 = Instant::now();
            let send = buf.to_vec();
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
            if buf.len() > 1 {
                let (w, r, n) = self.cost.get();
                self.cost.set((
                    w + (t1 - t0).as_secs_f64(),
                    r + t1.elapsed().as_secs_f64(),
                    n + 1,
                ));
            }
            Ok(())
        }
        fn summary(&self) -> Option<String> {
            let (w, r, n) = self.cost.get();
            (n > 0).then(|| {
                format!(
                    "{n} gradient all-reduces of {} ranks: {:.3} ms each, {:.1} ms each waiting for the slowest rank",
                    self.size(),
                    r / n as f64 * 1e3,
                    w / n as f64 * 1e3
                )
            })
        }
    }
}
