//! Real PostgreSQL and Redis servers for the tests, started by the tests
//! themselves on free loopback ports and stopped at the end.
//!
//! The servers are the distribution's binaries (`apt-get install postgresql
//! redis-server`, which `tests/run-all.sh` does); nothing here talks to a
//! system-wide service. Every server lives in its own temporary directory.
//! A Redis can require a password and listen with TLS too
//! ([`RedisServer::start_with_options`]), with certificates that
//! [`TestCertificates`] makes with the `openssl` command.
//!
//! # Cleanup, even when the test process dies
//!
//! Dropping a server stops it and removes its directory. A server kept in a
//! `static` (see [`PostgresServer::shared`]) is never dropped, and a test
//! process killed by a signal drops nothing, so every server also has a
//! *watchdog*: a tiny `sh` child whose stdin is a pipe that only this process
//! holds open. The watchdog blocks in `read`; when the process ends, however
//! it ends, the kernel closes the pipe, `read` sees end-of-file and the
//! watchdog stops the server (`pg_ctl stop -m immediate`, or `kill -9` of the
//! Redis pid) and removes its directory. A normal drop writes one line to the
//! pipe instead, and the watchdog exits without doing anything. The watchdog
//! ignores SIGINT, SIGTERM, SIGHUP and SIGQUIT so a Ctrl-C to the whole
//! process group still leaves it alive to clean up; only a SIGKILL of the
//! whole group defeats it.
//!
//! # Ports
//!
//! Ports come from binding `127.0.0.1:0` and releasing the listener, so
//! another process may take the port in between: starting retries with a new
//! port when the server reports the address in use. Redis Cluster nodes use
//! ports in 20000..45000 whose bus port (port + 10000) is free too.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

const MISSING: &str = "install postgresql / redis-server (tests/run-all.sh does it)";
/// How many ports a start tries when the previous one turned out taken.
const START_ATTEMPTS: usize = 3;
/// Deadline for a server to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for one run of a client or control program.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for one readiness probe (`redis-cli ping`, `cluster info`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of server log quoted in a panic message.
const LOG_TAIL_LINES: usize = 40;

// ---------------------------------------------------------------- helpers

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ports handed out by this process, so two servers of one process never get
/// the same port even before either has bound it.
fn reserve(port: u16) -> bool {
    static RESERVED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    lock(RESERVED.get_or_init(Default::default)).insert(port)
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A loopback port that was free a moment ago (the kernel's choice).
fn free_port() -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("bind 127.0.0.1:0 to find a free port")
            .port();
        if reserve(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// A port in 20000..45000 such that it and its cluster bus port
/// (port + 10000) were free a moment ago.
fn free_cluster_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
    for _ in 0..5000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(step.wrapping_mul(7919)) % 25_000) as u16;
        if port_is_free(port) && port_is_free(port + 10_000) && reserve(port) {
            return port;
        }
    }
    panic!("no free port pair (port, port + 10000) found in 20000..45000");
}

/// `s` quoted for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

/// `name` found on `PATH` (or in the sbin directories, for `runuser`).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn required(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| panic!("`{name}` not found on PATH: {MISSING}"))
}

/// The last lines of a server log, for panic messages.
fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            format!("--- last lines of {} ---\n{tail}", path.display())
        }
        Err(e) => format!("--- no log at {}: {e} ---", path.display()),
    }
}

fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Whether the log grew a line saying the port was taken since `from`.
fn log_says_port_taken(path: &Path, from: u64) -> bool {
    let bytes = fs::read(path).unwrap_or_default();
    let new = bytes
        .get(usize::try_from(from).unwrap_or(usize::MAX)..)
        .unwrap_or_default();
    let new = String::from_utf8_lossy(new);
    new.contains("Address already in use") || new.contains("could not bind")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

/// Run `command` to completion with stdin closed, killing it after
/// `timeout`. `Err` when it cannot be started or times out.
fn run(command: &mut Command, timeout: Duration) -> Result<Output, String> {
    let program = format!("{:?}", command.get_program());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{command:?} did not finish within {timeout:?}"));
            }
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Run `command`; panic (saying `what`) unless it succeeds. Returns stdout.
fn run_ok(command: &mut Command, what: &str, log: Option<&Path>) -> String {
    let tail = || log.map(log_tail).unwrap_or_default();
    match run(command, CLI_TIMEOUT) {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
        Ok(output) => panic!("{what} failed: {}\n{}", describe(&output), tail()),
        Err(e) => panic!("{what} failed: {e}\n{}", tail()),
    }
}

/// See the module documentation: runs `cleanup` with `sh` when this process
/// ends without [`Watchdog::disarm`] having been called.
struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    fn arm(cleanup: &str) -> Watchdog {
        let script =
            format!("trap '' INT TERM HUP QUIT; if read -r line; then exit 0; fi; {cleanup}");
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the cleanup watchdog (sh): {e}"));
        let stdin = child.stdin.take();
        Watchdog { child, stdin }
    }

    /// The server was cleaned up normally: let the watchdog exit idle.
    fn disarm(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"disarm\n");
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// The newest `/usr/lib/postgresql/<version>/bin`, else the directory of
/// `initdb` on `PATH`.
fn pg_bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let version = |path: &Path| -> Vec<u32> {
            path.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.split('.').map(|p| p.parse().unwrap_or(0)).collect())
                .unwrap_or_default()
        };
        let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.retain(|dir| dir.join("bin/initdb").is_file());
        dirs.sort_by_key(|dir| version(dir));
        dirs.pop()
            .map(|dir| dir.join("bin"))
            .or_else(|| which("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
            .unwrap_or_else(|| {
                panic!(
                    "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): {MISSING}"
                )
            })
    })
}

/// A PostgreSQL server of its own, in a temporary directory, listening on
/// `127.0.0.1` at a free port, trusting every local connection
/// (user `postgres`, no password). Dropping it stops it (`pg_ctl stop -m
/// immediate`) and removes its files.
///
/// Tuned for tests: `fsync` and `full_page_writes` are off, which loses
/// data only if the machine itself crashes; `max_connections` is 200.
/// `synchronous_commit` stays on: with `fsync` off it costs only a
/// `write()` per commit, and turning it off would make
/// [`PostgresServer::stop`] (an immediate, crash-like stop) lose transactions
/// that were already acknowledged, which crash tests must not see.
///
/// When the tests run as root, the directory is chowned to the `postgres`
/// user and the server tools run through `runuser -u postgres` (PostgreSQL
/// refuses to run as root).
#[derive(Debug)]
pub struct PostgresServer {
    base: TempDir,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    port: u16,
    durable: bool,
    watchdog: Mutex<Option<Watchdog>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watchdog(pid {})", self.child.id())
    }
}

impl PostgresServer {
    /// Initialise a fresh cluster and start it on a free port.
    ///
    /// # Panics
    ///
    /// When the PostgreSQL binaries are missing or the server does not
    /// start; the message quotes the server log.
    pub fn start() -> PostgresServer {
        Self::start_with(false)
    }

    /// [`PostgresServer::start`] with PostgreSQL's durable defaults
    /// (`fsync` and `full_page_writes` on): for benchmarks, whose figures
    /// must not come from turning durability off.
    pub fn start_durable() -> PostgresServer {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> PostgresServer {
        let bin = pg_bin_dir().to_path_buf();
        let base = tempfile::Builder::new()
            .prefix("emcachers-pg-")
            .tempdir()
            .expect("create a temporary directory for PostgreSQL");
        let data = base.path().join("data");
        let socket_dir = base.path().join("run");
        let log = socket_dir.join("postgresql.log");
        fs::create_dir(&data).expect("create the PostgreSQL data directory");
        fs::create_dir(&socket_dir).expect("create the PostgreSQL socket directory");
        let as_postgres = fs::metadata(base.path())
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        if as_postgres {
            run_ok(
                Command::new("chown").args(["-R", "postgres:postgres", path_str(base.path())]),
                "chown of the PostgreSQL directory to the `postgres` user (does that user exist? \
                 it comes with the postgresql package)",
                None,
            );
        }
        let mut server = PostgresServer {
            base,
            data,
            socket_dir,
            log,
            bin,
            as_postgres,
            port: 0,
            durable,
            watchdog: Mutex::new(None),
        };
        let stop = server.tool_shell(
            "pg_ctl",
            &[
                "-D",
                path_str(&server.data),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        *lock(&server.watchdog) = Some(Watchdog::arm(&format!(
            "{stop} >/dev/null 2>&1; rm -rf {}",
            sh_quote(path_str(server.base.path()))
        )));
        run_ok(
            &mut server.tool(
                "initdb",
                &[
                    "-D",
                    path_str(&server.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "-N",
                ],
            ),
            "initdb",
            None,
        );
        for attempt in 1..=START_ATTEMPTS {
            server.port = free_port();
            let from = log_len(&server.log);
            match server.pg_ctl_start() {
                Ok(()) => return server,
                Err(_) if attempt < START_ATTEMPTS && log_says_port_taken(&server.log, from) => {}
                Err(e) => panic!("PostgreSQL did not start: {e}\n{}", log_tail(&server.log)),
            }
        }
        unreachable!("the last start attempt returns or panics")
    }

    /// One server per test process, started on first use and shared by all
    /// the tests of the process; give each test its own database with
    /// [`PostgresServer::create_database`]. The server is stopped when the
    /// process exits by its watchdog (see the module documentation), since a
    /// `static` is never dropped. Do not [`stop`](PostgresServer::stop) it:
    /// crash tests start a server of their own.
    pub fn shared() -> &'static PostgresServer {
        static SHARED: OnceLock<PostgresServer> = OnceLock::new();
        SHARED.get_or_init(PostgresServer::start)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` on this server (which need not exist).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Create database `name` and return its URL. Names are limited to
    /// ASCII letters, digits and `_` (at most 63) so they need no quoting in
    /// SQL or URLs.
    ///
    /// # Panics
    ///
    /// On an invalid name, or when the database exists already.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "database name {name:?}: use 1 to 63 ASCII letters, digits or `_`"
        );
        self.psql(&self.url(), &format!("CREATE DATABASE \"{name}\""));
        self.database_url(name)
    }

    /// Run `sql` with this server's `psql` on the database at `url`
    /// (`-X -q -A -t`, stopping at the first error) and return its output:
    /// unaligned rows, fields separated by `|`, no headers.
    ///
    /// # Panics
    ///
    /// When `psql` fails or takes more than a minute.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        run_ok(
            Command::new(self.bin.join("psql")).args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ]),
            &format!("psql {sql:?} on {url}"),
            Some(&self.log),
        )
    }

    /// Stop the server at once (`pg_ctl stop -m immediate`: no shutdown
    /// checkpoint, as in a crash). Its files and port stay reserved for
    /// [`PostgresServer::start_again`].
    ///
    /// # Panics
    ///
    /// When `pg_ctl stop` fails (for instance, the server is not running).
    pub fn stop(&self) {
        if let Err(e) = self.pg_ctl_stop() {
            panic!("stopping PostgreSQL failed: {e}\n{}", log_tail(&self.log));
        }
    }

    /// Start the server again after [`PostgresServer::stop`], on the same
    /// data directory and port (it runs crash recovery first).
    ///
    /// # Panics
    ///
    /// When it does not start (for instance, the port was taken meanwhile).
    pub fn start_again(&self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!("restarting PostgreSQL failed: {e}\n{}", log_tail(&self.log));
        }
    }

    /// A command running server tool `tool` as the `postgres` user.
    fn tool(&self, tool: &str, args: &[&str]) -> Command {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut command = Command::new(required("runuser"));
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(args).current_dir(self.base.path());
        command
    }

    /// [`PostgresServer::tool`] as a shell command line.
    fn tool_shell(&self, tool: &str, args: &[&str]) -> String {
        let program = self.bin.join(tool);
        let mut words = Vec::new();
        if self.as_postgres {
            let runuser = required("runuser");
            words.extend([
                path_str(&runuser).to_owned(),
                "-u".into(),
                "postgres".into(),
                "--".into(),
            ]);
        }
        words.push(path_str(&program).to_owned());
        words.extend(args.iter().map(|a| (*a).to_owned()));
        words
            .iter()
            .map(|w| sh_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        // pg_ctl hands `-o` to a shell: quote the socket directory.
        let tuning = if self.durable {
            "-c fsync=on -c full_page_writes=on"
        } else {
            "-c fsync=off -c full_page_writes=off"
        };
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} {tuning} -c max_connections=200",
            self.port,
            sh_quote(path_str(&self.socket_dir))
        );
        let output = run(
            &mut self.tool(
                "pg_ctl",
                &[
                    "-D",
                    path_str(&self.data),
                    "-l",
                    path_str(&self.log),
                    "-w",
                    "-t",
                    "30",
                    "-o",
                    &options,
                    "start",
                ],
            ),
            CLI_TIMEOUT,
        )?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start on port {}: {}",
                self.port,
                describe(&output)
            ))
        }
    }

    fn pg_ctl_stop(&self) -> Result<(), String> {
        let output = run(
            &mut self.tool(
                "pg_ctl",
                &["-D", path_str(&self.data), "-m", "immediate", "-w", "stop"],
            ),
            CLI_TIMEOUT,
        )?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl stop: {}", describe(&output)))
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Fails harmlessly when the server was stopped already.
        let _ = self.pg_ctl_stop();
        if let Some(watchdog) = lock(&self.watchdog).take() {
            watchdog.disarm();
        }
    }
}

// ---------------------------------------------------------------- Redis

/// A started `redis-server` child and the watchdog that kills it.
#[derive(Debug)]
struct RedisProcess {
    child: Child,
    watchdog: Watchdog,
}

impl RedisProcess {
    /// Start `redis-server` on `port` in `dir` and wait until it answers.
    /// `auth` is the `requirepass` password, for the readiness probe.
    fn launch(
        dir: &Path,
        log: &Path,
        port: u16,
        extra: &[String],
        auth: Option<&str>,
    ) -> Result<RedisProcess, String> {
        let server = required("redis-server");
        let cli = required("redis-cli");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let port_arg = port.to_string();
        let child = Command::new(server)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port_arg,
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(dir)
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        let pid = child.id();
        let watchdog = Watchdog::arm(&format!(
            "kill -9 {pid} 2>/dev/null; rm -rf {}",
            sh_quote(path_str(dir))
        ));
        let mut process = RedisProcess { child, watchdog };
        // Ready when *our* process answers on the port (not some other
        // server that holds it while ours failed to bind).
        let ours = format!("process_id:{pid}");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                process.watchdog.disarm();
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            let mut probe = Command::new(&cli);
            probe.args(["-p", &port_arg, "info", "server"]);
            if let Some(password) = auth {
                probe.env("REDISCLI_AUTH", password);
            }
            let info = run(&mut probe, PROBE_TIMEOUT);
            if info.is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == ours)
            }) {
                return Ok(process);
            }
            if Instant::now() >= deadline {
                process.kill();
                return Err(format!(
                    "redis-server on port {port} did not answer within {READY_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.watchdog.disarm();
    }
}

/// A `redis-server` of its own, a child of the test process, on
/// `127.0.0.1` at a free port, with persistence off (`--save ''
/// --appendonly no`) and its working directory in a temporary directory.
/// Dropping it kills it and removes the directory.
///
/// [`RedisServer::stop`] and [`RedisServer::restart`] take `&self`, so a
/// test can stop and restart the server while other threads use it.
#[derive(Debug)]
pub struct RedisServer {
    dir: TempDir,
    log: PathBuf,
    port: u16,
    extra: Vec<String>,
    /// `requirepass`, when set.
    password: Option<String>,
    /// The TLS port, when TLS is on.
    tls_port: Option<u16>,
    process: Mutex<Option<RedisProcess>>,
}

/// A certificate authority and a server certificate for `127.0.0.1` and
/// `localhost` signed by it (P-256 keys, valid for two days), made with the
/// `openssl` command in a temporary directory that is removed on drop.
#[derive(Debug)]
pub struct TestCertificates {
    dir: TempDir,
}

impl TestCertificates {
    /// Make a fresh CA and server certificate.
    ///
    /// # Panics
    ///
    /// When `openssl` is missing or fails.
    pub fn generate() -> TestCertificates {
        let openssl = which("openssl")
            .unwrap_or_else(|| panic!("`openssl` not found on PATH (apt-get install openssl)"));
        let dir = tempfile::Builder::new()
            .prefix("emcachers-tls-")
            .tempdir()
            .expect("create a temporary directory for certificates");
        fs::write(
            dir.path().join("server.ext"),
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1, DNS:localhost\n",
        )
        .expect("write the certificate extensions");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<&str>; 3] = [
            [
                &[
                    "req",
                    "-x509",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=emcachers test CA",
                ][..],
                &ec,
                &[
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                ],
            ]
            .concat(),
            [
                &["req", "-subj", "/CN=127.0.0.1"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-days",
                "2",
                "-CAcreateserial",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        ];
        for args in steps {
            run_ok(
                Command::new(&openssl).args(&args).current_dir(dir.path()),
                &format!("openssl {}", args.join(" ")),
                None,
            );
        }
        TestCertificates { dir }
    }

    /// The CA certificate (PEM): what a client must trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server's private key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// How [`RedisServer::start_with_options`] starts a server beyond the
/// defaults.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisOptions<'a> {
    /// `requirepass`: every client must `AUTH` (user `default`).
    pub password: Option<&'a str>,
    /// Also listen with TLS on a second free port ([`RedisServer::tls_port`])
    /// with this server certificate; clients need no certificate. The plain
    /// port stays open (the helpers use it).
    pub tls: Option<&'a TestCertificates>,
}

impl RedisServer {
    /// Start a server on a free port and wait (at most 20 s) until it
    /// answers.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing or does not start; the message quotes
    /// its log.
    pub fn start() -> RedisServer {
        RedisServer::start_with(Vec::new(), free_port)
    }

    /// Start a server on a free port with a password and/or a TLS port, and
    /// wait (at most 20 s) until it answers.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing or does not start; the message quotes
    /// its log.
    pub fn start_with_options(options: RedisOptions<'_>) -> RedisServer {
        let mut extra = Vec::new();
        let mut tls_port = None;
        if let Some(password) = options.password {
            extra.extend(["--requirepass".to_owned(), password.to_owned()]);
        }
        if let Some(certificates) = options.tls {
            let port = free_port();
            tls_port = Some(port);
            extra.extend([
                "--tls-port".to_owned(),
                port.to_string(),
                "--tls-cert-file".to_owned(),
                path_str(&certificates.cert()).to_owned(),
                "--tls-key-file".to_owned(),
                path_str(&certificates.key()).to_owned(),
                "--tls-ca-cert-file".to_owned(),
                path_str(&certificates.ca()).to_owned(),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]);
        }
        let mut server =
            RedisServer::start_auth(extra, free_port, options.password.map(str::to_owned));
        server.tls_port = tls_port;
        server
    }

    fn start_with(extra: Vec<String>, pick_port: fn() -> u16) -> RedisServer {
        RedisServer::start_auth(extra, pick_port, None)
    }

    fn start_auth(
        extra: Vec<String>,
        pick_port: fn() -> u16,
        password: Option<String>,
    ) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("emcachers-redis-")
            .tempdir()
            .expect("create a temporary directory for Redis");
        let log = dir.path().join("redis.log");
        for attempt in 1..=START_ATTEMPTS {
            let port = pick_port();
            let from = log_len(&log);
            match RedisProcess::launch(dir.path(), &log, port, &extra, password.as_deref()) {
                Ok(process) => {
                    return RedisServer {
                        dir,
                        log,
                        port,
                        extra,
                        password,
                        tls_port: None,
                        process: Mutex::new(Some(process)),
                    };
                }
                Err(_) if attempt < START_ATTEMPTS && log_says_port_taken(&log, from) => {}
                Err(e) => panic!("Redis did not start: {e}\n{}", log_tail(&log)),
            }
        }
        unreachable!("the last start attempt returns or panics")
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port, when started with [`RedisOptions::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// Whether the server process is running (not [`stop`](RedisServer::stop)ped,
    /// and not dead).
    pub fn is_running(&self) -> bool {
        lock(&self.process)
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Run `redis-cli -p PORT ARGS…` and return its output (Redis error
    /// replies are output too: `redis-cli` exits 0 on them).
    ///
    /// # Panics
    ///
    /// When `redis-cli` fails or takes more than a minute.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, false, args, &self.log, self.password.as_deref())
    }

    /// Stop the server (`SHUTDOWN NOSAVE`, or a kill if it does not exit
    /// within 10 s). Clients see their connections closed and new ones
    /// refused. Does nothing when it is stopped already.
    pub fn stop(&self) {
        let Some(mut process) = lock(&self.process).take() else {
            return;
        };
        let mut shutdown = Command::new(required("redis-cli"));
        shutdown.args(["-p", &self.port.to_string(), "shutdown", "nosave"]);
        if let Some(password) = &self.password {
            shutdown.env("REDISCLI_AUTH", password);
        }
        let _ = run(&mut shutdown, PROBE_TIMEOUT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(process.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        process.kill();
    }

    /// Start the server again on the same port and directory (stopping it
    /// first if it runs), and wait until it answers. The data is gone:
    /// persistence is off. Cluster nodes keep their `nodes.conf`, so they
    /// rejoin their cluster.
    ///
    /// # Panics
    ///
    /// When it does not start (for instance, the port was taken meanwhile).
    pub fn restart(&self) {
        self.stop();
        let mut slot = lock(&self.process);
        match RedisProcess::launch(
            self.dir.path(),
            &self.log,
            self.port,
            &self.extra,
            self.password.as_deref(),
        ) {
            Ok(process) => *slot = Some(process),
            Err(e) => panic!("restarting Redis failed: {e}\n{}", log_tail(&self.log)),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(process) = lock(&self.process).take() {
            process.kill();
        }
    }
}

fn redis_cli(port: u16, cluster: bool, args: &[&str], log: &Path, auth: Option<&str>) -> String {
    let mut command = Command::new(required("redis-cli"));
    if let Some(password) = auth {
        command.env("REDISCLI_AUTH", password);
    }
    if cluster {
        command.arg("-c");
    }
    command.args(["-p", &port.to_string()]).args(args);
    run_ok(
        &mut command,
        &format!("redis-cli -p {port} {args:?}"),
        Some(log),
    )
}

/// A Redis Cluster of masters without replicas, each node a
/// [`RedisServer`] (cluster node timeout 2 s). Node ports are in
/// 20000..45000 so their bus ports (port + 10000) are valid too. Dropping
/// the cluster stops every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// The usual size: three masters, the smallest cluster Redis creates.
    pub const DEFAULT_MASTERS: usize = 3;

    /// Start `masters` nodes, join them into one cluster with the slots
    /// spread evenly (`redis-cli --cluster create … --cluster-replicas 0`),
    /// and wait (at most 20 s) until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// When `masters < 3`, or the cluster does not form.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "a Redis Cluster needs at least 3 masters, not {masters}"
        );
        let extra: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]
        .map(String::from)
        .into();
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| RedisServer::start_with(extra.clone(), free_cluster_port))
            .collect();
        let cluster = RedisCluster { nodes };
        let mut create = Command::new(required("redis-cli"));
        create
            .arg("--cluster")
            .arg("create")
            .args(cluster.addrs())
            .args(["--cluster-replicas", "0", "--cluster-yes"]);
        run_ok(
            &mut create,
            "redis-cli --cluster create",
            Some(&cluster.nodes[0].log),
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        for node in &cluster.nodes {
            let cli = required("redis-cli");
            loop {
                let info = run(
                    Command::new(&cli).args(["-p", &node.port.to_string(), "cluster", "info"]),
                    PROBE_TIMEOUT,
                );
                if info
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Redis Cluster node {} did not report cluster_state:ok within {READY_TIMEOUT:?}\n{}",
                    node.addr(),
                    log_tail(&node.log)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cluster
    }

    /// `127.0.0.1:PORT` of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, to stop or restart one.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Run `redis-cli -c -p FIRST_NODE_PORT ARGS…` (following cluster
    /// redirections) and return its output.
    ///
    /// # Panics
    ///
    /// When `redis-cli` fails or takes more than a minute.
    pub fn cli(&self, args: &[&str]) -> String {
        let first = &self.nodes[0];
        redis_cli(first.port, true, args, &first.log, None)
    }
}

// ---------------------------------------------------------------- MongoDB

/// The SecantusDB version the tests pin (`tests/run-all.sh` installs it).
pub const SECANTUS_VERSION: &str = "0.7.0b3";

/// Deadline for SecantusDB (a Python server) to answer after a start.
const MONGO_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `secantusd-py` of the venv at `{target}/mongo-venv` (the workspace's
/// target directory, `CARGO_TARGET_DIR` when set).
fn secantusd() -> PathBuf {
    let bin = crate::target_dir().join("mongo-venv/bin/secantusd-py");
    assert!(
        bin.is_file(),
        "{} is missing: python3 -m venv target/mongo-venv && \
         target/mongo-venv/bin/pip install --pre 'SecantusDB=={SECANTUS_VERSION}' \
         (tests/run-all.sh does it)",
        bin.display()
    );
    bin
}

/// Whether a MongoDB server answers `ping` at `uri` (a client of its own, on
/// a thread of its own, so this works inside and outside a Tokio runtime).
fn mongo_pings(uri: &str) -> bool {
    let uri = uri.to_owned();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return false;
        };
        runtime.block_on(async move {
            let Ok(mut options) = mongodb::options::ClientOptions::parse(uri).await else {
                return false;
            };
            options.server_selection_timeout = Some(Duration::from_secs(1));
            options.connect_timeout = Some(Duration::from_secs(1));
            let Ok(client) = mongodb::Client::with_options(options) else {
                return false;
            };
            let pinged = client
                .database("admin")
                .run_command(mongodb::bson::doc! {"ping": 1})
                .await
                .is_ok();
            client.shutdown().immediate(true).await;
            pinged
        })
    })
    .join()
    .unwrap_or(false)
}

struct MongoProcess {
    child: Child,
    watchdog: Watchdog,
}

impl MongoProcess {
    /// Start `secantusd-py` on `port` with its data in `storage`, and wait
    /// until it answers `ping`.
    fn launch(base: &Path, storage: &Path, log: &Path, port: u16) -> Result<MongoProcess, String> {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let child = Command::new(secantusd())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--storage-path",
            ])
            .arg(storage)
            // `configureFailPoint` (off by default, as in mongod, where
            // `enableTestCommands` turns it on); a small storage cache, as
            // tests run several servers at once.
            .args(["--enable-test-commands", "--cache-size", "128M"])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run secantusd-py: {e}"))?;
        let pid = child.id();
        let watchdog = Watchdog::arm(&format!(
            "kill -9 {pid} 2>/dev/null; rm -rf {}",
            sh_quote(path_str(base))
        ));
        let mut process = MongoProcess { child, watchdog };
        let uri = mongo_uri(port);
        let deadline = Instant::now() + MONGO_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                process.watchdog.disarm();
                return Err(format!("secantusd-py on port {port} exited: {status}"));
            }
            // Ours answers (checked alive again after the ping: a server of
            // another process on the port would leave ours exiting).
            if mongo_pings(&uri) && matches!(process.child.try_wait(), Ok(None)) {
                return Ok(process);
            }
            if Instant::now() >= deadline {
                process.kill();
                return Err(format!(
                    "secantusd-py on port {port} did not answer within {MONGO_READY_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.watchdog.disarm();
    }
}

fn mongo_uri(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?directConnection=true")
}

/// A MongoDB-compatible server of its own: SecantusDB
/// ([`SECANTUS_VERSION`], `secantusd-py` from `target/mongo-venv`), a child
/// of the test process on `127.0.0.1` at a free port, storing in a
/// temporary directory. It advertises itself as a replica-set primary, so
/// change streams work, and runs with `--enable-test-commands`
/// (`configureFailPoint`). Dropping it kills it and removes the directory.
///
/// [`MongoServer::kill9`] and [`MongoServer::start_again`] take `&self`, so
/// a test can crash and restart the server (same port, same storage) while
/// other threads use it.
pub struct MongoServer {
    base: TempDir,
    port: u16,
    process: Mutex<Option<MongoProcess>>,
}

impl std::fmt::Debug for MongoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoServer")
            .field("port", &self.port)
            .field("dir", &self.base.path())
            .finish()
    }
}

impl MongoServer {
    /// Start a server on a free port and wait (at most 60 s) until it
    /// answers `ping`.
    ///
    /// # Panics
    ///
    /// When SecantusDB is not installed or does not start; the message
    /// quotes its log.
    pub fn start() -> MongoServer {
        let base = tempfile::Builder::new()
            .prefix("emcachers-mongo-")
            .tempdir()
            .expect("create a temporary directory for MongoDB");
        let storage = base.path().join("data");
        fs::create_dir_all(&storage).expect("create the MongoDB storage directory");
        let log = base.path().join("secantusd.log");
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let from = log_len(&log);
            match MongoProcess::launch(base.path(), &storage, &log, port) {
                Ok(process) => {
                    return MongoServer {
                        base,
                        port,
                        process: Mutex::new(Some(process)),
                    };
                }
                Err(_) if attempt < START_ATTEMPTS && log_says_port_taken(&log, from) => {}
                Err(e) => panic!("SecantusDB did not start: {e}\n{}", log_tail(&log)),
            }
        }
        unreachable!("the last start attempt returns or panics")
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`.
    pub fn uri(&self) -> String {
        mongo_uri(self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log (stdout and stderr).
    pub fn log(&self) -> String {
        log_tail(&self.base.path().join("secantusd.log"))
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        lock(&self.process)
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// Kill the server with SIGKILL (a crash: clients see their connections
    /// reset). Does nothing when it is not running.
    pub fn kill9(&self) {
        if let Some(process) = lock(&self.process).take() {
            process.kill();
        }
    }

    /// Start the server again on the same port and storage (killing it
    /// first if it runs), and wait until it answers.
    ///
    /// # Panics
    ///
    /// When it does not start (for instance, the port was taken meanwhile).
    pub fn start_again(&self) {
        self.kill9();
        let mut slot = lock(&self.process);
        let log = self.base.path().join("secantusd.log");
        match MongoProcess::launch(
            self.base.path(),
            &self.base.path().join("data"),
            &log,
            self.port,
        ) {
            Ok(process) => *slot = Some(process),
            Err(e) => panic!("restarting SecantusDB failed: {e}\n{}", log_tail(&log)),
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        if let Some(process) = lock(&self.process).take() {
            process.kill();
        }
    }
}
