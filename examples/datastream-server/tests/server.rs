//! The dev server over real sockets: REST with reqwest, the WebSocket with
//! tokio-tungstenite.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use emcachers_datastream_server::{
    Config, DevServer, Envelope, Fixtures, FloodStatus, Stats, StreamId, generate,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const KEY: &str = "sch_dev_key";
const DEADLINE: Duration = Duration::from_secs(15);

async fn server(config: Config) -> DevServer {
    DevServer::start(config).await.expect("server starts")
}

fn sample_fixtures() -> Fixtures {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schematic/fixtures");
    Fixtures::load(&dir).expect("sample fixtures load")
}

async fn connect(server: &DevServer, key: &str) -> Ws {
    let mut request = server.ws_url().into_client_request().expect("request");
    let headers = request.headers_mut();
    headers.insert("X-Schematic-Api-Key", key.parse().expect("header"));
    headers.insert(
        "X-Schematic-Datastream-Mode",
        "replicator".parse().expect("header"),
    );
    headers.insert(
        "X-Schematic-Client",
        "emcachers-test".parse().expect("header"),
    );
    headers.insert(
        "X-Schematic-Client-Version",
        "0.1.0".parse().expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connects");
    ws
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send");
}

async fn start(ws: &mut Ws, entity_type: &str, replay_from: Option<&str>) {
    let mut data = json!({"action": "start", "entity_type": entity_type});
    if let Some(from) = replay_from {
        data["replay_from"] = from.into();
    }
    send(ws, json!({ "data": data })).await;
}

/// The next raw message other than ping/pong (panics after the deadline).
async fn next_message(ws: &mut Ws) -> Option<Result<Message, tungstenite::Error>> {
    loop {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a message before the deadline");
        match message {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return other,
        }
    }
}

/// The next text message as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    match next_message(ws).await {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text).expect("JSON message"),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// No message arrives within `wait`.
async fn assert_quiet(ws: &mut Ws, wait: Duration) {
    if let Ok(message) = tokio::time::timeout(wait, ws.next()).await {
        panic!("unexpected message: {message:?}");
    }
}

/// Poll `check` until it yields `Some`, or panic naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(server: &DevServer, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = http().get(format!("{}{path}", server.http_url()));
    if let Some(key) = key {
        request = request.header("X-Schematic-Api-Key", key);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn post(server: &DevServer, path: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(format!("{}{path}", server.http_url()))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn stats(server: &DevServer) -> Stats {
    let (status, body) = get(server, "/_dev/stats", None).await;
    assert_eq!(status, 200);
    serde_json::from_value(body).expect("stats shape")
}

fn company(id: &str, n: u64) -> Value {
    json!({"entity_type": "rulesengine.Company", "message_type": "full", "entity_id": id,
           "data": {"id": id, "keys": {"domain": format!("{id}.example")}, "n": n}})
}

fn user(id: &str) -> Value {
    json!({"entity_type": "rulesengine.User", "message_type": "full", "entity_id": id,
           "data": {"id": id, "keys": {"email": format!("{id}@example.com")}}})
}

fn flag(key: &str, default_value: bool) -> Value {
    json!({"entity_type": "rulesengine.Flag", "message_type": "full", "entity_id": null,
           "data": {"id": format!("flag_{key}"), "key": key, "default_value": default_value, "rules": []}})
}

fn stream_ids(body: &Value) -> Vec<String> {
    serde_json::from_value(body["stream_ids"].clone()).expect("stream ids")
}

fn parse_id(id: &Value) -> StreamId {
    id.as_str()
        .expect("stream id string")
        .parse()
        .expect("stream id")
}

#[tokio::test]
async fn rest_counts_pages_auth_and_bad_requests() {
    let server = server(Config {
        api_keys: vec![KEY.into()],
        fixtures: Fixtures {
            companies: generate::rest_companies(5, None),
            users: generate::rest_users(3, None),
            ..Fixtures::default()
        },
        ..Config::default()
    })
    .await;

    assert_eq!(
        get(&server, "/companies/count", Some(KEY)).await,
        (200, json!({"data": {"count": 5}}))
    );
    assert_eq!(
        get(&server, "/users/count", Some(KEY)).await,
        (200, json!({"data": {"count": 3}}))
    );
    let (status, page) = get(&server, "/companies?limit=2&offset=0", Some(KEY)).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = page["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["comp_gen_000000", "comp_gen_000001"]);
    let (_, page) = get(&server, "/companies?limit=2&offset=4", Some(KEY)).await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        page["data"][0]["keys"][0],
        json!(generate::rest_company(4, None)["keys"][0])
    );
    let (_, page) = get(&server, "/users?limit=100&offset=0", Some(KEY)).await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        get(&server, "/users?limit=10&offset=50", Some(KEY)).await,
        (200, json!({"data": []}))
    );

    for path in ["/companies/count", "/companies?limit=1&offset=0"] {
        assert_eq!(get(&server, path, None).await.0, 401, "{path} without key");
        assert_eq!(
            get(&server, path, Some("other")).await.0,
            401,
            "{path} bad key"
        );
    }
    for query in [
        "",
        "?limit=10",
        "?offset=0",
        "?limit=abc&offset=0",
        "?limit=10&offset=-1",
        "?limit=0&offset=0",
        "?limit=1.5&offset=0",
    ] {
        let (status, body) = get(&server, &format!("/users{query}"), Some(KEY)).await;
        assert_eq!(status, 400, "/users{query}");
        assert!(body["error"].is_string());
    }

    let stats = stats(&server).await;
    assert_eq!(stats.rest_requests["/companies/count"], 3);
    assert_eq!(stats.rest_requests["/users/count"], 1);
    assert_eq!(stats.rest_requests["/companies"], 4);
    assert_eq!(stats.rest_requests["/users"], 9);
    assert_eq!(stats.rest_request_unix_ms.len(), 17);
}

#[tokio::test]
async fn start_sends_flags_bulk_and_confirmations_and_records_headers() {
    let fixtures = sample_fixtures();
    assert_eq!(fixtures.flags.len(), 5);
    assert!(fixtures.companies.len() >= 4 && fixtures.users.len() >= 4);
    let server = server(Config {
        fixtures: fixtures.clone(),
        ..Config::default()
    })
    .await;
    let mut ws = connect(&server, KEY).await;
    start(&mut ws, "rulesengine.Companies", None).await;
    start(&mut ws, "rulesengine.Users", None).await;
    start(&mut ws, "rulesengine.Flags", None).await;

    let confirmation = next_json(&mut ws).await;
    assert_eq!(confirmation["entity_type"], "rulesengine.Companies");
    assert_eq!(confirmation["message_type"], "full");
    assert_eq!(confirmation["data"]["subscribed"], true);
    assert_eq!(next_json(&mut ws).await["entity_type"], "rulesengine.Users");
    let bulk = next_json(&mut ws).await;
    assert_eq!(bulk["entity_type"], "rulesengine.Flags");
    assert_eq!(bulk["message_type"], "full");
    assert_eq!(bulk["entity_id"], Value::Null);
    assert_eq!(bulk["data"], Value::Array(fixtures.flags));
    assert_eq!(parse_id(&bulk["stream_id"]), server.head());
    assert!(bulk["data"].as_array().into_iter().flatten().any(|f| {
        f["key"]
            .as_str()
            .is_some_and(|k| k.chars().any(char::is_uppercase))
    }));

    let stats = stats(&server).await;
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.connects_total, 1);
    let headers = &stats.headers[0];
    assert_eq!(headers.api_key.as_deref(), Some(KEY));
    assert_eq!(headers.mode.as_deref(), Some("replicator"));
    assert_eq!(headers.client.as_deref(), Some("emcachers-test"));
    assert_eq!(headers.client_version.as_deref(), Some("0.1.0"));
    assert!(headers.accepted && headers.open);
    let types: Vec<&Value> = stats
        .client_messages
        .iter()
        .map(|m| &m.message["data"]["entity_type"])
        .collect();
    assert_eq!(
        types,
        [
            "rulesengine.Companies",
            "rulesengine.Users",
            "rulesengine.Flags"
        ]
    );
    assert!(stats.client_messages.iter().all(|m| m.connection == 1));
}

#[tokio::test]
async fn single_entity_requests_answer_from_pushes_then_rest_fixtures() {
    let server = server(Config {
        fixtures: sample_fixtures(),
        ..Config::default()
    })
    .await;
    let mut ws = connect(&server, KEY).await;
    send(
        &mut ws,
        json!({"data": {"entity_type": "rulesengine.Company", "keys": {"domain": "acme.example"}}}),
    )
    .await;
    let acme = next_json(&mut ws).await;
    assert_eq!(acme["entity_type"], "rulesengine.Company");
    assert_eq!(acme["message_type"], "full");
    assert_eq!(acme["entity_id"], "comp_acme");
    assert_eq!(acme["data"]["keys"]["domain"], "acme.example");
    assert_eq!(acme["data"]["base_plan_id"], "plan_pro");

    server.push(&[Envelope::new(
        "rulesengine.User",
        "full",
        Some("user_new".into()),
        json!({"id": "user_new", "keys": {"email": "new@example.com"}, "traits": [], "rules": []}),
    )]);
    send(
        &mut ws,
        json!({"data": {"entity_type": "rulesengine.User", "keys": {"email": "new@example.com"}}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["entity_id"], "user_new");

    send(
        &mut ws,
        json!({"data": {"entity_type": "rulesengine.Company", "keys": {"domain": "nope.example"}}}),
    )
    .await;
    let missing = next_json(&mut ws).await;
    assert_eq!(missing["message_type"], "error");
    assert_eq!(missing["data"]["keys"], json!({"domain": "nope.example"}));
}

#[tokio::test]
async fn pushes_are_broadcast_in_order_to_matching_subscribers_and_update_state() {
    let server = server(Config::default()).await;
    let mut companies_and_flags = connect(&server, KEY).await;
    let mut users_only = connect(&server, KEY).await;
    start(&mut companies_and_flags, "rulesengine.Companies", None).await;
    start(&mut companies_and_flags, "rulesengine.Flags", None).await;
    start(&mut users_only, "rulesengine.Users", None).await;
    assert_eq!(
        next_json(&mut companies_and_flags).await["entity_type"],
        "rulesengine.Companies"
    );
    assert_eq!(next_json(&mut companies_and_flags).await["data"], json!([]));
    assert_eq!(
        next_json(&mut users_only).await["entity_type"],
        "rulesengine.Users"
    );

    let mut batch = Vec::new();
    for n in 0..60u64 {
        batch.push(match n % 3 {
            0 => company(&format!("comp_{n}"), n),
            1 => user(&format!("user_{n}")),
            _ => flag(&format!("Flag-{n}"), n % 2 == 0),
        });
    }
    let (status, body) = post(&server, "/_dev/push", Value::Array(batch.clone())).await;
    assert_eq!(status, 200);
    let ids = stream_ids(&body);
    assert_eq!(ids.len(), 60);
    let parsed: Vec<StreamId> = ids.iter().map(|i| i.parse().expect("id")).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase"
    );

    for (n, (sent, id)) in batch.iter().zip(&ids).enumerate() {
        let ws = if n % 3 == 1 {
            &mut users_only
        } else {
            &mut companies_and_flags
        };
        let got = next_json(ws).await;
        assert_eq!(got["entity_type"], sent["entity_type"], "message {n}");
        assert_eq!(got["data"], sent["data"], "message {n}");
        assert_eq!(got["entity_id"], sent["entity_id"], "message {n}");
        assert_eq!(got["stream_id"], id.as_str(), "message {n}");
    }
    assert_quiet(&mut users_only, Duration::from_millis(100)).await;

    // A single envelope (not an array) works too; deleting a flag removes it.
    let (_, body) = post(
        &server,
        "/_dev/push",
        json!({"entity_type": "rulesengine.Flag", "message_type": "delete", "data": {"key": "Flag-2"}}),
    )
    .await;
    assert_eq!(stream_ids(&body).len(), 1);
    assert_eq!(
        next_json(&mut companies_and_flags).await["message_type"],
        "delete"
    );

    let mut late = connect(&server, KEY).await;
    start(&mut late, "rulesengine.Flags", None).await;
    let bulk = next_json(&mut late).await;
    let keys: Vec<&str> = bulk["data"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| f["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys.len(), 19);
    assert!(!keys.contains(&"Flag-2") && keys.contains(&"Flag-5"));
    assert_eq!(bulk["stream_id"], stream_ids(&body)[0].as_str());

    // Stop ends the subscription.
    send(
        &mut late,
        json!({"data": {"action": "stop", "entity_type": "rulesengine.Flags"}}),
    )
    .await;
    eventually("the stop to arrive", || async {
        (stats(&server).await.client_messages.len() == 5).then_some(())
    })
    .await;
    server.push(&[serde_json::from_value(flag("after-stop", true)).expect("envelope")]);
    assert_eq!(
        next_json(&mut companies_and_flags).await["data"]["key"],
        "after-stop"
    );
    assert_quiet(&mut late, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn replay_from_sends_what_came_after_and_stale_cursors_get_reload() {
    let server = server(Config {
        fixtures: sample_fixtures(),
        ..Config::default()
    })
    .await;
    let ids: Vec<String> = server
        .push(&[
            serde_json::from_value(company("comp_a", 1)).expect("envelope"),
            serde_json::from_value(user("user_a")).expect("envelope"),
            serde_json::from_value(company("comp_b", 2)).expect("envelope"),
            serde_json::from_value(flag("replayed", true)).expect("envelope"),
            serde_json::from_value(company("comp_c", 3)).expect("envelope"),
        ])
        .iter()
        .map(ToString::to_string)
        .collect();

    let mut ws = connect(&server, KEY).await;
    start(&mut ws, "rulesengine.Companies", Some(&ids[0])).await;
    assert_eq!(
        next_json(&mut ws).await["entity_type"],
        "rulesengine.Companies"
    );
    let b = next_json(&mut ws).await;
    assert_eq!(
        (b["entity_id"].as_str(), b["stream_id"].as_str()),
        (Some("comp_b"), Some(ids[2].as_str()))
    );
    let c = next_json(&mut ws).await;
    assert_eq!(
        (c["entity_id"].as_str(), c["stream_id"].as_str()),
        (Some("comp_c"), Some(ids[4].as_str()))
    );

    // Flags with a cursor: the replay instead of the bulk.
    start(&mut ws, "rulesengine.Flags", Some(&ids[0])).await;
    let replayed = next_json(&mut ws).await;
    assert_eq!(replayed["entity_type"], "rulesengine.Flag");
    assert_eq!(replayed["stream_id"], ids[3].as_str());

    // Up to date: only the confirmation.
    start(&mut ws, "rulesengine.Users", Some(&ids[4])).await;
    assert_eq!(next_json(&mut ws).await["entity_type"], "rulesengine.Users");
    // Live messages follow the replay.
    server.push(&[serde_json::from_value(user("user_live")).expect("envelope")]);
    assert_eq!(next_json(&mut ws).await["entity_id"], "user_live");

    // A cursor from before this server (or from the future): reload, then
    // the usual answer.
    let mut stale = connect(&server, KEY).await;
    start(&mut stale, "rulesengine.Companies", Some("1-0")).await;
    assert_eq!(
        next_json(&mut stale).await,
        json!({"entity_type": "", "message_type": "reload", "entity_id": null, "data": null})
    );
    assert_eq!(
        next_json(&mut stale).await["entity_type"],
        "rulesengine.Companies"
    );
    start(&mut stale, "rulesengine.Flags", Some("99999999999999-0")).await;
    assert_eq!(next_json(&mut stale).await["message_type"], "reload");
    assert_eq!(
        next_json(&mut stale).await["entity_type"],
        "rulesengine.Flags"
    );
}

#[tokio::test]
async fn replay_older_than_the_retained_log_gets_reload() {
    let server = server(Config {
        log_retention: Some(2),
        ..Config::default()
    })
    .await;
    let envelopes: Vec<Envelope> = (0..5)
        .map(|n| serde_json::from_value(company(&format!("comp_{n}"), n)).expect("envelope"))
        .collect();
    let ids = server.push(&envelopes);
    let stats = stats(&server).await;
    assert_eq!(stats.log_len, 2);
    assert_eq!(stats.log_floor, ids[2].to_string());

    let mut ws = connect(&server, KEY).await;
    start(&mut ws, "rulesengine.Companies", Some(&ids[1].to_string())).await;
    assert_eq!(next_json(&mut ws).await["message_type"], "reload");
    assert_eq!(
        next_json(&mut ws).await["entity_type"],
        "rulesengine.Companies"
    );
    // The oldest cursor still covered: everything after it.
    start(&mut ws, "rulesengine.Companies", Some(&ids[2].to_string())).await;
    assert_eq!(
        next_json(&mut ws).await["entity_type"],
        "rulesengine.Companies"
    );
    assert_eq!(next_json(&mut ws).await["entity_id"], "comp_3");
    assert_eq!(next_json(&mut ws).await["entity_id"], "comp_4");
}

#[tokio::test]
async fn reload_goes_to_every_connection() {
    let server = server(Config::default()).await;
    let mut a = connect(&server, KEY).await;
    let mut b = connect(&server, "another-key").await;
    start(&mut a, "rulesengine.Companies", None).await;
    next_json(&mut a).await;
    eventually("two connections", || async {
        (stats(&server).await.connections == 2).then_some(())
    })
    .await;
    let (status, body) = post(&server, "/_dev/reload", json!({})).await;
    assert_eq!((status, body), (200, json!({"connections": 2})));
    let reload =
        json!({"entity_type": "", "message_type": "reload", "entity_id": null, "data": null});
    assert_eq!(next_json(&mut a).await, reload);
    assert_eq!(next_json(&mut b).await, reload);
}

#[tokio::test]
async fn drop_closes_connections_without_a_close_frame() {
    let server = server(Config::default()).await;
    let mut ws = connect(&server, KEY).await;
    start(&mut ws, "rulesengine.Flags", None).await;
    next_json(&mut ws).await;
    let (status, body) = post(&server, "/_dev/drop", json!({})).await;
    assert_eq!((status, body), (200, json!({"dropped": 1})));
    match next_message(&mut ws).await {
        None | Some(Err(_)) => {}
        Some(Ok(other)) => panic!("expected an abrupt end, got {other:?}"),
    }
    eventually("the connection to be gone", || async {
        let stats = stats(&server).await;
        (stats.connections == 0 && !stats.headers[0].open).then_some(())
    })
    .await;
    // Reconnecting works.
    let mut again = connect(&server, KEY).await;
    start(&mut again, "rulesengine.Users", None).await;
    assert_eq!(
        next_json(&mut again).await["entity_type"],
        "rulesengine.Users"
    );
}

async fn expect_close_4001(ws: &mut Ws) {
    match next_message(ws).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "invalid api key");
        }
        other => panic!("expected close 4001, got {other:?}"),
    }
}

#[tokio::test]
async fn rejected_keys_are_closed_with_4001() {
    let server = server(Config::default()).await;
    let mut victim = connect(&server, "doomed").await;
    let mut bystander = connect(&server, KEY).await;
    start(&mut victim, "rulesengine.Companies", None).await;
    next_json(&mut victim).await;

    let (status, body) = post(&server, "/_dev/reject-key", json!({"key": "doomed"})).await;
    assert_eq!((status, body["closed"].clone()), (200, json!(1)));
    expect_close_4001(&mut victim).await;

    let mut again = connect(&server, "doomed").await;
    expect_close_4001(&mut again).await;
    let mut empty = connect(&server, "").await;
    expect_close_4001(&mut empty).await;
    assert_eq!(get(&server, "/users/count", Some("doomed")).await.0, 401);

    start(&mut bystander, "rulesengine.Users", None).await;
    assert_eq!(
        next_json(&mut bystander).await["entity_type"],
        "rulesengine.Users"
    );

    let (status, _) = post(&server, "/_dev/allow-key", json!({"key": "doomed"})).await;
    assert_eq!(status, 200);
    assert_eq!(get(&server, "/users/count", Some("doomed")).await.0, 200);
    let mut back = connect(&server, "doomed").await;
    start(&mut back, "rulesengine.Users", None).await;
    assert_eq!(
        next_json(&mut back).await["entity_type"],
        "rulesengine.Users"
    );

    let stats = stats(&server).await;
    assert_eq!(stats.rejected_connects, 2);
    assert!(!stats.headers[2].accepted);
}

#[tokio::test]
async fn configured_keys_only() {
    let server = server(Config {
        api_keys: vec![KEY.into()],
        ..Config::default()
    })
    .await;
    let mut stranger = connect(&server, "stranger").await;
    expect_close_4001(&mut stranger).await;
    let mut friend = connect(&server, KEY).await;
    start(&mut friend, "rulesengine.Flags", None).await;
    assert_eq!(
        next_json(&mut friend).await["entity_type"],
        "rulesengine.Flags"
    );
}

#[tokio::test]
async fn fail_pages_fails_the_next_page_requests_only() {
    let server = server(Config {
        fixtures: Fixtures {
            companies: generate::rest_companies(3, None),
            ..Fixtures::default()
        },
        ..Config::default()
    })
    .await;
    let (status, _) = post(
        &server,
        "/_dev/fail-pages",
        json!({"count": 2, "status": 503}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(get(&server, "/companies/count", Some(KEY)).await.0, 200);
    let (status, body) = get(&server, "/companies?limit=10&offset=0", Some(KEY)).await;
    assert_eq!(status, 503);
    assert!(body["error"].is_string());
    assert_eq!(
        get(&server, "/users?limit=10&offset=0", Some(KEY)).await.0,
        503
    );
    let (status, body) = get(&server, "/companies?limit=10&offset=0", Some(KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().map(Vec::len), Some(3));

    assert_eq!(
        post(
            &server,
            "/_dev/fail-pages",
            json!({"count": 1, "status": 42})
        )
        .await
        .0,
        400
    );
    let (status, _) = post(
        &server,
        "/_dev/rest",
        json!({"users": [generate::rest_user(9, None)]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        get(&server, "/users/count", Some(KEY)).await.1,
        json!({"data": {"count": 1}})
    );
    assert_eq!(
        get(&server, "/companies/count", Some(KEY)).await.1,
        json!({"data": {"count": 3}})
    );
}

#[tokio::test]
async fn malformed_client_messages_get_error_envelopes_and_keep_the_connection() {
    let server = server(Config::default()).await;
    let mut ws = connect(&server, KEY).await;
    for bad in [
        "not json".to_owned(),
        json!({"entity_type": "rulesengine.Flags"}).to_string(),
        json!({"data": {"entity_type": "rulesengine.Nope"}}).to_string(),
        json!({"data": {"action": "pause", "entity_type": "rulesengine.Flags"}}).to_string(),
        json!({"data": {"entity_type": "rulesengine.Flags", "replay_from": "yesterday"}})
            .to_string(),
        json!({"data": {"entity_type": "rulesengine.Company", "keys": ["a"]}}).to_string(),
    ] {
        ws.send(Message::text(bad.clone())).await.expect("send");
        let error = next_json(&mut ws).await;
        assert_eq!(error["message_type"], "error", "{bad}");
        assert!(error["data"]["error"].is_string(), "{bad}");
    }
    // Answering pings (tungstenite does it while the server reads).
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(payload))) => return payload,
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"are you there");
    start(&mut ws, "rulesengine.Companies", None).await;
    assert_eq!(
        next_json(&mut ws).await["entity_type"],
        "rulesengine.Companies"
    );
    assert_eq!(
        stats(&server).await.client_messages[0].message,
        json!("not json")
    );
}

#[tokio::test]
async fn flood_reaches_its_count_at_the_requested_pace() {
    let server = server(Config::default()).await;
    let mut ws = connect(&server, KEY).await;
    start(&mut ws, "rulesengine.Companies", None).await;
    next_json(&mut ws).await;

    let started = Instant::now();
    let (status, body) = post(
        &server,
        "/_dev/flood",
        json!({"count": 300, "rate_per_sec": 2000, "entity_type": "rulesengine.Company",
               "size_bytes": 2048, "ids": 7}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"started": true})));
    assert_eq!(
        post(&server, "/_dev/flood", json!({"count": 1})).await.0,
        409,
        "one flood at a time"
    );
    let mut last = None;
    for n in 0..300u64 {
        let message = next_json(&mut ws).await;
        assert_eq!(message["entity_type"], "rulesengine.Company");
        assert_eq!(message["message_type"], "full");
        let id = format!("bench_comp_{}", n % 7);
        assert_eq!(message["entity_id"], id.as_str());
        assert_eq!(message["data"]["keys"], json!({"bench_id": id}));
        assert!(
            message["data"]["bench_sent_unix_ns"]
                .as_u64()
                .is_some_and(|ns| ns > 0)
        );
        let size = message["data"].to_string().len();
        assert!(size.abs_diff(2048) < 64, "document of {size} bytes");
        let stream_id = parse_id(&message["stream_id"]);
        assert!(last.is_none_or(|last| last < stream_id));
        last = Some(stream_id);
    }
    // 300 messages at 2000/s take about 150 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(120),
        "{:?}",
        started.elapsed()
    );
    let status: FloodStatus = eventually("the flood to finish", || async {
        let (_, body) = get(&server, "/_dev/flood", None).await;
        let status: FloodStatus = serde_json::from_value(body).expect("flood status");
        (!status.running).then_some(status)
    })
    .await;
    assert_eq!(status.sent, 300);
    assert_eq!(stats(&server).await.pushed, 300);

    // As fast as possible, users; bad entity types are refused.
    assert_eq!(
        post(
            &server,
            "/_dev/flood",
            json!({"count": 5, "entity_type": "rulesengine.Flags"})
        )
        .await
        .0,
        400
    );
    let (status, _) = post(
        &server,
        "/_dev/flood",
        json!({"count": 2000, "rate_per_sec": 0, "entity_type": "rulesengine.User", "ids": 50}),
    )
    .await;
    assert_eq!(status, 200);
    eventually("the fast flood to finish", || async {
        let status = server.flood_status();
        (!status.running && status.sent == 2000).then_some(())
    })
    .await;
    assert_quiet(&mut ws, Duration::from_millis(50)).await;
}

#[tokio::test]
async fn flood_log_is_capped_and_old_cursors_get_reload() {
    let server = server(Config {
        flood_log_cap: 100,
        ..Config::default()
    })
    .await;
    let first = server.push(&[serde_json::from_value(company("comp_first", 0)).expect("envelope")]);
    server
        .flood(emcachers_datastream_server::FloodRequest::companies(500, 0))
        .expect("flood starts");
    eventually("the flood to finish", || async {
        (!server.flood_status().running).then_some(())
    })
    .await;
    let stats = stats(&server).await;
    assert_eq!(stats.log_len, 100);
    let mut ws = connect(&server, KEY).await;
    start(
        &mut ws,
        "rulesengine.Companies",
        Some(&first[0].to_string()),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["message_type"], "reload");
}

#[tokio::test]
async fn a_flags_message_of_several_mib_arrives_whole() {
    let server = server(Config::default()).await;
    let flags: Vec<Value> = (0..600)
        .map(|n| {
            json!({"id": format!("flag_{n}"), "account_id": "acc", "environment_id": "env",
                   "key": format!("big-flag-{n}"), "default_value": false,
                   "rules": [{"id": format!("rule_{n}"), "rule_type": "standard",
                              "conditions": [{"condition_type": "company", "operator": "eq",
                                              "resource_ids": vec![format!("comp_{n:08}"); 400]}],
                              "condition_groups": [], "value": true}]})
        })
        .collect();
    let body = json!({"entity_type": "rulesengine.Flags", "message_type": "full", "data": flags});
    assert!(body.to_string().len() > 3 * 1024 * 1024);
    let (status, _) = post(&server, "/_dev/push", body).await;
    assert_eq!(status, 200);

    let mut ws = connect(&server, KEY).await;
    start(&mut ws, "rulesengine.Flags", None).await;
    let text = match next_message(&mut ws).await {
        Some(Ok(Message::Text(text))) => text,
        other => panic!("expected the bulk, got {other:?}"),
    };
    assert!(text.len() > 2 * 1024 * 1024, "{} bytes", text.len());
    let bulk: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(bulk["data"], Value::Array(flags));
}

#[tokio::test]
async fn a_connection_that_cannot_keep_up_is_closed_without_blocking_others() {
    let server = server(Config {
        queue_capacity: 8,
        ..Config::default()
    })
    .await;
    let mut slow = connect(&server, KEY).await;
    let mut fast = connect(&server, KEY).await;
    start(&mut slow, "rulesengine.Companies", None).await;
    start(&mut fast, "rulesengine.Companies", None).await;
    next_json(&mut slow).await;
    next_json(&mut fast).await;

    // 256 KiB messages: the slow client's socket buffers fill up quickly.
    let padding = "x".repeat(256 * 1024);
    let total = 200u64;
    let reader = tokio::spawn(async move {
        for n in 0..total {
            let message = next_json(&mut fast).await;
            assert_eq!(message["data"]["n"], n);
        }
        fast
    });
    for n in 0..total {
        server.push(&[Envelope::new(
            "rulesengine.Company",
            "full",
            Some(format!("comp_{n}")),
            json!({"id": format!("comp_{n}"), "n": n, "padding": padding}),
        )]);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _fast = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("the fast client reads everything")
        .expect("reader");
    eventually("the slow connection to be closed", || async {
        (stats(&server).await.slow_closed == 1).then_some(())
    })
    .await;
    // The slow client finds its connection cut, without a close frame.
    let mut received = 0;
    loop {
        match tokio::time::timeout(DEADLINE, slow.next())
            .await
            .expect("ends")
        {
            Some(Ok(Message::Text(_))) => received += 1,
            Some(Ok(Message::Close(_))) => panic!("no close frame expected"),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    assert!(received < total, "{received}");
}
