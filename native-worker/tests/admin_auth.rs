//! The admin endpoint off loopback needs a token, and with one set it refuses requests without
//! it: `/stats` is for operators, not the public.

mod support;

use pubsearch_native_worker::admin;
use pubsearch_native_worker::ingest::{self, IngestConfig};
use pubsearch_native_worker::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_non_loopback_address_is_refused_without_a_token() {
    for (addr, token) in [("0.0.0.0:0", None), ("[::]:0", Some(""))] {
        let error = admin::bind(addr.parse().unwrap(), token)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not a loopback address") && error.contains("PUBSEARCH_ADMIN_TOKEN"),
            "{error}"
        );
    }
    // Loopback needs none.
    admin::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
}

/// The status code of `GET /health` with `authorization` as its header, if any.
async fn status(addr: std::net::SocketAddr, authorization: Option<&str>) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
    let request = format!("GET /health HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_request_must_carry_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.db")).unwrap();
    let (sink, _writer) =
        ingest::spawn_writer(&store, &IngestConfig::default(), None, None).unwrap();
    let listener = admin::bind("127.0.0.1:0".parse().unwrap(), Some("s3cret"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let state = support::admin_state(&sink, Some("s3cret"));
    let stop = CancellationToken::new();
    let server = tokio::spawn(admin::serve(listener, state, stop.clone()));

    assert_eq!(status(addr, None).await, 401);
    assert_eq!(status(addr, Some("Bearer wrong")).await, 401);
    assert_eq!(status(addr, Some("Bearer s3cret-and-more")).await, 401);
    assert_eq!(
        status(addr, Some("s3cret")).await,
        401,
        "the Bearer scheme is required"
    );
    assert_eq!(status(addr, Some("Bearer s3cret")).await, 200);
    stop.cancel();
    server.await.unwrap().unwrap();
}
