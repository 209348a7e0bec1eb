//! Where the writer's commands go: a single Redis node (a
//! [`ConnectionManager`] that reconnects by itself), a Redis Cluster, or the
//! in-process [`MemoryTarget`].
//!
//! The writer speaks a small command set ([`Command`]) so that the memory
//! target can run the same batches as Redis. Every Redis call is bounded:
//! connecting by `connect_timeout` (`REDIS_DIAL_TIMEOUT`), a command's round
//! trip by `write_timeout + read_timeout` (the client has one timeout for
//! both), a whole call, a reconnect included, by the sum of the three. A dead
//! server is an error, not a hang; a timed-out or broken connection is
//! dropped and made again on the next call. A single node reconnects at most
//! `max_retries` times within a call (`REDIS_MAX_RETRIES`); a cluster
//! request follows at most `max_redirects` redirections or retries
//! (`REDIS_MAX_REDIRECTS`). With `tls_ca_file`, a TLS server must chain to
//! the authorities in that file (instead of the built-in web PKI roots).
//!
//! Batches: on a single node one batch is one `MULTI`/`EXEC` pipeline. On a
//! cluster a pipeline may only touch one slot, so a batch is split by slot
//! (order kept within a slot), and its phases (data, then remembered keys,
//! then the offset) run one after the other, the slots of a phase
//! concurrently.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, TlsCertificates, Value};

use super::config::RedisWriterConfig;
use super::error::RedisWriterError;
use super::memory::MemoryTarget;

/// Slot pipelines of one cluster phase in flight at once.
const CLUSTER_CONCURRENCY: usize = 32;

/// Compare-and-extend: extend the lock only while it holds our token.
const RENEW_SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
     return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// Compare-and-delete: release the lock only while it holds our token.
const RELEASE_SCRIPT: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
     return redis.call('del', KEYS[1]) else return 0 end";

/// One command of the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `GET key`.
    Get { key: String },
    /// `SET key value [PX ttl]`: an entity key.
    Set {
        key: String,
        value: String,
        ttl: Option<Duration>,
    },
    /// `SET key value`: a state key (offset, version, cursor); never
    /// expires, never evicted from memory.
    SetState { key: String, value: String },
    /// `DEL key`.
    Del { key: String },
    /// `HMGET key field…`.
    HMGet { key: String, fields: Vec<String> },
    /// `HKEYS key`.
    HKeys { key: String },
    /// `HSET key field value`.
    HSet {
        key: String,
        field: String,
        value: String,
    },
    /// `HDEL key field`.
    HDel { key: String, field: String },
    /// `SET key token NX PX ttl`.
    LockAcquire {
        key: String,
        token: String,
        ttl: Duration,
    },
    /// `PEXPIRE key ttl` if `key` holds `token`.
    LockRenew {
        key: String,
        token: String,
        ttl: Duration,
    },
    /// `DEL key` if `key` holds `token`.
    LockRelease { key: String, token: String },
}

/// The reply to one [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A write that returns nothing of interest.
    Done,
    /// `GET`.
    Value(Option<String>),
    /// `HMGET`.
    Values(Vec<Option<String>>),
    /// `DEL`, `HDEL` (something was removed) and the lock commands (it
    /// worked).
    Flag(bool),
}

impl Reply {
    /// The value of a `GET` reply.
    pub(crate) fn into_value(self) -> Option<String> {
        match self {
            Reply::Value(value) => value,
            _ => None,
        }
    }

    /// The values of an `HMGET` reply.
    pub(crate) fn into_values(self) -> Vec<Option<String>> {
        match self {
            Reply::Values(values) => values,
            _ => Vec::new(),
        }
    }

    /// The flag of a `DEL`/lock reply.
    pub(crate) fn flag(&self) -> bool {
        matches!(self, Reply::Flag(true))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Command {
    /// The key the command touches (its cluster slot).
    pub(crate) fn key(&self) -> &str {
        match self {
            Command::Get { key }
            | Command::Set { key, .. }
            | Command::SetState { key, .. }
            | Command::Del { key }
            | Command::HMGet { key, .. }
            | Command::HKeys { key }
            | Command::HSet { key, .. }
            | Command::HDel { key, .. }
            | Command::LockAcquire { key, .. }
            | Command::LockRenew { key, .. }
            | Command::LockRelease { key, .. } => key,
        }
    }

    fn to_redis(&self) -> redis::Cmd {
        match self {
            Command::Get { key } => {
                let mut c = redis::cmd("GET");
                c.arg(key);
                c
            }
            Command::Set { key, value, ttl } => {
                let mut c = redis::cmd("SET");
                c.arg(key).arg(value);
                if let Some(ttl) = ttl {
                    c.arg("PX").arg(millis(*ttl));
                }
                c
            }
            Command::SetState { key, value } => {
                let mut c = redis::cmd("SET");
                c.arg(key).arg(value);
                c
            }
            Command::Del { key } => {
                let mut c = redis::cmd("DEL");
                c.arg(key);
                c
            }
            Command::HMGet { key, fields } => {
                let mut c = redis::cmd("HMGET");
                c.arg(key).arg(fields);
                c
            }
            Command::HKeys { key } => {
                let mut c = redis::cmd("HKEYS");
                c.arg(key);
                c
            }
            Command::HSet { key, field, value } => {
                let mut c = redis::cmd("HSET");
                c.arg(key).arg(field).arg(value);
                c
            }
            Command::HDel { key, field } => {
                let mut c = redis::cmd("HDEL");
                c.arg(key).arg(field);
                c
            }
            Command::LockAcquire { key, token, ttl } => {
                let mut c = redis::cmd("SET");
                c.arg(key).arg(token).arg("NX").arg("PX").arg(millis(*ttl));
                c
            }
            Command::LockRenew { key, token, ttl } => {
                let mut c = redis::cmd("EVAL");
                c.arg(RENEW_SCRIPT)
                    .arg(1)
                    .arg(key)
                    .arg(token)
                    .arg(millis(*ttl));
                c
            }
            Command::LockRelease { key, token } => {
                let mut c = redis::cmd("EVAL");
                c.arg(RELEASE_SCRIPT).arg(1).arg(key).arg(token);
                c
            }
        }
    }

    fn reply(&self, value: Value, op: &'static str) -> Result<Reply, RedisWriterError> {
        let bad = |e: redis::ParsingError| RedisWriterError::Reply {
            op,
            reason: e.to_string(),
        };
        Ok(match self {
            Command::Get { .. } => {
                Reply::Value(redis::from_redis_value::<Option<String>>(value).map_err(bad)?)
            }
            Command::Set { .. } | Command::SetState { .. } | Command::HSet { .. } => Reply::Done,
            Command::HMGet { .. } | Command::HKeys { .. } => {
                Reply::Values(redis::from_redis_value::<Vec<Option<String>>>(value).map_err(bad)?)
            }
            Command::LockAcquire { .. } => Reply::Flag(!matches!(value, Value::Nil)),
            Command::Del { .. }
            | Command::HDel { .. }
            | Command::LockRenew { .. }
            | Command::LockRelease { .. } => {
                Reply::Flag(redis::from_redis_value::<i64>(value).map_err(bad)? > 0)
            }
        })
    }
}

/// A master to scan during the cleanup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// The single node.
    Single,
    /// A cluster master.
    Cluster { host: String, port: u16 },
    /// The memory target.
    Memory,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Single => f.write_str("single"),
            Node::Cluster { host, port } => write!(f, "{host}:{port}"),
            Node::Memory => f.write_str("memory"),
        }
    }
}

/// The command indexes of one slot's pipeline and their replies.
type SlotReplies = (Vec<usize>, Vec<Value>);

/// A single Redis node behind a [`ConnectionManager`].
pub(crate) struct SingleNode {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    manager: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
}

/// A Redis Cluster connection, made on first use.
pub(crate) struct ClusterNodes {
    client: ClusterClient,
    connection: tokio::sync::Mutex<Option<ClusterConnection>>,
    timeout: Duration,
}

/// The writer's target.
pub(crate) enum Target {
    /// One Redis node.
    Single(SingleNode),
    /// A Redis Cluster.
    Cluster(ClusterNodes),
    /// The in-process map.
    Memory(Arc<MemoryTarget>),
}

/// `host:port` (port defaults to 6379; `[v6]:port` accepted).
fn parse_addr(addr: &str) -> Result<(String, u16), RedisWriterError> {
    let addr = addr
        .trim()
        .trim_start_matches("rediss://")
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    let bad = || {
        RedisWriterError::Config(format!(
            "invalid Redis address {addr:?}: expected host:port"
        ))
    };
    let (host, port) = match addr.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (addr, 6379),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

fn connection_addr(host: String, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    }
}

/// The certificate authorities of `redis.tls_ca_file`: at least one PEM
/// certificate, or a configuration error naming the file.
fn read_ca(path: &std::path::Path) -> Result<TlsCertificates, RedisWriterError> {
    let fail = |reason: String| {
        RedisWriterError::Config(format!("tls_ca_file {}: {reason}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    })
}

fn redis_settings(config: &RedisWriterConfig, db: i64) -> RedisConnectionInfo {
    let mut settings = RedisConnectionInfo::default().set_db(db);
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    settings
}

fn redis_err(op: &'static str) -> impl Fn(redis::RedisError) -> RedisWriterError {
    move |source| RedisWriterError::Redis { op, source }
}

/// Whether the connection behind `error` should be dropped and made again.
fn breaks_connection(error: &RedisWriterError) -> bool {
    match error {
        RedisWriterError::Timeout { .. } => true,
        RedisWriterError::Redis { source, .. } => {
            source.is_io_error()
                || source.is_connection_dropped()
                || source.is_connection_refusal()
                || source.is_unrecoverable_error()
                || source.is_timeout()
        }
        _ => false,
    }
}

async fn timed<T>(
    op: &'static str,
    after: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisWriterError> {
    match tokio::time::timeout(after, call).await {
        Ok(result) => result.map_err(redis_err(op)),
        Err(_) => Err(RedisWriterError::Timeout { op, after }),
    }
}

fn pipeline(commands: &[&Command], atomic: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    if atomic {
        pipe.atomic();
    }
    for command in commands {
        pipe.add_command(command.to_redis());
    }
    pipe
}

fn replies(
    commands: &[&Command],
    values: Vec<Value>,
    op: &'static str,
) -> Result<Vec<Reply>, RedisWriterError> {
    if values.len() != commands.len() {
        return Err(RedisWriterError::Reply {
            op,
            reason: format!("{} replies for {} commands", values.len(), commands.len()),
        });
    }
    commands
        .iter()
        .zip(values)
        .map(|(command, value)| command.reply(value, op))
        .collect()
}

impl SingleNode {
    fn new(
        config: &RedisWriterConfig,
        ca: Option<&TlsCertificates>,
    ) -> Result<SingleNode, RedisWriterError> {
        let (host, port) = parse_addr(&config.addr)?;
        let info = connection_addr(host, port, config.tls)
            .into_connection_info()
            .map_err(redis_err("connect"))?
            .set_redis_settings(redis_settings(config, config.db));
        let client = match ca {
            Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
            None => redis::Client::open(info),
        }
        .map_err(redis_err("connect"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout()))
            .set_response_timeout(Some(config.response_timeout()))
            .set_number_of_retries(config.max_retries as usize)
            .set_max_delay(Duration::from_millis(500));
        Ok(SingleNode {
            client,
            manager_config,
            manager: Mutex::new(None),
            timeout: config.call_timeout(),
        })
    }

    fn manager(&self) -> Result<ConnectionManager, RedisWriterError> {
        let mut slot = self
            .manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        let manager = ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            self.manager_config.clone(),
        )
        .map_err(redis_err("connect"))?;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    fn forget(&self) {
        *self
            .manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    async fn run(
        &self,
        commands: &[&Command],
        atomic: bool,
        op: &'static str,
    ) -> Result<Vec<Reply>, RedisWriterError> {
        let mut manager = self.manager()?;
        let pipe = pipeline(commands, atomic && commands.len() > 1);
        let result = timed(
            op,
            self.timeout,
            pipe.query_async::<Vec<Value>>(&mut manager),
        )
        .await;
        match result {
            Ok(values) => replies(commands, values, op),
            Err(error) => {
                if breaks_connection(&error) {
                    self.forget();
                }
                Err(error)
            }
        }
    }

    async fn scan(
        &self,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), RedisWriterError> {
        let mut manager = self.manager()?;
        let mut c = redis::cmd("SCAN");
        c.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let result = timed(
            "scan",
            self.timeout,
            c.query_async::<(u64, Vec<String>)>(&mut manager),
        )
        .await;
        if let Err(error) = &result
            && breaks_connection(error)
        {
            self.forget();
        }
        result
    }
}

impl ClusterNodes {
    fn new(
        config: &RedisWriterConfig,
        ca: Option<&TlsCertificates>,
    ) -> Result<ClusterNodes, RedisWriterError> {
        if config.db != 0 {
            return Err(RedisWriterError::Config(format!(
                "db = {}: a Redis Cluster has only database 0",
                config.db
            )));
        }
        let mut seeds = Vec::new();
        for addr in config.seed_addrs() {
            let (host, port) = parse_addr(&addr)?;
            seeds.push(
                connection_addr(host, port, config.tls)
                    .into_connection_info()
                    .map_err(redis_err("connect"))?
                    .set_redis_settings(redis_settings(config, 0)),
            );
        }
        let timeout = config.call_timeout();
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(config.connect_timeout())
            .response_timeout(config.response_timeout())
            .overall_response_timeout(Some(timeout))
            .retries(config.max_redirects)
            .max_retry_wait(500);
        if let Some(user) = &config.username {
            builder = builder.username(user);
        }
        if let Some(password) = &config.password {
            builder = builder.password(password);
        }
        if config.tls {
            builder = builder.tls(redis::TlsMode::Secure);
        }
        if let Some(certificates) = ca {
            builder = builder.certs(certificates.clone());
        }
        let client = builder.build().map_err(redis_err("connect"))?;
        Ok(ClusterNodes {
            client,
            connection: tokio::sync::Mutex::new(None),
            timeout,
        })
    }

    async fn connection(&self) -> Result<ClusterConnection, RedisWriterError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = timed("connect", self.timeout, self.client.get_async_connection()).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn forget_if_broken<T>(
        &self,
        result: Result<T, RedisWriterError>,
    ) -> Result<T, RedisWriterError> {
        if let Err(error) = &result
            && breaks_connection(error)
        {
            *self.connection.lock().await = None;
        }
        result
    }

    async fn run(
        &self,
        commands: &[&Command],
        op: &'static str,
    ) -> Result<Vec<Reply>, RedisWriterError> {
        let connection = self.connection().await?;
        // Group by slot, keeping order within a slot.
        let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
        let mut index: std::collections::HashMap<Slot, usize> = std::collections::HashMap::new();
        for (i, command) in commands.iter().enumerate() {
            let slot = Slot::for_key(command.key());
            let group = *index.entry(slot).or_insert_with(|| {
                groups.push((slot, Vec::new()));
                groups.len() - 1
            });
            groups[group].1.push(i);
        }
        let timeout = self.timeout;
        let results: Vec<Result<SlotReplies, RedisWriterError>> =
            futures_util::stream::iter(groups)
                .map(|(_, members)| {
                    let mut connection = connection.clone();
                    let group: Vec<&Command> = members.iter().map(|&i| commands[i]).collect();
                    let pipe = pipeline(&group, false);
                    async move {
                        let values =
                            timed(op, timeout, pipe.query_async::<Vec<Value>>(&mut connection))
                                .await?;
                        Ok((members, values))
                    }
                })
                .buffer_unordered(CLUSTER_CONCURRENCY)
                .collect()
                .await;
        let mut out: Vec<Option<Reply>> = vec![None; commands.len()];
        for result in results {
            let (members, values) = self.forget_if_broken(result).await?;
            let group: Vec<&Command> = members.iter().map(|&i| commands[i]).collect();
            for (i, reply) in members.into_iter().zip(replies(&group, values, op)?) {
                out[i] = Some(reply);
            }
        }
        out.into_iter()
            .map(|reply| {
                reply.ok_or_else(|| RedisWriterError::Reply {
                    op,
                    reason: "a command got no reply".into(),
                })
            })
            .collect()
    }

    async fn masters(&self) -> Result<Vec<Node>, RedisWriterError> {
        let mut connection = self.connection().await?;
        let mut c = redis::cmd("CLUSTER");
        c.arg("NODES");
        let result = timed(
            "cluster nodes",
            self.timeout,
            connection.route_command(c, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random)),
        )
        .await;
        let value = self.forget_if_broken(result).await?;
        let text: String = redis::from_redis_value(value).map_err(|e| RedisWriterError::Reply {
            op: "cluster nodes",
            reason: e.to_string(),
        })?;
        Ok(parse_cluster_nodes(&text))
    }

    async fn scan(
        &self,
        host: &str,
        port: u16,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), RedisWriterError> {
        let mut connection = self.connection().await?;
        let mut c = redis::cmd("SCAN");
        c.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        });
        let result = timed("scan", self.timeout, connection.route_command(c, routing)).await;
        let value = self.forget_if_broken(result).await?;
        redis::from_redis_value::<(u64, Vec<String>)>(value).map_err(|e| RedisWriterError::Reply {
            op: "scan",
            reason: e.to_string(),
        })
    }
}

/// The masters that serve slots, from a `CLUSTER NODES` reply: lines of
/// `id host:port@bus[,hostname] flags master-id ping pong epoch link slot…`.
pub(crate) fn parse_cluster_nodes(text: &str) -> Vec<Node> {
    let mut masters = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, addr, flags, _, _, _, _, _, slots @ ..] = fields.as_slice() else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "fail?" | "noaddr" | "handshake"))
            || slots.is_empty()
        {
            continue;
        }
        let addr = addr.split(['@', ',']).next().unwrap_or_default();
        if let Some((host, port)) = addr.rsplit_once(':')
            && let Ok(port) = port.parse::<u16>()
            && !host.is_empty()
        {
            masters.push(Node::Cluster {
                host: host.to_owned(),
                port,
            });
        }
    }
    masters
}

/// `prefix` with the glob characters of `SCAN MATCH` escaped, then `*`.
pub(crate) fn scan_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

impl Target {
    /// The target `config` names. Nothing is connected yet: connections are
    /// made on first use, so a writer can start while Redis is down.
    pub(crate) fn new(config: &RedisWriterConfig) -> Result<Target, RedisWriterError> {
        if let Some(memory) = &config.memory {
            return Ok(Target::Memory(Arc::new(MemoryTarget::new(
                memory.max_entries,
            ))));
        }
        config
            .check()
            .map_err(|problem| RedisWriterError::Config(problem.to_string()))?;
        let ca = match &config.tls_ca_file {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        if config.cluster {
            Ok(Target::Cluster(ClusterNodes::new(config, ca.as_ref())?))
        } else {
            Ok(Target::Single(SingleNode::new(config, ca.as_ref())?))
        }
    }

    /// `redis`, `redis-cluster` or `memory`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Target::Single(_) => "redis",
            Target::Cluster(_) => "redis-cluster",
            Target::Memory(_) => "memory",
        }
    }

    /// The memory target, if this is one.
    pub(crate) fn memory(&self) -> Option<Arc<MemoryTarget>> {
        match self {
            Target::Memory(memory) => Some(memory.clone()),
            _ => None,
        }
    }

    /// Run `commands`, one reply each, in order per key. `op` names the
    /// work in errors.
    pub(crate) async fn run(
        &self,
        commands: &[Command],
        op: &'static str,
    ) -> Result<Vec<Reply>, RedisWriterError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&Command> = commands.iter().collect();
        match self {
            Target::Single(node) => node.run(&refs, false, op).await,
            Target::Cluster(cluster) => cluster.run(&refs, op).await,
            Target::Memory(memory) => Ok(memory.run(commands)),
        }
    }

    /// Write a batch made of phases that must land in order: on a single
    /// node all of them in one `MULTI`/`EXEC`; on a cluster phase after
    /// phase (a phase's slots concurrently).
    pub(crate) async fn write(
        &self,
        phases: &[Vec<Command>],
        op: &'static str,
    ) -> Result<(), RedisWriterError> {
        match self {
            Target::Single(node) => {
                let refs: Vec<&Command> = phases.iter().flatten().collect();
                if !refs.is_empty() {
                    node.run(&refs, true, op).await?;
                }
            }
            Target::Cluster(cluster) => {
                for phase in phases.iter().filter(|p| !p.is_empty()) {
                    let refs: Vec<&Command> = phase.iter().collect();
                    cluster.run(&refs, op).await?;
                }
            }
            Target::Memory(memory) => {
                for phase in phases {
                    memory.run(phase);
                }
            }
        }
        Ok(())
    }

    /// The masters a cleanup scans.
    pub(crate) async fn masters(&self) -> Result<Vec<Node>, RedisWriterError> {
        match self {
            Target::Single(_) => Ok(vec![Node::Single]),
            Target::Cluster(cluster) => cluster.masters().await,
            Target::Memory(_) => Ok(vec![Node::Memory]),
        }
    }

    /// One `SCAN` page of `node` for keys starting with `prefix`: the next
    /// cursor (0 at the end) and the keys.
    pub(crate) async fn scan(
        &self,
        node: &Node,
        cursor: u64,
        prefix: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), RedisWriterError> {
        match (self, node) {
            (Target::Single(single), _) => single.scan(cursor, &scan_pattern(prefix), count).await,
            (Target::Cluster(cluster), Node::Cluster { host, port }) => {
                cluster
                    .scan(host, *port, cursor, &scan_pattern(prefix), count)
                    .await
            }
            (Target::Memory(memory), _) => Ok((0, memory.keys_with_prefix(prefix))),
            (Target::Cluster(_), other) => Err(RedisWriterError::Config(format!(
                "cannot scan {other} on a cluster"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("localhost:6379").ok(),
            Some(("localhost".into(), 6379))
        );
        assert_eq!(
            parse_addr("redis.internal").ok(),
            Some(("redis.internal".into(), 6379))
        );
        assert_eq!(
            parse_addr("redis://10.0.0.1:7000/").ok(),
            Some(("10.0.0.1".into(), 7000))
        );
        assert_eq!(parse_addr("[::1]:7001").ok(), Some(("::1".into(), 7001)));
        assert!(parse_addr("host:port").is_err());
        assert!(parse_addr(":6379").is_err());
    }

    #[test]
    fn cluster_nodes_reply() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1 3 connected
e7d1 127.0.0.1:30001@40001,node-a myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002 master - 0 1 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1 3 disconnected 10923-16383
6ec2 127.0.0.1:30005@40005 master - 0 1 5 connected
";
        assert_eq!(
            parse_cluster_nodes(text),
            vec![
                Node::Cluster {
                    host: "127.0.0.1".into(),
                    port: 30001
                },
                Node::Cluster {
                    host: "127.0.0.1".into(),
                    port: 30002
                },
            ]
        );
    }

    #[test]
    fn the_ca_file_must_hold_a_pem_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = |file: &str| RedisWriterConfig {
            tls: true,
            tls_ca_file: Some(dir.path().join(file)),
            ..RedisWriterConfig::default()
        };
        let error = |file: &str| match Target::new(&config(file)) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("{file} must be refused"),
        };
        assert!(error("missing.pem").contains("missing.pem"));
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").expect("write");
        assert!(error("junk.pem").contains("no PEM certificate"));
        let refused = Target::new(&RedisWriterConfig {
            ttl_secs: u64::MAX,
            ..RedisWriterConfig::default()
        });
        assert!(
            matches!(refused, Err(RedisWriterError::Config(reason)) if reason.contains("redis.ttl_secs"))
        );
    }

    #[test]
    fn scan_patterns_escape_globs() {
        assert_eq!(scan_pattern("schematic:flags:"), "schematic:flags:*");
        assert_eq!(scan_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }
}
