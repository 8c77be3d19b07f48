//! Secrets at rest and in comparison: password hashing, client-secret and
//! refresh-token digests, random identifiers.
//!
//! Human passwords get argon2id (OWASP parameters, m=19 MiB, t=2, p=1) keyed
//! with the pepper, which lives outside the database. Machine-generated secrets
//! (client secrets, refresh tokens) carry 256 bits of entropy, so a fast digest
//! is enough and a slow hash would only cost latency: client secrets are
//! HMAC-SHA-256 under a key derived from the pepper, refresh tokens are SHA-256.
//! Every comparison of secret-derived bytes is constant time. Nothing here logs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::config::{HashingConfig, Secret};

/// OWASP's argon2id baseline: 19 MiB, two passes, one lane.
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;
/// Length of the hash latchkey writes (argon2's default output length).
const ARGON2_OUT_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the operating system's random number generator failed")]
    Rng,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The hashing queue is full or the wait deadline passed: the caller is
    /// told to come back, the work is not queued.
    #[error("password hashing is saturated; retry in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
}

/// One argon2 computation per CPU keeps every core busy under a login flood
/// while memory stays bounded (cores × 19 MiB). Two per core measured no
/// faster (argon2 is bound by memory bandwidth) and took CPU from
/// everything else.
pub fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The nice value of the hashing threads (see [`HashPool`]).
pub const HASH_THREAD_NICE: i32 = 10;

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The argon2 work bound and its memory: at most `concurrency` computations
/// run, at most `queue` callers wait, each for at most `wait`.
///
/// The computations run on `concurrency` threads of their own, with at most
/// one reused 19 MiB block buffer per thread, allocated when first needed and
/// kept for the life of the pool: memory is bounded by construction
/// (`concurrency` × 19 MiB) and never handed back and forth between the allocator's
/// per-thread arenas (which is what made RSS grow with the number of
/// blocking-pool threads). On Linux those threads run at nice
/// [`HASH_THREAD_NICE`], which ranks them below latchkey's other threads,
/// and rest after a computation that was kept waiting for a CPU
/// ([`Yield`]), which makes them give way to other processes too: a
/// password flood then takes only the CPU that refreshes, JWKS, discovery
/// and the database leave idle, instead of an equal share of every core,
/// while a flood alone still runs at full speed.
///
/// However many threads there are, no more of them hash at once than the
/// process has CPUs at that moment ([`CoreGate`]): a server confined to fewer
/// cores than it started with (`taskset`, a cgroup's CPU quota) would
/// otherwise time-slice several 19 MiB computations on one core, each
/// evicting the others' blocks from the cache.
struct HashPool {
    permits: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    queue: usize,
    wait: Duration,
    jobs: std::sync::mpsc::Sender<Job>,
    /// Buffers allocated so far (at most one per hashing thread).
    buffers: Arc<AtomicUsize>,
    /// Time the hashing threads have rested to yield the CPU ([`Yield`]).
    yielded_micros: Arc<AtomicU64>,
}

impl HashPool {
    fn new(cfg: &HashingConfig) -> Result<Self, SecretError> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let buffers = Arc::new(AtomicUsize::new(0));
        let yielded_micros = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(CoreGate::default());
        for i in 0..cfg.concurrency {
            let (rx, buffers, gate) = (rx.clone(), buffers.clone(), gate.clone());
            let yielded = yielded_micros.clone();
            std::thread::Builder::new()
                .name(format!("latchkey-argon2-{i}"))
                .spawn(move || hashing_thread(&rx, &buffers, &gate, &yielded))
                .map_err(|e| SecretError::Hash(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self {
            permits: tokio::sync::Semaphore::new(cfg.concurrency),
            waiting: AtomicUsize::new(0),
            queue: cfg.queue,
            wait: cfg.wait,
            jobs: tx,
            buffers,
            yielded_micros,
        })
    }

    fn busy(&self) -> SecretError {
        SecretError::Busy {
            retry_after_secs: self.wait.as_secs().max(1),
        }
    }

    /// Run `f` on a hashing thread with its block buffer, once a permit is
    /// free; refuse at once when the queue is full, or after the deadline.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Vec<Block>) -> Result<T, SecretError> + Send + 'static,
    ) -> Result<T, SecretError> {
        let permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                // A waiter slot first, so the queue never grows past its bound.
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(self.busy());
                }
                let acquired = tokio::time::timeout(self.wait, self.permits.acquire()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match acquired {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => return Err(SecretError::Hash(e.to_string())),
                    Err(_) => return Err(self.busy()),
                }
            }
        };
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |buffer| {
            let _ = done.send(f(buffer));
        });
        self.jobs
            .send(job)
            .map_err(|_| SecretError::Hash("the hashing threads stopped".into()))?;
        // A permit is held until the computation is over, so at most
        // `concurrency` jobs are ever handed to the threads.
        let r = result
            .await
            .map_err(|_| SecretError::Hash("a hashing thread stopped".into()));
        drop(permit);
        r?
    }
}

/// Admits at most as many running computations as the process may use CPUs
/// now (`available_parallelism`: the affinity mask and the cgroup quota, read
/// again for every computation, a few microseconds against milliseconds of
/// hashing), and lends each the block buffer used last. A waiting thread looks
/// again at least every [`CoreGate::RECHECK`], so a widened CPU set is used
/// without waiting for a computation to end.
///
/// The buffers are a stack, not one per thread: when computations take turns,
/// each reuses the buffer the previous one just filled, whose pages are
/// mapped and partly still in the cache. Buffers are never freed, and at most
/// one exists per hashing thread, so the memory bound is unchanged.
#[derive(Default)]
struct CoreGate {
    state: Mutex<GateState>,
    freed: Condvar,
}

#[derive(Default)]
struct GateState {
    running: usize,
    /// Buffers not lent out, the most recently used last.
    idle: Vec<Vec<Block>>,
}

impl CoreGate {
    const RECHECK: Duration = Duration::from_millis(100);

    fn cores() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }

    /// Wait for a free core; the slot (and its buffer) is given back when
    /// dropped.
    /// The CPU count is read before the lock is taken: it reads cgroup files,
    /// which a thread giving its slot back should not wait for.
    fn enter(&self) -> CoreSlot<'_> {
        loop {
            let cores = Self::cores();
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.running < cores {
                state.running += 1;
                let buffer = state.idle.pop().unwrap_or_default();
                return CoreSlot { gate: self, buffer };
            }
            drop(
                self.freed
                    .wait_timeout(state, Self::RECHECK)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }
}

struct CoreSlot<'a> {
    gate: &'a CoreGate,
    buffer: Vec<Block>,
}

impl Drop for CoreSlot<'_> {
    fn drop(&mut self) {
        let mut state = self
            .gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.running = state.running.saturating_sub(1);
        state.idle.push(std::mem::take(&mut self.buffer));
        drop(state);
        self.gate.freed.notify_one();
    }
}

/// One hashing thread: lower its priority, then run jobs until the pool is
/// dropped, each once a core is free, with the buffer the gate lends, and
/// after each the rest [`Yield`] owes (the slot is given back first).
fn hashing_thread(
    rx: &Mutex<std::sync::mpsc::Receiver<Job>>,
    buffers: &AtomicUsize,
    gate: &CoreGate,
    yielded_micros: &AtomicU64,
) {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASH_THREAD_NICE)
    {
        tracing::warn!(error = %e, "cannot lower the priority of a hashing thread");
    }
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let mut slot = gate.enter();
        let had = !slot.buffer.is_empty();
        let started = Started::now();
        job(&mut slot.buffer);
        let rest = started.rest();
        if !had && !slot.buffer.is_empty() {
            buffers.fetch_add(1, Ordering::Relaxed);
        }
        drop(slot);
        if !rest.is_zero() {
            yielded_micros.fetch_add(
                u64::try_from(rest.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            std::thread::sleep(rest);
        }
    }
}

/// How a hashing thread yields the CPU to everything else when the CPU is
/// contended: after each computation it rests before taking the next one.
///
/// Nice only ranks the hashing threads against latchkey's own threads; a
/// database or anything else in another scheduling group (a systemd
/// service's cgroup, a session's autogroup) shares the cores with latchkey's
/// group as an equal, hashing included. What a thread can see wherever it
/// runs is how long its computation was kept waiting for a CPU: its
/// wall-clock time minus its own CPU time (`CLOCK_THREAD_CPUTIME_ID`). Up to
/// [`Yield::TOLERATED`] of the CPU time is the ordinary cost of sharing a
/// core with latchkey's own request handling and is not answered; beyond it,
/// the thread rests [`Yield::FACTOR`] times the excess, at most
/// [`Yield::CAP`] times the computation's CPU time. Hashing then backs off
/// until its computations stop waiting, which is when it uses only CPU
/// nothing else wants; on a host with idle CPU no computation waits and
/// logins run at full speed. The cap keeps logins going on a host saturated
/// by other work (each thread still hashes at least 1/17 of the time), and
/// a login waiting for a resting thread waits at most one rest.
///
/// Measured on the benchmark's mixed load (2 cores, PostgreSQL on the same
/// cores): refresh p99 under the password flood fell from 37–60 ms to
/// 12.7–14.2 ms against 6.7–7.7 ms without the flood, at 15–18 logins/s
/// instead of 34; a password flood alone on one core never rested.
struct Yield;

impl Yield {
    const TOLERATED: f64 = 0.25;
    const FACTOR: u32 = 8;
    const CAP: u32 = 16;

    /// The rest owed after a computation of `cpu` CPU time that took `wall`.
    fn rest(wall: Duration, cpu: Duration) -> Duration {
        let waited = wall.saturating_sub(cpu);
        let excess = waited.saturating_sub(cpu.mul_f64(Self::TOLERATED));
        (excess * Self::FACTOR).min(cpu * Self::CAP)
    }
}

/// When a computation started, in wall-clock time and in the CPU time of the
/// thread running it.
struct Started {
    wall: std::time::Instant,
    cpu: Option<Duration>,
}

impl Started {
    fn now() -> Self {
        Self {
            wall: std::time::Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// The rest owed for the computation since `now` ([`Yield`]).
    fn rest(&self) -> Duration {
        let wall = self.wall.elapsed();
        match (self.cpu, thread_cpu_time()) {
            (Some(start), Some(end)) => Yield::rest(wall, end.saturating_sub(start)),
            _ => Duration::ZERO,
        }
    }
}

/// The CPU time the calling thread has used (Linux; elsewhere hashing never
/// rests).
#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Option<Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(Duration::new(
        u64::try_from(t.tv_sec).ok()?,
        u32::try_from(t.tv_nsec).ok()?,
    ))
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// `n` bytes from the operating system's CSPRNG (`getrandom(2)`, through
/// ring). OpenSSL's DRBG would serve them from user space, but under OpenSSL 3
/// it asks for the process id (a system call) on every draw to detect a fork,
/// and takes a lock: 0.6 µs against 0.2 µs for 16 bytes here.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, SecretError> {
    let mut buf = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| SecretError::Rng)?;
    Ok(buf)
}

/// A 256-bit random value, base64url without padding (43 characters).
pub fn random_token() -> Result<String, SecretError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes(32)?))
}

/// A 128-bit random identifier (user ids, family ids, `jti`).
pub fn random_id() -> Result<String, SecretError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes(16)?))
}

/// SHA-256 through OpenSSL's incremental hasher: under OpenSSL 3 the EVP
/// interface and the one-shot `SHA256()` fetch the algorithm on every call.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    let mut h = openssl::sha::Sha256::new();
    h.update(data);
    h.finish().to_vec()
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// HMAC through OpenSSL's EVP interface: the oracle [`HmacKey`] is tested
/// against.
#[cfg(test)]
fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let pkey = openssl::pkey::PKey::hmac(key)?;
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey)?;
    signer.update(data)?;
    signer.sign_to_vec()
}

/// HMAC-SHA-256 (RFC 2104) under one fixed key, with the inner and outer
/// padded-key blocks absorbed once: each MAC is then two short SHA-256
/// computations. Under OpenSSL 3 a MAC through `PKey::hmac` + `Signer`
/// builds a key object and fetches the algorithm on every call, which cost
/// more than the rest of a client-secret check; client authentication and
/// the refresh successor run on every token request.
#[derive(Clone)]
struct HmacKey {
    inner: openssl::sha::Sha256,
    outer: openssl::sha::Sha256,
}

impl HmacKey {
    const BLOCK: usize = 64;

    fn new(key: &[u8]) -> Self {
        let mut block = [0u8; Self::BLOCK];
        if key.len() > Self::BLOCK {
            block[..32].copy_from_slice(&sha256(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut inner = openssl::sha::Sha256::new();
        let mut outer = openssl::sha::Sha256::new();
        inner.update(&block.map(|b| b ^ 0x36));
        outer.update(&block.map(|b| b ^ 0x5c));
        block.fill(0);
        Self { inner, outer }
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        inner.update(data);
        let mut outer = self.outer.clone();
        outer.update(&inner.finish());
        outer.finish()
    }
}

/// Hashing and checking of every secret latchkey stores, keyed by the pepper.
#[derive(Clone)]
pub struct Secrets {
    pepper: Arc<Secret>,
    /// HMAC key for client secrets, derived from the pepper so that one secret
    /// input serves both purposes without reusing the same key.
    client_key: Arc<HmacKey>,
    /// HMAC key that derives a refresh token's successor from the token itself
    /// (retry-safe refresh; see [`Secrets::successor_token`]).
    successor_key: Arc<HmacKey>,
    /// A valid hash of a random password, verified against when a username is
    /// unknown so that both failures cost the same.
    dummy_hash: Arc<String>,
    /// Bounds the argon2 computations in flight, the callers waiting for one,
    /// and the memory they use.
    pool: Arc<HashPool>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets([redacted])")
    }
}

impl Secrets {
    /// Logins waiting for an argon2 slot right now (the queue depth metric).
    pub fn hash_queue_depth(&self) -> usize {
        self.pool.waiting.load(Ordering::Relaxed)
    }

    /// Block buffers the hashing threads have allocated (the memory metric).
    pub fn hash_buffers(&self) -> usize {
        self.pool.buffers.load(Ordering::Relaxed)
    }

    /// Microseconds the hashing threads have rested to yield a contended
    /// CPU since start (the `argon2_yield_seconds_total` metric).
    pub fn hash_yield_micros(&self) -> u64 {
        self.pool.yielded_micros.load(Ordering::Relaxed)
    }

    pub fn new(pepper: Secret, hashing: &HashingConfig) -> Result<Self, SecretError> {
        let root = HmacKey::new(pepper.expose());
        let client_key = HmacKey::new(&root.mac(b"latchkey client-secret v1"));
        let successor_key = HmacKey::new(&root.mac(b"latchkey refresh-successor v1"));
        let pepper = Arc::new(pepper);
        let pool = Arc::new(HashPool::new(hashing)?);
        let dummy_password = random_token()?;
        // Its buffer is freed at once (a single large allocation goes back
        // to the OS): an idle server holds no argon2 memory; the pool fills
        // on the first logins.
        let dummy_hash = hash_password_in(&pepper, &dummy_password, &mut Vec::new())?;
        Ok(Self {
            pepper,
            client_key: Arc::new(client_key),
            successor_key: Arc::new(successor_key),
            dummy_hash: Arc::new(dummy_hash),
            pool,
        })
    }

    /// argon2id(pepper) of a password, as a PHC string; runs off the async runtime.
    pub async fn hash_password(&self, password: String) -> Result<String, SecretError> {
        let pepper = self.pepper.clone();
        self.pool
            .run(move |blocks| hash_password_in(&pepper, &password, blocks))
            .await
    }

    /// Check a password against a stored PHC string, off the async runtime. With
    /// `stored = None` (unknown user) the dummy hash is checked instead and the
    /// answer is always `false`, so both paths do the same work.
    pub async fn verify_password(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, SecretError> {
        let pepper = self.pepper.clone();
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.as_str().to_string());
        let ok = self
            .pool
            .run(move |blocks| verify_password_in(&pepper, &password, &stored, blocks))
            .await?;
        Ok(known && ok)
    }

    /// A new client secret and the digest to store for it.
    pub fn new_client_secret(&self) -> Result<(String, Vec<u8>), SecretError> {
        let secret = random_token()?;
        let digest = self.client_secret_digest(&secret);
        Ok((secret, digest))
    }

    /// The successor of a refresh token: HMAC-SHA-256 of the presented token
    /// under a key derived from the pepper, base64url (43 characters, 256
    /// bits). Deterministic, so every presentation of one token — a retry
    /// after a lost response, or concurrent tabs — is answered with the same
    /// successor without the server ever storing a token in the clear; and
    /// unpredictable to anyone without the pepper, like a random token.
    pub fn successor_token(&self, presented: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.successor_key.mac(presented.as_bytes()))
    }

    pub fn client_secret_digest(&self, secret: &str) -> Vec<u8> {
        self.client_key.mac(secret.as_bytes()).to_vec()
    }

    /// Constant-time check of a presented client secret against its stored digest.
    pub fn verify_client_secret(&self, presented: &str, stored: &[u8]) -> bool {
        ct_eq(&self.client_secret_digest(presented), stored)
    }
}

/// The digest under which a refresh token is stored and looked up.
pub fn refresh_token_digest(token: &str) -> Vec<u8> {
    sha256(token.as_bytes())
}

fn argon2<'p>(pepper: &'p Secret, params: Params) -> Result<Argon2<'p>, SecretError> {
    Argon2::new_with_secret(pepper.expose(), Algorithm::Argon2id, Version::V0x13, params)
        .map_err(|e| SecretError::Hash(e.to_string()))
}

fn hash_err(e: impl std::fmt::Display) -> SecretError {
    SecretError::Hash(e.to_string())
}

/// Grow `blocks` to at least `n` blocks (only the first use of a pooled
/// buffer allocates; a stored hash with a larger `m` than latchkey writes
/// grows that one buffer once).
fn blocks_for(blocks: &mut Vec<Block>, n: usize) -> &mut [Block] {
    if blocks.len() < n {
        blocks.resize(n, Block::new());
    }
    &mut blocks[..n]
}

/// argon2id(pepper) of `password` with a fresh salt, computed in `blocks`,
/// as the PHC string the argon2 crate itself would write.
fn hash_password_in(
    pepper: &Secret,
    password: &str,
    blocks: &mut Vec<Block>,
) -> Result<String, SecretError> {
    let salt = SaltString::encode_b64(&random_bytes(16)?).map_err(hash_err)?;
    let mut salt_raw = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_raw).map_err(hash_err)?;
    let params =
        Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(ARGON2_OUT_LEN)).map_err(hash_err)?;
    let mut out = [0u8; ARGON2_OUT_LEN];
    let memory = blocks_for(blocks, params.block_count());
    argon2(pepper, params.clone())?
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, memory)
        .map_err(hash_err)?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(hash_err)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(hash_err)?),
    };
    Ok(phc.to_string())
}

/// Recompute a stored PHC string's hash with its own parameters and salt and
/// our pepper, in `blocks`, and compare in constant time.
fn verify_password_in(
    pepper: &Secret,
    password: &str,
    stored: &str,
    blocks: &mut Vec<Block>,
) -> Result<bool, SecretError> {
    let parsed = PasswordHash::new(stored).map_err(hash_err)?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return Err(SecretError::Hash(format!(
            "unsupported password hash algorithm {}",
            parsed.algorithm
        )));
    }
    let version = Version::try_from(parsed.version.unwrap_or(0x13)).map_err(hash_err)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(SecretError::Hash("stored hash lacks salt or output".into()));
    };
    // The stored PHC string carries its own parameters; the pepper is ours.
    let params = Params::try_from(&parsed).map_err(hash_err)?;
    let mut salt_raw = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_raw).map_err(hash_err)?;
    let mut out = vec![0u8; expected.len()];
    let memory = blocks_for(blocks, params.block_count());
    Argon2::new_with_secret(pepper.expose(), Algorithm::Argon2id, version, params)
        .map_err(hash_err)?
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, memory)
        .map_err(hash_err)?;
    Ok(ct_eq(&out, expected.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn no_more_computations_run_than_the_process_has_cores() {
        let gate = Arc::new(CoreGate::default());
        let cores = CoreGate::cores();
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..cores + 2)
            .map(|_| {
                let (gate, now, peak) = (gate.clone(), now.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _slot = gate.enter();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= cores, "{peak} ran at once on {cores} cores");
        assert!(peak >= 1);
        let state = gate.state.lock().unwrap();
        assert_eq!(state.running, 0, "every slot was given back");
        assert!(
            state.idle.len() <= cores,
            "one buffer per computation at once"
        );
    }

    fn hashing(concurrency: usize, queue: usize, wait_ms: u64) -> HashingConfig {
        HashingConfig {
            concurrency,
            queue,
            wait: Duration::from_millis(wait_ms),
        }
    }

    fn secrets(pepper: &[u8]) -> Secrets {
        Secrets::new(
            Secret::new(pepper.to_vec()),
            &hashing(default_hash_concurrency(), 64, 5000),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn password_round_trip_and_pepper_binding() {
        let s = secrets(&[7u8; 32]);
        let h = s.hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(
            s.verify_password("correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(
            !s.verify_password("wrong".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        // The same hash under another pepper does not verify: the database alone is not enough.
        let other = secrets(&[8u8; 32]);
        assert!(
            !other
                .verify_password("correct horse".into(), Some(h))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let s = secrets(&[7u8; 32]);
        assert!(!s.verify_password("anything".into(), None).await.unwrap());
    }

    #[test]
    fn hmac_key_matches_rfc_4231_and_openssl_evp() {
        // RFC 4231 test cases 1, 2 and 6 (a key longer than the block).
        let cases: [(Vec<u8>, &[u8], &str); 3] = [
            (
                vec![0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, data, want) in cases {
            let got = HmacKey::new(&key).mac(data);
            let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, want);
            assert_eq!(got.to_vec(), hmac_sha256(&key, data).unwrap());
        }
        // Keys of every length around the block size agree with EVP.
        for len in [1, 32, 63, 64, 65, 200] {
            let key = vec![0x5a; len];
            assert_eq!(
                HmacKey::new(&key).mac(b"latchkey").to_vec(),
                hmac_sha256(&key, b"latchkey").unwrap(),
                "key of {len} bytes"
            );
        }
    }

    #[test]
    fn client_secret_digest_is_keyed_and_checked() {
        let s = secrets(&[1u8; 32]);
        let (secret, digest) = s.new_client_secret().unwrap();
        assert_eq!(secret.len(), 43);
        assert!(s.verify_client_secret(&secret, &digest));
        assert!(!s.verify_client_secret("nope", &digest));
        assert_ne!(digest, sha256(secret.as_bytes()));
        assert!(!secrets(&[2u8; 32]).verify_client_secret(&secret, &digest));
    }

    #[tokio::test]
    async fn pooled_hashes_match_the_argon2_crate_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let pepper = Secret::new(vec![9u8; 32]);
        let s = Secrets::new(pepper.clone(), &hashing(2, 4, 5000)).unwrap();
        let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).unwrap();
        let reference = argon2(&pepper, params).unwrap();
        // Ours verifies with the crate's own verifier...
        let ours = s.hash_password("hunter22".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(reference.verify_password(b"hunter22", &parsed).is_ok());
        assert!(reference.verify_password(b"hunter23", &parsed).is_err());
        // ...and a hash the crate wrote (as stored by earlier releases) verifies here.
        let salt = SaltString::encode_b64(&[5u8; 16]).unwrap();
        let theirs = reference
            .hash_password(b"hunter22", &salt)
            .unwrap()
            .to_string();
        assert!(
            s.verify_password("hunter22".into(), Some(theirs.clone()))
                .await
                .unwrap()
        );
        assert!(
            !s.verify_password("hunter2".into(), Some(theirs))
                .await
                .unwrap()
        );
        // Only the hashing threads' buffers exist: never more than the
        // concurrency bound.
        let n = s.pool.buffers.load(Ordering::Relaxed);
        assert!((1..=2).contains(&n), "{n} buffers");
    }

    #[tokio::test]
    async fn concurrent_hashing_is_bounded_and_the_queue_refuses_past_its_length() {
        let s = Secrets::new(Secret::new(vec![3u8; 32]), &hashing(1, 1, 60_000)).unwrap();
        // Hold the only permit: a verification must wait rather than start.
        let held = s.pool.permits.acquire().await.unwrap();
        let pending = tokio::spawn({
            let s = s.clone();
            async move { s.verify_password("x".into(), None).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pending.is_finished(), "hashing started without a permit");
        // The queue (length 1) is full: the next caller is refused at once.
        let refused = s.verify_password("y".into(), None).await.unwrap_err();
        assert!(
            matches!(
                refused,
                SecretError::Busy {
                    retry_after_secs: 60
                }
            ),
            "{refused}"
        );
        drop(held);
        assert!(!pending.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn waiting_past_the_deadline_is_refused() {
        let s = Secrets::new(Secret::new(vec![4u8; 32]), &hashing(1, 8, 300)).unwrap();
        let _held = s.pool.permits.acquire().await.unwrap();
        let started = std::time::Instant::now();
        let e = s.hash_password("password1".into()).await.unwrap_err();
        assert!(
            matches!(
                e,
                SecretError::Busy {
                    retry_after_secs: 1
                }
            ),
            "{e}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn successors_are_deterministic_keyed_and_distinct() {
        let s = secrets(&[4u8; 32]);
        let t = random_token().unwrap();
        let next = s.successor_token(&t);
        assert_eq!(next.len(), 43);
        assert_eq!(next, s.successor_token(&t));
        assert_ne!(next, t);
        assert_ne!(next, s.successor_token(&next));
        assert_ne!(next, secrets(&[5u8; 32]).successor_token(&t));
    }

    #[test]
    fn random_tokens_differ() {
        assert_ne!(random_token().unwrap(), random_token().unwrap());
        assert_eq!(random_id().unwrap().len(), 22);
    }

    #[test]
    fn a_computation_that_waited_for_a_cpu_owes_a_rest_in_proportion() {
        let ms = Duration::from_millis;
        // Not kept waiting, or kept waiting up to a quarter of its CPU time
        // (its share of a core with latchkey's own requests): no rest.
        assert_eq!(Yield::rest(ms(16), ms(16)), Duration::ZERO);
        assert_eq!(Yield::rest(ms(20), ms(16)), Duration::ZERO);
        // Beyond that, eight times the excess: 16 ms of CPU over 28 ms waited
        // 12 ms, 8 ms past the tolerated 4 ms.
        assert_eq!(Yield::rest(ms(28), ms(16)), ms(64));
        // At most sixteen times the CPU time, however long it waited.
        assert_eq!(Yield::rest(ms(1_000), ms(16)), ms(256));
        // A clock read out of order (wall below CPU) owes nothing.
        assert_eq!(Yield::rest(ms(10), ms(16)), Duration::ZERO);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn thread_cpu_time_counts_work_and_not_sleep() {
        let wall = std::time::Instant::now();
        let start = thread_cpu_time().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time().unwrap() - start;
        assert!(slept < Duration::from_millis(20), "{slept:?}");
        // Work advances it, and never past the wall clock.
        let mut x = 0u64;
        let mut used = Duration::ZERO;
        while used < Duration::from_millis(10) && wall.elapsed() < Duration::from_secs(10) {
            x = std::hint::black_box(x.wrapping_add(1));
            used = thread_cpu_time().unwrap() - start - slept;
        }
        assert!(
            used >= Duration::from_millis(10),
            "{used:?} after 10 s of work"
        );
        let total = thread_cpu_time().unwrap() - start;
        assert!(
            total <= wall.elapsed(),
            "{total:?} of CPU in {:?}",
            wall.elapsed()
        );
    }

    /// Two busy threads at the normal priority on the one CPU the pool may
    /// use keep its hashing thread (nice 10) waiting for it: the password
    /// must still verify, then the thread must rest and count the rest.
    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_kept_waiting_for_a_cpu_rests_and_counts_it() {
        // The hash comes from another pool, so the one under test has
        // computed nothing before the contended verification.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hash = rt
            .block_on(secrets(&[5u8; 32]).hash_password("password1".into()))
            .unwrap();
        // On a thread of its own pinned to one CPU: the pool's threads and
        // the busy threads it starts inherit the pin, whatever the machine.
        std::thread::spawn(move || {
            let allowed = rustix::thread::sched_getaffinity(None).unwrap();
            let cpu = (0..rustix::thread::CpuSet::MAX_CPU)
                .find(|&c| allowed.is_set(c))
                .unwrap();
            let mut one = rustix::thread::CpuSet::new();
            one.set(cpu);
            rustix::thread::sched_setaffinity(None, &one).unwrap();
            let s = secrets(&[5u8; 32]);
            assert_eq!(s.hash_yield_micros(), 0);
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let spinners: Vec<_> = (0..2)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    })
                })
                .collect();
            let verified = rt.block_on(s.verify_password("password1".into(), Some(hash)));
            // The rest is counted as soon as the computation ends, on a
            // thread that must first get the CPU back.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while s.hash_yield_micros() == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::Relaxed);
            for t in spinners {
                t.join().unwrap();
            }
            assert!(verified.unwrap(), "the password must still verify");
            assert!(s.hash_yield_micros() > 0, "a contended hash did not rest");
        })
        .join()
        .unwrap();
    }
}
