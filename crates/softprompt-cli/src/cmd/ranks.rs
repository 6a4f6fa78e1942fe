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
    use anyhow::{Context, Result};
    use mpi::collective::SystemOperation;
    use mpi::traits::{Communicator, CommunicatorCollectives};
    use softprompt_core::train::Reducer;

    /// MPI_COMM_WORLD; MPI is finalized when dropped (after the communicator).
    pub struct World {
        world: mpi::topology::SimpleCommunicator,
        _universe: mpi::environment::Universe,
    }

    impl World {
        pub fn init() -> Result<World> {
            // Funneled: only this thread calls MPI (rayon's workers never do).
            let (universe, _) =
                mpi::initialize_with_threading(mpi::Threading::Funneled).context("MPI_Init")?;
            Ok(World {
                world: universe.world(),
                _universe: universe,
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
            let send = buf.to_vec();
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
    }
}
