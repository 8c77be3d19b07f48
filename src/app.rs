//! Assembly: open the store, the KMS and the key ring and build the app state
//! (`crate::server` serves it). One [`AppState`] per server, passed to handlers
//! with axum's `State`; there are no globals, so tests run several servers in
//! one process.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context as _;

use crate::audit::Audit;
use crate::authorize::Authorizer;
use crate::clock::SharedClock;
use crate::config::{Config, PepperSource, Secret};
use crate::grant::TokenService;
use crate::keyring::KeyRing;
use crate::keyring::kms::Kms;
use crate::keyring::kms::local::read_or_create_secret_file;
use crate::keyring::lifecycle::Lifecycle;
use crate::keyring::scheduler::SchedulerStats;
use crate::limits::Limits;
use crate::limits::lockout::Lockout;
use crate::metrics::Metrics;
use crate::oauth::Alg;
use crate::oauth::wire::Discovery;
use crate::readiness::Probe;
use crate::secret::Secrets;
use crate::session::Sessions;
use crate::store::Store;
use crate::token::Minter;

/// What every command needs: the database, the pepper-keyed secrets and the KMS.
#[derive(Clone)]
pub struct Services {
    pub store: Store,
    pub secrets: Secrets,
    pub kms: Kms,
    pub lifecycle: Lifecycle,
}

impl Services {
    /// Connect, migrate, and open the KMS. Used by `serve` and by the CLI.
    pub async fn open(config: &Config, clock: SharedClock) -> anyhow::Result<Self> {
        let store = Store::connect(&config.database)
            .await
            .context("cannot open the database")?;
        store
            .migrate()
            .await
            .context("cannot migrate the database")?;
        let pepper = match &config.security.pepper {
            PepperSource::Provided(p) => p.clone(),
            PepperSource::GenerateInto(path) => {
                let bytes = read_or_create_secret_file(path, 32).with_context(|| {
                    format!("cannot read or create the pepper file {}", path.display())
                })?;
                Secret::new(bytes.to_vec())
            }
        };
        let hashing = config.security.hashing.clone();
        let secrets = tokio::task::spawn_blocking(move || Secrets::new(pepper, &hashing))
            .await
            .context("pepper setup task")??;
        let kms = Kms::open(&config.keys)
            .await
            .context("cannot open the KMS")?;
        let lifecycle = Lifecycle::new(store.clone(), kms.clone(), clock, config.keys.clone());
        Ok(Self {
            store,
            secrets,
            kms,
            lifecycle,
        })
    }
}

/// Everything a request handler reaches, shared by every request: cloning it
/// is one reference-count increment (axum clones the state for every
/// extractor and layer, so a by-value state would copy the configuration,
/// the token service and the stores on every request).
#[derive(Clone)]
pub struct AppState(Arc<AppServices>);

impl std::ops::Deref for AppState {
    type Target = AppServices;

    fn deref(&self) -> &AppServices {
        &self.0
    }
}

pub struct AppServices {
    pub config: Arc<Config>,
    pub store: Store,
    pub ring: Arc<KeyRing>,
    pub tokens: TokenService,
    pub authorizer: Authorizer,
    pub sessions: Sessions,
    pub lifecycle: Lifecycle,
    pub clock: SharedClock,
    pub stats: Arc<SchedulerStats>,
    /// The discovery document, serialised once.
    pub discovery_json: bytes::Bytes,
    /// JWKS responses served (200 and 304), for health output and tests.
    pub jwks_requests: Arc<AtomicU64>,
    /// The checks behind `/readyz`.
    pub readiness: Arc<Probe>,
    pub audit: Audit,
    pub metrics: Metrics,
}

impl AppState {
    /// Open everything and make sure each algorithm has a signing key.
    pub async fn build(config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        let services = Services::open(&config, clock.clone()).await?;
        // Bootstrap (first start) and any transition that came due while no
        // server ran. A KMS failure here is not fatal if keys already exist.
        match services.lifecycle.tick("startup", &[]).await {
            Ok(report) => {
                for (alg, e) in report.failures {
                    tracing::error!(alg, error = %e, "could not create a due key at start-up");
                }
            }
            Err(e) => tracing::error!(error = %e, "key lifecycle pass failed at start-up"),
        }
        let ring = Arc::new(
            KeyRing::load(
                services.store.clone(),
                services.kms.clone(),
                clock.clone(),
                config.keys.clone(),
            )
            .await
            .context("cannot load the key ring")?,
        );
        let minter = Minter::new(
            &config.issuer,
            config.tokens.clone(),
            ring.clone(),
            clock.clone(),
        );
        let metrics = Metrics::new();
        let limits = Limits::new(config.rate_limit.clone()).await;
        let limits_for_readiness = limits.clone();
        limits.observe_with(
            metrics.clone(),
            Audit::new(services.store.clone(), clock.clone()),
        );
        let lockout = Lockout::new(
            config.lockout.clone(),
            limits.clone(),
            services.store.clone(),
        );
        let tokens = TokenService::new(
            services.store.clone(),
            services.secrets.clone(),
            minter,
            clock.clone(),
            config.tokens.clone(),
            metrics.clone(),
            limits,
            lockout,
        );
        let sessions = Sessions::new(
            services.store.clone(),
            ring.clone(),
            clock.clone(),
            &config.issuer,
            tokens.clone(),
            config.tokens.revocation_poll_millis > 0,
        );
        let authorizer = Authorizer::new(
            services.store.clone(),
            tokens.clone(),
            ring.clone(),
            clock.clone(),
            config.authorize.clone(),
            &config.issuer,
        );
        let discovery = Discovery::new(
            &config.issuer,
            Alg::ALL.iter().map(|a| a.as_str()).collect(),
        );
        let discovery_json = axum::body::Bytes::from(serde_json::to_vec(&discovery)?);
        let stats = Arc::new(SchedulerStats::default());
        let readiness = Arc::new(
            Probe::new(
                services.store.clone(),
                ring.clone(),
                stats.clone(),
                std::time::Duration::from_secs(config.keys.reload_interval.as_u64()),
            )
            .with_limits(limits_for_readiness),
        );
        let audit = Audit::new(services.store.clone(), clock.clone());
        Ok(Self(Arc::new(AppServices {
            audit,
            config: Arc::new(config),
            store: services.store,
            ring,
            tokens,
            authorizer,
            sessions,
            lifecycle: services.lifecycle,
            clock,
            stats,
            discovery_json,
            jwks_requests: Arc::new(AtomicU64::new(0)),
            readiness,
            metrics,
        })))
    }
}
