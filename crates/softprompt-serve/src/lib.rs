//! `softprompt serve`: many soft prompts over one frozen model, behind an OpenAI-compatible
//! HTTP API. A thin router over [`softprompt_core::infer::scheduler`]: requests for any prompts
//! share decode batches there; this crate parses, validates, limits and streams.
//!
//! Endpoints: `POST /v1/completions` (`model` names a prompt, or the base model), `POST
//! /v1/chat/completions` (the model's chat template), `GET /v1/models`, `POST /v1/classify`
//! (rank over the label words the prompt was trained with), `GET /health`, `/health/live`,
//! `/health/ready`, `GET /metrics` (Prometheus), the admin API `GET/POST /admin/prompts`,
//! `PUT/DELETE /admin/prompts/{name}` (bearer key; PUT uploads into the store), and the
//! browser playground at `/` (`playground`: try, train, inspect). Every request gets one
//! access-log line (`tracing`, target `softprompt_serve::access`).
//!
//! Modules: `router` (routes, access log), one per endpoint group (`completions` with its SSE
//! stream and `detok`, `chat`, `classify`, `admin`, `health`, `metrics`), `types` (request
//! bodies), `state` (what the handlers share), `config`, `error` (one error enum, mapped to
//! HTTP statuses), `registry` (the prompts and the shared store they are watched in),
//! `loadtest` (the client side).

mod admin;
mod chat;
mod classify;
mod completions;
pub mod config;
mod detok;
pub mod error;
mod health;
pub mod loadtest;
mod metrics;
mod playground;
pub mod registry;
mod router;
mod state;
mod types;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use softprompt_core::infer::scheduler::{Scheduler, SchedulerConfig};
use softprompt_core::model::FrozenModel;

pub use config::ServeConfig;
pub use error::ServeError;
use metrics::Metrics;
use registry::{Registry, ScanReport};
use state::AppState;

/// A loaded server, ready to run.
pub struct Server {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
}

impl Server {
    /// Load the prompts, start the scheduler, bind. Prompts that fail to load are reported
    /// (name, reason) and skipped.
    pub async fn bind(
        cfg: ServeConfig,
        model: FrozenModel,
    ) -> Result<(Server, Vec<(String, ServeError)>), ServeError> {
        let server = Server::bind_unready(cfg, model).await?;
        let failed = server.scan_store().await?.failed;
        Ok((server, failed))
    }

    /// Start the scheduler and bind, without scanning the prompt folder: the server answers
    /// `/health/live` (and 503 elsewhere) until [`Server::scan_store`] has run once.
    pub async fn bind_unready(
        cfg: ServeConfig,
        mut model: FrozenModel,
    ) -> Result<Server, ServeError> {
        // Batch-invariant kernels: a request's output never depends on its batch mates.
        model.llama.exact = true;
        let model = Arc::new(model);
        let registry = Registry::new(
            model.clone(),
            cfg.prompts.as_deref(),
            &cfg.base_name,
            cfg.max_prompts,
        )?;
        let scheduler = Scheduler::start(
            model.clone(),
            SchedulerConfig {
                max_batch: cfg.max_batch,
                ..SchedulerConfig::default()
            },
        );
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|e| ServeError::Internal(format!("bind {}: {e}", cfg.bind)))?;
        let chat = match &model.chat_template {
            Some(t) => Some(chat::chat_env(t).map_err(|e| {
                ServeError::Internal(format!("the model's chat template does not compile: {e}"))
            })?),
            None => None,
        };
        let state = Arc::new(AppState {
            chat,
            cfg,
            model,
            registry,
            scheduler,
            in_flight: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
            metrics: Metrics::default(),
            ready: AtomicBool::new(false),
            jobs: Default::default(),
        });
        Ok(Server { state, listener })
    }

    /// Scan the prompt folder (see [`registry`]); the server is ready once a scan read it.
    pub async fn scan_store(&self) -> Result<ScanReport, ServeError> {
        let r = scan(&self.state).await?;
        self.state.ready.store(true, Ordering::Release);
        Ok(r)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn prompts_loaded(&self) -> usize {
        self.state.registry.len()
    }

    /// Serve until `shutdown` resolves, then stop accepting and drain in-flight requests.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = router::router(self.state.clone());
        let state = self.state.clone();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                // Not ready while draining: load balancers send new requests elsewhere.
                state.ready.store(false, Ordering::Release);
            })
            .await
    }
}

/// One scan of the store on a blocking thread.
async fn scan(state: &Arc<AppState>) -> Result<ScanReport, ServeError> {
    let s2 = state.clone();
    state::blocking(move || s2.registry.scan()).await?
}

/// Rescan the store every `every`, logging what changed (never returns). A store that cannot
/// be read is logged and the loaded prompts kept: a shared mount's hiccup must not take every
/// replica out of service at once.
async fn watch(state: Arc<AppState>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match scan(&state).await {
            Ok(r) => {
                for n in &r.loaded {
                    tracing::info!(prompt = %n, "store: loaded");
                }
                for n in &r.unloaded {
                    tracing::info!(prompt = %n, "store: unloaded");
                }
                for (n, e) in &r.failed {
                    tracing::warn!(prompt = %n, "store: skipped until it changes: {e}");
                }
            }
            Err(e) => tracing::warn!("store: scan failed, keeping the loaded prompts: {e}"),
        }
    }
}

/// Run a server to completion on its own runtime: bind (answering `/health/live` at once),
/// scan the prompt folder, report through `on_ready` (address, prompts loaded, prompts that
/// failed), keep watching the folder when `cfg.watch_interval` is set, serve until SIGTERM or
/// Ctrl-C, then stop accepting and drain the requests in flight.
pub fn serve_blocking(
    cfg: ServeConfig,
    model: FrozenModel,
    on_ready: impl FnOnce(SocketAddr, usize, &[(String, ServeError)]),
) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("softprompt-http")
        .build()
        .map_err(|e| ServeError::Internal(format!("tokio runtime: {e}")))?;
    rt.block_on(async move {
        let watch_every = cfg.watch_interval;
        let server = Server::bind_unready(cfg, model).await?;
        let addr = server
            .local_addr()
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let state = server.state.clone();
        let serving = tokio::spawn(server.run(shutdown_signal()));
        let failed = scan(&state).await?.failed;
        state.ready.store(true, Ordering::Release);
        on_ready(addr, state.registry.len(), &failed);
        if let Some(every) = watch_every {
            tokio::spawn(watch(state, every));
        }
        serving
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?
            .map_err(|e| ServeError::Internal(e.to_string()))
    })
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down, draining requests in flight");
}
