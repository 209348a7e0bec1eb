//! The test harness's real PostgreSQL and Redis servers, checked through
//! their command-line clients.

use emcachers_tests::services::{PostgresServer, RedisCluster, RedisServer};

#[test]
fn postgres_answers_select_1() {
    let server = PostgresServer::shared();
    assert!(server.url().starts_with("postgres://postgres@127.0.0.1:"));
    assert_eq!(server.psql(&server.url(), "SELECT 1").trim(), "1");
}

#[test]
fn postgres_databases_are_distinct() {
    let server = PostgresServer::shared();
    let a = server.create_database("services_distinct_a");
    let b = server.create_database("services_distinct_b");
    assert_ne!(a, b);
    server.psql(&a, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
    server.psql(&b, "CREATE TABLE t (v int); INSERT INTO t VALUES (2), (3)");
    assert_eq!(
        server.psql(&a, "SELECT current_database()").trim(),
        "services_distinct_a"
    );
    assert_eq!(server.psql(&a, "SELECT count(*) FROM t").trim(), "1");
    assert_eq!(server.psql(&b, "SELECT count(*) FROM t").trim(), "2");
}

#[test]
fn postgres_stop_and_start_again_keeps_port_and_data() {
    let server = PostgresServer::start();
    let url = server.create_database("services_restart");
    server.psql(&url, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)");
    let port = server.port();
    server.stop();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "PostgreSQL still listens after stop"
    );
    server.start_again();
    assert_eq!(server.port(), port);
    assert_eq!(server.psql(&url, "SELECT v FROM t").trim(), "42");
}

#[test]
fn redis_set_get() {
    let redis = RedisServer::start();
    assert_eq!(redis.url(), format!("redis://{}", redis.addr()));
    assert_eq!(redis.cli(&["set", "greeting", "hello"]).trim(), "OK");
    assert_eq!(redis.cli(&["get", "greeting"]).trim(), "hello");
}

#[test]
fn redis_restart_keeps_the_port() {
    let redis = RedisServer::start();
    let addr = redis.addr();
    assert_eq!(redis.cli(&["set", "k", "v"]).trim(), "OK");
    redis.stop();
    assert!(!redis.is_running());
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "Redis still listens after stop"
    );
    redis.restart();
    assert!(redis.is_running());
    assert_eq!(redis.addr(), addr);
    assert_eq!(redis.cli(&["ping"]).trim(), "PONG");
    // Persistence is off: the restarted server is empty.
    assert_eq!(redis.cli(&["exists", "k"]).trim(), "0");
}

#[test]
fn redis_cluster_forms_and_routes_keys() {
    let cluster = RedisCluster::start(RedisCluster::DEFAULT_MASTERS);
    assert_eq!(cluster.addrs().len(), 3);
    for addr in cluster.addrs() {
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        assert!((20_000..45_000).contains(&port), "cluster port {port}");
    }
    for node in cluster.nodes() {
        assert!(node.cli(&["cluster", "info"]).contains("cluster_state:ok"));
    }
    // Keys in different slots, so some are redirected.
    for key in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            cluster.cli(&["set", key, &format!("value-{key}")]).trim(),
            "OK"
        );
    }
    for key in ["a", "b", "c", "d", "e"] {
        assert_eq!(cluster.cli(&["get", key]).trim(), format!("value-{key}"));
    }
}
