//! End-to-end tests of the connection layer: real QUIC sockets on 127.0.0.1,
//! a fresh PKI per test made by `fedcrime-certs` in a temporary directory.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use fedcrime_certs::{Pki, PkiOptions, RevocationReason, Validity};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use time::OffsetDateTime;

use super::*;

const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn pki(stations: usize) -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), stations, &PkiOptions::new(now(), 30)).unwrap();
    (dir, pki)
}

fn settings() -> TransportSettings {
    TransportSettings {
        handshake_timeout_ms: 2_000,
        idle_timeout_ms: 5_000,
        keep_alive_ms: 1_000,
        ..TransportSettings::default()
    }
}

fn server_tls(pki: &Pki, crl_check_interval_ms: u64) -> ServerTls {
    ServerTls {
        crl_check_interval_ms,
        ..ServerTls::from_pki_dir(pki.dir())
    }
}

fn client_tls(pki: &Pki, station: &str) -> ClientTls {
    ClientTls::from_pki_dir(pki.dir(), station, "localhost")
}

fn once() -> ReconnectPolicy {
    ReconnectPolicy {
        max_attempts: 1,
        ..ReconnectPolicy::default()
    }
}

fn listen(pki: &Pki, crl_check_interval_ms: u64) -> Listener {
    Listener::bind(
        LOOPBACK,
        &server_tls(pki, crl_check_interval_ms),
        &settings(),
    )
    .unwrap()
}

fn connector(tls: &ClientTls, listener: &Listener) -> Connector {
    Connector::new(tls, &settings(), listener.local_addr().unwrap(), once(), 1).unwrap()
}

/// Connects, exchanges a message both ways, and returns the identity the
/// server read from the certificate.
async fn connect_and_talk(listener: &Listener, tls: &ClientTls) -> StationId {
    let c = connector(tls, listener);
    let conn = c.connect().await.unwrap();
    let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("the listener yields the connection")
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"hello").await.unwrap();
    send.finish().unwrap();
    let (mut s_send, mut s_recv) = accepted.connection.accept_bi().await.unwrap();
    assert_eq!(s_recv.read_to_end(64).await.unwrap(), b"hello");
    s_send.write_all(b"welcome").await.unwrap();
    s_send.finish().unwrap();
    assert_eq!(recv.read_to_end(64).await.unwrap(), b"welcome");
    conn.close(CLOSE_SHUTDOWN, b"done");
    accepted.station
}

/// Asserts the server refused the client's certificate: the client learns it
/// at connect time, the listener counts a rejection with `server_reason`.
async fn assert_refused_by_server(listener: &Listener, c: &Connector, server_reason: &str) {
    let before = listener.stats().rejected;
    match c.connect().await {
        Err(NetError::Refused {
            by: RefusedBy::Peer,
            ..
        }) => {}
        other => panic!("expected a refusal by the server, got {other:?}"),
    }
    // The server side records why.
    for _ in 0..200 {
        if listener.stats().rejected > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rejections = listener.rejections();
    let last = rejections.last().expect("a rejection is recorded");
    assert!(
        last.reason.contains(server_reason),
        "expected {server_reason:?} in {:?}",
        last.reason
    );
    assert_eq!(listener.stats().rejected, before + 1);
}

#[tokio::test]
async fn station_identity_is_read_from_its_certificate() {
    let (_d, pki) = pki(3);
    let listener = listen(&pki, 1000);
    let station = connect_and_talk(&listener, &client_tls(&pki, "station-02")).await;
    assert_eq!(station.as_str(), "station-02");
    let station = connect_and_talk(&listener, &client_tls(&pki, "station-03")).await;
    assert_eq!(station.as_str(), "station-03");
    assert_eq!(listener.stats().accepted, 2);
    assert_eq!(listener.stats().rejected, 0);
}

#[tokio::test]
async fn alpn_is_negotiated_and_the_connector_knows_its_station() {
    let (_d, pki) = pki(1);
    let listener = listen(&pki, 1000);
    let c = connector(&client_tls(&pki, "station-01"), &listener);
    assert_eq!(c.station().unwrap().as_str(), "station-01");
    let conn = c.connect().await.unwrap();
    let hd = conn
        .handshake_data()
        .unwrap()
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .unwrap();
    assert_eq!(hd.protocol.as_deref(), Some(ALPN));
    // The server certificate carries no station identity.
    assert!(matches!(
        peer_identity(&conn),
        Err(NetError::Identity { .. })
    ));
}

#[tokio::test]
async fn refused_without_a_client_certificate() {
    let (_d, pki) = pki(1);
    let listener = listen(&pki, 1000);
    let roots = tls::load_roots(&pki.ca_cert_path()).unwrap();
    let mut config = tls::client_builder(roots).unwrap().with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quinn_config = tls::quinn_client_config(config, &settings()).unwrap();
    let c = Connector::with_config(
        quinn_config,
        "localhost",
        &settings(),
        listener.local_addr().unwrap(),
        once(),
        1,
    )
    .unwrap();
    assert!(c.station().is_none());
    assert_refused_by_server(&listener, &c, "no certificate").await;
    // The listener keeps serving.
    connect_and_talk(&listener, &client_tls(&pki, "station-01")).await;
}

/// Writes a self-signed certificate claiming `station` and returns its TLS paths.
fn self_signed(dir: &Path, station: &str, ca: &Path) -> ClientTls {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, station);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("{STATION_URI_PREFIX}{station}").try_into().unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join("forged.pem");
    let key_path = dir.join("forged.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    ClientTls {
        ca: ca.to_owned(),
        cert: cert_path,
        key: key_path,
        server_name: "localhost".to_owned(),
    }
}

#[tokio::test]
async fn refused_self_signed_client_certificate() {
    let (_d, pki) = pki(1);
    let forged_dir = tempfile::tempdir().unwrap();
    let listener = listen(&pki, 1000);
    // It claims a real station's identity, but no CA vouches for it.
    let tls = self_signed(forged_dir.path(), "station-01", &pki.ca_cert_path());
    assert_refused_by_server(&listener, &connector(&tls, &listener), "UnknownIssuer").await;
    connect_and_talk(&listener, &client_tls(&pki, "station-01")).await;
}

#[tokio::test]
async fn refused_certificate_from_another_ca() {
    let (_d, pki) = pki(1);
    let listener = listen(&pki, 1000);
    // A station of another agency, trusting our CA for the server.
    let (_d2, other) = other_agency("LAPD-impostor");
    let tls = ClientTls {
        ca: pki.ca_cert_path(),
        ..client_tls(&other, "station-01")
    };
    assert_refused_by_server(&listener, &connector(&tls, &listener), "UnknownIssuer").await;
    connect_and_talk(&listener, &client_tls(&pki, "station-01")).await;
}

/// Issue 11, defect 12: a second CA of the same agency got the same subject
/// name by default, so its certificates were refused only as "BadSignature".
/// Every CA's name now carries its key's fingerprint, and the refusal says
/// what happened.
#[tokio::test]
async fn two_certificate_authorities_get_the_same_subject_name_by_default() {
    let (_d, pki) = pki(1);
    let listener = listen(&pki, 1000);
    let (_d3, twin) = pki_pair();
    assert_ne!(
        pki.manifest().ca.common_name,
        twin.manifest().ca.common_name
    );
    assert!(pki
        .manifest()
        .ca
        .common_name
        .starts_with("fedcrime agency Root CA "));
    let tls = ClientTls {
        ca: pki.ca_cert_path(),
        ..client_tls(&twin, "station-01")
    };
    assert_refused_by_server(
        &listener,
        &connector(&tls, &listener),
        "signed by a different authority",
    )
    .await;
    connect_and_talk(&listener, &client_tls(&pki, "station-01")).await;
}

/// A second PKI with the same agency name (so the same CA subject).
fn pki_pair() -> (tempfile::TempDir, Pki) {
    pki(1)
}

/// A PKI of a differently named agency.
fn other_agency(agency: &str) -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PkiOptions::new(now(), 30);
    opts.agency = agency.to_owned();
    let pki = Pki::generate(dir.path(), 1, &opts).unwrap();
    (dir, pki)
}

#[tokio::test]
async fn refused_expired_client_certificate() {
    let (_d, mut pki) = pki(1);
    let past = Validity::between(
        now() - time::Duration::days(10),
        now() - time::Duration::days(1),
    );
    pki.add_station(Some("station-09"), past, now()).unwrap();
    let listener = listen(&pki, 1000);
    let tls = client_tls(&pki, "station-09");
    assert_refused_by_server(
        &listener,
        &connector(&tls, &listener),
        "certificate expired",
    )
    .await;
    connect_and_talk(&listener, &client_tls(&pki, "station-01")).await;
}

#[tokio::test]
async fn revocation_takes_effect_when_the_crl_file_changes() {
    let (_d, mut pki) = pki(2);
    let listener = listen(&pki, 20);
    let tls = client_tls(&pki, "station-01");
    assert_eq!(
        connect_and_talk(&listener, &tls).await.as_str(),
        "station-01"
    );
    assert_eq!(listener.verifier().loads(), 1);

    pki.revoke("station-01", RevocationReason::KeyCompromise, now())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Same listener, no restart: the changed CRL is picked up.
    assert_refused_by_server(&listener, &connector(&tls, &listener), "Revoked").await;
    assert_eq!(listener.verifier().loads(), 2);
    // Other stations are unaffected.
    assert_eq!(
        connect_and_talk(&listener, &client_tls(&pki, "station-02"))
            .await
            .as_str(),
        "station-02"
    );
}

#[tokio::test]
async fn explicit_crl_reload_and_a_broken_crl_keeps_the_old_one() {
    let (_d, mut pki) = pki(2);
    // Checks for changes at most hourly: only reload_crl() applies them.
    let listener = listen(&pki, 3_600_000);
    let tls = client_tls(&pki, "station-02");
    pki.revoke("station-02", RevocationReason::Superseded, now())
        .unwrap();
    connect_and_talk(&listener, &tls).await;
    listener.reload_crl().unwrap();
    assert_refused_by_server(&listener, &connector(&tls, &listener), "Revoked").await;

    // A garbled CRL is refused by name; revocations already loaded stay.
    std::fs::write(pki.crl_path(), "not a CRL").unwrap();
    let err = listener.reload_crl().unwrap_err();
    assert!(err.to_string().contains("crl.pem"), "{err}");
    assert_refused_by_server(&listener, &connector(&tls, &listener), "Revoked").await;
    connect_and_talk(&listener, &client_tls(&pki, "station-01")).await;
}

#[tokio::test]
async fn a_broken_crl_at_startup_is_an_error_naming_the_file() {
    let (_d, pki) = pki(1);
    std::fs::write(
        pki.crl_path(),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let err = Listener::bind(LOOPBACK, &server_tls(&pki, 1000), &settings()).unwrap_err();
    assert!(err.to_string().contains("crl.pem"), "{err}");
    std::fs::remove_file(pki.crl_path()).unwrap();
    let err = Listener::bind(LOOPBACK, &server_tls(&pki, 1000), &settings()).unwrap_err();
    assert!(matches!(err, NetError::Io { what: "CRL", .. }), "{err}");
}

#[tokio::test]
async fn a_ca_signed_certificate_without_station_identity_is_refused() {
    let (_d, pki) = pki(1);
    let listener = listen(&pki, 1000);
    // Signed by the agency CA with client-auth usage, but no identity URI.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.ca_key_path()).unwrap()).unwrap();
    let ca_params = rcgen::CertificateParams::from_ca_cert_pem(
        &std::fs::read_to_string(pki.ca_cert_path()).unwrap(),
    )
    .unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.not_before = now() - time::Duration::hours(1);
    params.not_after = now() + time::Duration::days(1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.subject_alt_names = vec![rcgen::SanType::URI("https://x.example".try_into().unwrap())];
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("c.key"), key.serialize_pem()).unwrap();
    let tls = ClientTls {
        ca: pki.ca_cert_path(),
        cert: dir.path().join("c.pem"),
        key: dir.path().join("c.key"),
        server_name: "localhost".to_owned(),
    };
    assert!(tls.station().is_err());
    let c = Connector::with_config(
        tls.quinn_config(&settings()).unwrap(),
        "localhost",
        &settings(),
        listener.local_addr().unwrap(),
        once(),
        1,
    )
    .unwrap();
    // The TLS handshake completes (the chain is fine), then the listener
    // closes the connection for want of an identity and never yields it.
    match c.connect().await {
        Err(NetError::Refused {
            by: RefusedBy::Peer,
            ..
        }) => {}
        Ok(conn) => {
            let e = NetError::from_connection(conn.remote_address(), conn.closed().await);
            assert!(
                matches!(
                    e,
                    NetError::Refused {
                        by: RefusedBy::Peer,
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        Err(e) => panic!("unexpected {e:?}"),
    }
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "no connection is handed out");
    assert!(listener.rejections()[0]
        .reason
        .contains("no urn:fedcrime:station"));
}

#[tokio::test]
async fn client_refuses_a_wrong_server_name_without_retrying() {
    let (_d, pki) = pki(1);
    let listener = listen(&pki, 1000);
    let tls = ClientTls {
        server_name: "aggregator.other.example".to_owned(),
        ..client_tls(&pki, "station-01")
    };
    let policy = ReconnectPolicy {
        max_attempts: 5,
        ..ReconnectPolicy::default()
    };
    let c = Connector::new(&tls, &settings(), listener.local_addr().unwrap(), policy, 1).unwrap();
    match c.connect().await {
        Err(NetError::Refused {
            by: RefusedBy::Local,
            reason,
            ..
        }) => assert!(reason.contains("not valid for name"), "{reason}"),
        other => panic!("expected a local refusal, got {other:?}"),
    }
    // The IP address SAN works.
    let tls = ClientTls {
        server_name: "127.0.0.1".to_owned(),
        ..client_tls(&pki, "station-01")
    };
    connect_and_talk(&listener, &tls).await;
}

#[tokio::test]
async fn client_refuses_an_expired_server_certificate() {
    let (_d, mut pki) = pki(1);
    let past = Validity::between(
        now() - time::Duration::days(10),
        now() - time::Duration::days(1),
    );
    pki.reissue_server(&["localhost".to_owned()], past).unwrap();
    let listener = listen(&pki, 1000);
    let c = connector(&client_tls(&pki, "station-01"), &listener);
    match c.connect().await {
        Err(NetError::Refused {
            by: RefusedBy::Local,
            reason,
            ..
        }) => assert!(reason.contains("certificate expired"), "{reason}"),
        other => panic!("expected a local refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn client_refuses_a_server_of_another_ca() {
    let (_d, pki) = pki(1);
    let (_d2, other) = other_agency("impostor");
    let listener = listen(&other, 1000);
    let c = connector(&client_tls(&pki, "station-01"), &listener);
    match c.connect().await {
        Err(NetError::Refused {
            by: RefusedBy::Local,
            reason,
            ..
        }) => assert!(reason.contains("UnknownIssuer"), "{reason}"),
        other => panic!("expected a local refusal, got {other:?}"),
    }
}

fn quick_settings() -> TransportSettings {
    TransportSettings {
        handshake_timeout_ms: 300,
        ..settings()
    }
}

fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind(LOOPBACK).unwrap();
    s.local_addr().unwrap()
}

#[tokio::test]
async fn gives_up_after_the_attempt_limit() {
    let (_d, pki) = pki(1);
    let policy = ReconnectPolicy {
        initial_delay_ms: 10,
        max_delay_ms: 20,
        max_attempts: 3,
        ..ReconnectPolicy::default()
    };
    let addr = free_udp_port();
    let c = Connector::new(
        &client_tls(&pki, "station-01"),
        &quick_settings(),
        addr,
        policy,
        9,
    )
    .unwrap();
    match c.connect().await {
        Err(NetError::GaveUp { attempts, last, .. }) => {
            assert_eq!(attempts, 3);
            assert!(last.is_transient(), "{last:?}");
        }
        other => panic!("expected to give up, got {other:?}"),
    }
}

#[tokio::test]
async fn a_station_reconnects_once_the_server_is_up() {
    let (_d, pki) = pki(1);
    let addr = free_udp_port();
    let policy = ReconnectPolicy {
        initial_delay_ms: 20,
        max_delay_ms: 100,
        give_up_after_ms: 10_000,
        ..ReconnectPolicy::default()
    };
    let c = Connector::new(
        &client_tls(&pki, "station-01"),
        &quick_settings(),
        addr,
        policy,
        3,
    )
    .unwrap();
    let server_tls = server_tls(&pki, 1000);
    let (conn, listener) = tokio::join!(c.connect(), async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Listener::bind(addr, &server_tls, &quick_settings()).unwrap()
    });
    conn.unwrap();
    let accepted = listener.accept().await.unwrap();
    assert_eq!(accepted.station.as_str(), "station-01");
}

#[test]
fn backoff_schedule_is_deterministic_with_full_jitter() {
    let policy = ReconnectPolicy {
        initial_delay_ms: 100,
        max_delay_ms: 1_000,
        multiplier: 2.0,
        max_attempts: 8,
        give_up_after_ms: 0,
    };
    let schedule = |seed| {
        let mut b = Backoff::new(policy.clone(), ChaCha8Rng::seed_from_u64(seed));
        std::iter::from_fn(|| b.next_delay(Duration::ZERO)).collect::<Vec<_>>()
    };
    let a = schedule(42);
    assert_eq!(a, schedule(42), "same seed, same schedule");
    assert_ne!(a, schedule(43));
    // max_attempts = 8: seven waits, then give up.
    assert_eq!(a.len(), 7);
    let b = Backoff::new(policy.clone(), ChaCha8Rng::seed_from_u64(0));
    let ceilings: Vec<u64> = (1..=7).map(|n| b.ceiling(n).as_millis() as u64).collect();
    assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000]);
    for (d, c) in a.iter().zip(&ceilings) {
        assert!(d.as_millis() as u64 <= *c, "{d:?} above ceiling {c} ms");
    }
    // Full jitter spreads delays over [0, ceiling]: over many draws at the
    // cap, the mean is near half the cap and both ends are visited.
    let mut b = Backoff::new(
        ReconnectPolicy {
            max_attempts: 0,
            ..policy.clone()
        },
        ChaCha8Rng::seed_from_u64(5),
    );
    let draws: Vec<f64> = (0..2000)
        .map(|_| b.next_delay(Duration::ZERO).unwrap().as_secs_f64())
        .skip(10)
        .collect();
    let mean = draws.iter().sum::<f64>() / draws.len() as f64;
    assert!((mean - 0.5).abs() < 0.03, "mean {mean}");
    assert!(draws.iter().any(|&d| d < 0.05) && draws.iter().any(|&d| d > 0.95));

    // Give up on elapsed time.
    let mut b = Backoff::new(
        ReconnectPolicy {
            max_attempts: 0,
            give_up_after_ms: 5_000,
            ..policy.clone()
        },
        ChaCha8Rng::seed_from_u64(1),
    );
    assert!(b.next_delay(Duration::from_secs(1)).is_some());
    assert!(b.next_delay(Duration::from_secs(5)).is_none());
    b.reset();
    assert_eq!(b.failures(), 0);
}

#[test]
fn reconnect_policy_is_validated() {
    let bad = ReconnectPolicy {
        multiplier: 0.5,
        ..ReconnectPolicy::default()
    };
    assert!(matches!(
        bad.validate(),
        Err(NetError::Settings {
            field: "multiplier",
            ..
        })
    ));
    let bad = ReconnectPolicy {
        initial_delay_ms: 10,
        max_delay_ms: 5,
        ..ReconnectPolicy::default()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn tls_errors_name_the_file() {
    let (_d, pki) = pki(1);
    let missing = ClientTls {
        key: pki.dir().join("nope.key"),
        ..client_tls(&pki, "station-01")
    };
    let err = missing.rustls_config().unwrap_err();
    assert!(err.to_string().contains("nope.key"), "{err}");
    let not_pem = ServerTls {
        cert: pki.crl_path(),
        ..ServerTls::from_pki_dir(pki.dir())
    };
    let err = not_pem.rustls_config().unwrap_err();
    assert!(
        err.to_string().contains("crl.pem") && err.to_string().contains("no CERTIFICATE"),
        "{err}"
    );
    // A key that does not match the certificate.
    let mismatched = ServerTls {
        key: pki.station_key_path("station-01"),
        ..ServerTls::from_pki_dir(pki.dir())
    };
    assert!(matches!(
        mismatched.rustls_config().unwrap_err(),
        NetError::Tls { .. }
    ));
}

#[test]
fn pki_layout_matches_the_certs_crate() {
    use fedcrime_certs::layout;
    assert_eq!(pki_layout::CA_CERT, layout::CA_CERT);
    assert_eq!(pki_layout::SERVER_CERT, layout::SERVER_CERT);
    assert_eq!(pki_layout::SERVER_KEY, layout::SERVER_KEY);
    assert_eq!(pki_layout::CRL, layout::CRL);
    assert_eq!(pki_layout::STATIONS_DIR, layout::STATIONS_DIR);
    let (_d, pki) = pki(1);
    let c = client_tls(&pki, "station-01");
    assert_eq!(c.cert, pki.station_cert_path("station-01"));
    assert_eq!(c.key, pki.station_key_path("station-01"));
}

#[test]
fn tls_configs_round_trip_through_toml() {
    let s = ServerTls::from_pki_dir(Path::new("/etc/fedcrime/pki"));
    let text = toml::to_string(&s).unwrap();
    assert_eq!(toml::from_str::<ServerTls>(&text).unwrap(), s);
    let c: ClientTls = toml::from_str(
        "ca = 'ca.pem'\ncert = 'stations/station-01.pem'\nkey = 'stations/station-01.key'\nserver_name = 'fl.lapd.example'",
    )
    .unwrap();
    assert_eq!(c.server_name, "fl.lapd.example");
}

/// The benchmark code path, small and in debug: it must move the bytes intact.
#[cfg(feature = "bench")]
#[test]
fn bench_moves_the_bytes_intact() {
    let (_d, pki) = pki(1);
    let r = bench_quic_vs_tcp(
        &server_tls(&pki, 1000),
        &client_tls(&pki, "station-01"),
        &settings(),
        300_000,
        2,
    )
    .unwrap();
    assert_eq!(r.bytes, 300_000);
    assert!(r.quic_mb_s > 0.0 && r.tcp_mb_s > 0.0 && r.ratio > 0.0);
}

/// The AEAD reference seals and opens real packets of the three TLS 1.3
/// ciphers, and its bound grows with the bytes and shrinks with the cores.
#[cfg(feature = "bench")]
#[test]
fn aead_reference_measures_the_three_suites() {
    let a = crate::bench_aead(100_000).unwrap();
    let names: Vec<&str> = a.figures.iter().map(|f| f.aead).collect();
    assert_eq!(names, ["AES_128_GCM", "AES_256_GCM", "CHACHA20_POLY1305"]);
    assert!(a.bytes >= 100_000 && a.bytes.is_multiple_of(a.packet));
    assert!(a
        .figures
        .iter()
        .all(|f| f.seal_mb_s > 0.0 && f.open_mb_s > 0.0));
    let one = a.aes_128_gcm_bound_s(10_000_000, 1).unwrap();
    let two = a.aes_128_gcm_bound_s(10_000_000, 2).unwrap();
    let more = a.aes_128_gcm_bound_s(20_000_000, 1).unwrap();
    assert!((one / two - 2.0).abs() < 1e-9 && (more / one - 2.0).abs() < 1e-9);
    assert!(a.fastest().is_some());
}

/// The issue-4 benchmark: 40 MB over QUIC + mTLS vs plain TCP on loopback.
/// Run in release:
/// `cargo test --release -p fedcrime-net --features bench --lib tests::bench_40mb -- --ignored --nocapture`
#[cfg(feature = "bench")]
#[test]
#[ignore]
fn bench_40mb() {
    let (_d, pki) = pki(1);
    let mut settings = TransportSettings::default();
    // Overrides for tuning experiments, e.g. FEDCRIME_BENCH_TRANSPORT='congestion = "bbr"'.
    if let Ok(toml_text) = std::env::var("FEDCRIME_BENCH_TRANSPORT") {
        settings = toml::from_str(&toml_text).unwrap();
    }
    let r = bench_quic_vs_tcp(
        &server_tls(&pki, 1000),
        &client_tls(&pki, "station-01"),
        &settings,
        40_000_000,
        15,
    )
    .unwrap();
    println!("{r}");
    println!("{}", serde_json::to_string(&r).unwrap());
}

/// A UDP relay standing in for the server's port: it forwards one client's
/// datagrams to whichever backend is current, and the backend's answers
/// back. Switching the backend is a server "crash and restart" without a
/// CONNECTION_CLOSE, as after kill -9.
struct Relay {
    addr: SocketAddr,
    backend: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(backend: SocketAddr) -> Relay {
        let front = std::sync::Arc::new(tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap());
        let back = std::sync::Arc::new(tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap());
        let addr = front.local_addr().unwrap();
        let current = std::sync::Arc::new(std::sync::Mutex::new(backend));
        let target = current.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut a = vec![0u8; 65_536];
            let mut b = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut a) => {
                        client = Some(from);
                        let to = *target.lock().unwrap();
                        let _ = back.send_to(&a[..n], to).await;
                    }
                    Ok((n, _)) = back.recv_from(&mut b) => {
                        if let Some(c) = client {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Relay {
            addr,
            backend: current,
            task,
        }
    }

    fn switch_to(&self, backend: SocketAddr) {
        *self.backend.lock().unwrap() = backend;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Issue 11, defect 3: a server restarted with the same [`EndpointSecret`]
/// resets its predecessor's connections, so the station learns of the crash
/// within a keep-alive interval instead of an idle timeout.
#[tokio::test]
async fn defect_3_a_restarted_server_resets_old_connections_at_once() {
    let (_d, pki) = pki(1);
    let tls = server_tls(&pki, 1000);
    let slow = TransportSettings {
        keep_alive_ms: 200,
        idle_timeout_ms: 30_000,
        ..settings()
    };
    for same_secret in [true, false] {
        let secret = EndpointSecret::random();
        let first = Listener::bind_with_secret(LOOPBACK, &tls, &slow, &secret).unwrap();
        let relay = Relay::start(first.local_addr().unwrap()).await;
        let c = Connector::new(
            &client_tls(&pki, "station-01"),
            &slow,
            relay.addr,
            once(),
            1,
        )
        .unwrap();
        let conn = c.connect().await.unwrap();
        let _accepted = first.accept().await.unwrap();
        let next_secret = if same_secret {
            secret.clone()
        } else {
            EndpointSecret::random()
        };
        let second = Listener::bind_with_secret(LOOPBACK, &tls, &slow, &next_secret).unwrap();
        relay.switch_to(second.local_addr().unwrap());
        let closed = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        match (same_secret, closed) {
            (true, Ok(quinn::ConnectionError::Reset)) => {}
            (false, Err(_)) => {} // still waiting for its 30 s idle timeout
            (_, got) => panic!("same secret {same_secret}: got {got:?}"),
        }
        second.close();
        first.close();
    }
}

/// Issue 11, defect 11: a station revoked while connected fails the
/// re-check the server runs when the CRL changes; the others pass.
#[tokio::test]
async fn defect_11_a_connected_station_revoked_later_fails_the_recheck() {
    let (_d, mut pki) = pki(2);
    let listener = listen(&pki, 20);
    let mut held = Vec::new();
    for name in ["station-01", "station-02"] {
        let c = connector(&client_tls(&pki, name), &listener);
        let conn = c.connect().await.unwrap();
        let accepted = listener.accept().await.unwrap();
        held.push((c, conn, accepted));
    }
    assert!(!listener.verifier().refresh(), "nothing changed yet");
    for (_, _, a) in &held {
        listener.verifier().recheck(&a.connection).unwrap();
    }
    pki.revoke("station-01", RevocationReason::KeyCompromise, now())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(listener.verifier().refresh(), "the changed CRL is loaded");
    let err = listener
        .verifier()
        .recheck(&held[0].2.connection)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Revoked") || err.contains("revoked"), "{err}");
    listener.verifier().recheck(&held[1].2.connection).unwrap();
}

#[test]
fn close_codes_round_trip() {
    for code in [
        CloseCode::Shutdown,
        CloseCode::NoIdentity,
        CloseCode::NotKeepingUp,
        CloseCode::Replaced,
        CloseCode::Revoked,
    ] {
        assert_eq!(
            [0u32, 1, 2, 3, 4]
                .iter()
                .filter(|&&n| quinn::VarInt::from_u32(n) == code.code())
                .count(),
            1
        );
    }
}
