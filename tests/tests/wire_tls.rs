//! TLS on the protocol port, through the real server and client: a CA and
//! a server certificate made at test time (rcgen), a client that trusts the
//! CA does everything as over plain TCP; a client that trusts another CA,
//! or names another server, or speaks plain TCP, fails cleanly and the
//! server serves on; a peer that never finishes the TLS handshake is
//! dropped at the handshake deadline and holds no one else up.

use std::time::Duration;

use lanes::client::{Client, ClientError};
use lanes::model::{JobOptions, Report};
use lanes::server::{self, EngineConfig, EngineError, Limits, Tokens};
use lanes::tls::{ClientTls, TlsFiles};
use lanes_tests::{complete, next_dispatch, one_job, Options, Raw, Read, TestServer, ADMIN, AGENT};

/// A CA, and a certificate for `localhost` it signed, as PEM files in a
/// temporary folder.
struct Certificates {
    folder: tempfile::TempDir,
}

impl Certificates {
    fn new() -> Certificates {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Lanes test CA");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let server_key = rcgen::KeyPair::generate().expect("a server key");
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&server_key, &ca, &ca_key)
            .expect("the server certificate");
        std::fs::write(folder.path().join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(folder.path().join("server.pem"), server.pem()).expect("write");
        std::fs::write(folder.path().join("server.key"), server_key.serialize_pem())
            .expect("write");
        Certificates { folder }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.folder.path().join("ca.pem")
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.folder.path().join("server.pem"),
            key: self.folder.path().join("server.key"),
        }
    }

    fn client_tls(&self) -> ClientTls {
        ClientTls::from_ca_file(&self.ca(), "localhost").expect("the CA loads")
    }
}

async fn tls_server(certificates: &Certificates, limits: Limits) -> TestServer {
    TestServer::start_with(Options {
        limits,
        tls: Some(certificates.files()),
        ..Options::default()
    })
    .await
}

/// Proves the server serves: a TLS client connects and reads.
async fn serves(server: &TestServer, tls: &ClientTls) {
    let client = Client::connect_tls(server.address(), tls, ADMIN, "test")
        .await
        .expect("a trusted TLS client connects");
    client.queues().await.expect("the server answers");
}

#[tokio::test]
async fn over_tls_a_job_is_submitted_dispatched_and_completed() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, Limits::default()).await;
    let tls = certificates.client_tls();
    let submitter = Client::connect_tls(server.address(), &tls, ADMIN, "submitter")
        .await
        .expect("connect over TLS");
    let agent = Client::connect_tls(server.address(), &tls, AGENT, "agent")
        .await
        .expect("connect over TLS");
    agent
        .register("agent-1", vec!["default".to_string()], vec![], 1, vec![])
        .await
        .expect("register");
    let submitted = submitter
        .submit(one_job(JobOptions::default()))
        .await
        .expect("submit");
    agent.take_work(1).await.expect("take work");
    let (job, attempt) = next_dispatch(&agent).await;
    assert_eq!(job, submitted.first_job);
    complete(&agent, job, attempt, Report::Succeeded).await;
    let info = submitter.job(job).await.expect("get job");
    assert!(
        matches!(
            info.status,
            lanes::sched::view::JobStatus::Finished {
                outcome: lanes::model::Outcome::Succeeded,
                ..
            }
        ),
        "{:?}",
        info.status
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_fails_the_handshake() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, Limits::default()).await;
    let stranger = Certificates::new().client_tls();
    match Client::connect_tls(server.address(), &stranger, ADMIN, "test").await {
        Ok(_) => panic!("a client trusting another CA connected"),
        Err(error @ ClientError::Tls { .. }) => {
            let text = error.to_string();
            assert!(text.contains("TLS handshake with localhost"), "{text}");
            assert!(text.contains("certificate"), "{text}");
        }
        Err(other) => panic!("expected a TLS error, got {other:?}"),
    }
    // The right CA for the wrong name fails the same way.
    let wrong_name =
        ClientTls::from_ca_file(&certificates.ca(), "other.example").expect("the CA loads");
    match Client::connect_tls(server.address(), &wrong_name, ADMIN, "test").await {
        Ok(_) => panic!("a certificate for localhost passed for other.example"),
        Err(error) => assert!(matches!(error, ClientError::Tls { .. }), "{error:?}"),
    }
    serves(&server, &certificates.client_tls()).await;
    server.stop().await;
}

#[tokio::test]
async fn a_plain_client_against_the_tls_port_fails_and_the_server_serves_on() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, Limits::default()).await;
    // The plain client's Hello is not a TLS ClientHello: the server closes.
    let plain = Client::connect(server.address(), ADMIN, "plain").await;
    assert!(plain.is_err(), "a plain client got through the TLS port");
    serves(&server, &certificates.client_tls()).await;
    server.stop().await;
}

#[tokio::test]
async fn a_tls_client_against_a_plain_port_fails_cleanly() {
    let certificates = Certificates::new();
    let server = TestServer::start().await;
    let error = Client::connect_tls(server.address(), &certificates.client_tls(), ADMIN, "t")
        .await
        .err()
        .expect("a TLS client got through a plain port");
    assert!(matches!(error, ClientError::Tls { .. }), "{error:?}");
    server
        .admin()
        .await
        .queues()
        .await
        .expect("the server answers");
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_stalls_the_tls_handshake_is_dropped_at_the_deadline() {
    let certificates = Certificates::new();
    let server = tls_server(
        &certificates,
        Limits {
            handshake_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
    )
    .await;
    // One says nothing; one starts a TLS record and never finishes it.
    let mut silent = Raw::connect(server.address()).await;
    let mut partial = Raw::connect(server.address()).await;
    partial
        .send_bytes(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("send");
    for raw in [&mut silent, &mut partial] {
        // No frame can say why: the server just closes.
        assert!(matches!(
            raw.read(Duration::from_secs(10)).await,
            Read::Closed
        ));
    }
    serves(&server, &certificates.client_tls()).await;
    server.stop().await;
}

#[tokio::test]
async fn peers_stalling_the_tls_handshake_do_not_hold_up_others() {
    let certificates = Certificates::new();
    let server = tls_server(
        &certificates,
        Limits {
            handshake_timeout: Duration::from_secs(600),
            ..Limits::default()
        },
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(Raw::connect(server.address()).await);
    }
    // The stalled handshakes run in their own tasks, not the accept loop.
    serves(&server, &certificates.client_tls()).await;
    drop(stalled);
    server.stop().await;
}

/// Starts an engine with `tls`; its start error.
async fn start_error(tls: TlsFiles) -> String {
    let data = tempfile::tempdir().expect("a temporary folder");
    let started = server::start(EngineConfig {
        data: data.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        durability: lanes::driver::Durability::Sync,
        scheduler: lanes::sched::SchedulerConfig { lease_ms: 30_000 },
        snapshot_every_events: None,
        retention: Some(Default::default()),
        tokens: Tokens::open(),
        limits: Limits::default(),
        repair: false,
        tls: Some(tls),
        http: None,
    })
    .await;
    match started {
        Ok(running) => {
            running.stop().await.expect("a clean stop");
            panic!("the engine started with bad TLS files");
        }
        Err(error @ EngineError::Tls(_)) => error.to_string(),
        Err(other) => panic!("expected a TLS error, got {other}"),
    }
}

#[tokio::test]
async fn bad_or_missing_tls_files_are_start_errors_naming_the_file() {
    let certificates = Certificates::new();
    let folder = certificates.folder.path();
    let missing = folder.join("missing.pem");
    let text = start_error(TlsFiles {
        cert: missing.clone(),
        key: certificates.files().key,
    })
    .await;
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(text.contains("No such file"), "{text}");

    let garbage = folder.join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").expect("write");
    let text = start_error(TlsFiles {
        cert: certificates.files().cert,
        key: garbage.clone(),
    })
    .await;
    assert!(text.contains(&garbage.display().to_string()), "{text}");
    assert!(text.contains("no private key"), "{text}");

    // A key that belongs to another certificate.
    let other = Certificates::new();
    let text = start_error(TlsFiles {
        cert: certificates.files().cert,
        key: other.files().key,
    })
    .await;
    assert!(
        text.contains(&other.files().key.display().to_string()),
        "{text}"
    );

    // A certificate file with no certificate in it.
    let text = start_error(TlsFiles {
        cert: certificates.files().key,
        key: certificates.files().key,
    })
    .await;
    assert!(text.contains("no certificate"), "{text}");
}

/// A TLS connection made by hand (rustls, ring), offering `alpn`: for what
/// the Lanes client never does.
async fn raw_tls(
    server: &TestServer,
    certificates: &Certificates,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(certificates.ca()).expect("the CA"))
        .expect("a CA certificate");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.address()).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
    connector.connect(name, tcp).await
}

#[tokio::test]
async fn alpn_lanes_1_or_none_is_accepted_and_any_other_refused() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, Limits::default()).await;
    let lanes = raw_tls(&server, &certificates, &[b"lanes/1"])
        .await
        .expect("lanes/1 is accepted");
    assert_eq!(lanes.get_ref().1.alpn_protocol(), Some(&b"lanes/1"[..]));
    let none = raw_tls(&server, &certificates, &[])
        .await
        .expect("no ALPN is accepted");
    assert_eq!(none.get_ref().1.alpn_protocol(), None);
    let Err(error) = raw_tls(&server, &certificates, &[b"h2"]).await else {
        panic!("h2 is accepted");
    };
    assert!(
        error.to_string().contains("NoApplicationProtocol"),
        "{error}"
    );
    serves(&server, &certificates.client_tls()).await;
    server.stop().await;
}

#[tokio::test]
async fn a_tls_peer_that_sends_no_hello_gets_the_handshake_error() {
    use tokio::io::AsyncReadExt;
    let certificates = Certificates::new();
    let server = tls_server(
        &certificates,
        Limits {
            handshake_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
    )
    .await;
    // TLS done, then no Hello: the protocol's own deadline error, inside TLS.
    let mut stream = raw_tls(&server, &certificates, &[b"lanes/1"])
        .await
        .expect("the TLS handshake");
    let mut bytes = Vec::new();
    // The server closes after the error; a missing close_notify is fine.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the server closes the connection");
    let frame = lanes::protocol::Frame::decode(&bytes).expect("one whole frame");
    assert_eq!(frame.request_id, 0);
    match frame.message {
        lanes::protocol::Message::Error(error) => {
            assert_eq!(
                error.code,
                lanes::model::ErrorCode::Unauthenticated,
                "{error:?}"
            );
            assert!(error.message.contains("no handshake within"), "{error:?}");
        }
        other => panic!("expected the handshake error, got {other:?}"),
    }
    server.stop().await;
}
