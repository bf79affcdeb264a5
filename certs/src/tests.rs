//! Tests of the PKI library against real files in temporary directories.

use super::*;
use x509_parser::prelude::{CertificateRevocationList, FromDer, GeneralName, X509Certificate};

fn now() -> OffsetDateTime {
    // A fixed instant keeps the tests reproducible.
    OffsetDateTime::from_unix_timestamp(1_760_000_000).unwrap()
}

fn fresh(stations: usize) -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), stations, &PkiOptions::new(now(), 30)).unwrap();
    (dir, pki)
}

fn crl_serials(pki: &Pki) -> (u64, Vec<String>) {
    let bytes = std::fs::read(pki.crl_path()).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).unwrap();
    let (_, crl) = CertificateRevocationList::from_der(&pem.contents).unwrap();
    let number = crl
        .crl_number()
        .map(|n| n.to_u64_digits().first().copied().unwrap_or(0))
        .unwrap();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| format!("{:02x}", r.user_certificate))
        .collect();
    (number, serials)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
#[cfg(unix)]
fn private_keys_are_owner_only_and_certificates_public() {
    let (_d, pki) = fresh(3);
    assert_eq!(mode(&pki.ca_key_path()), 0o600);
    assert_eq!(mode(&pki.server_key_path()), 0o600);
    for i in 1..=3 {
        assert_eq!(mode(&pki.station_key_path(&station_name(i))), 0o600);
        assert_eq!(mode(&pki.station_signing_key_path(&station_name(i))), 0o600);
        assert_eq!(mode(&pki.station_cert_path(&station_name(i))), 0o644);
    }
    assert_eq!(mode(&pki.audit_key_path()), 0o600);
    assert_eq!(mode(&pki.audit_pub_path()), 0o644);
    assert_eq!(mode(&pki.ca_cert_path()), 0o644);
    assert_eq!(mode(&pki.crl_path()), 0o644);
    assert_eq!(mode(&pki.dir().join(layout::STATIONS_DIR)), 0o700);
}

#[test]
fn manifest_matches_the_issued_files() {
    let (dir, pki) = fresh(3);
    assert_eq!(pki.verify().unwrap(), Vec::<String>::new());
    let reopened = Pki::open(dir.path()).unwrap();
    assert_eq!(reopened.manifest(), pki.manifest());
    let m = pki.manifest();
    let names: Vec<_> = m.stations.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["station-01", "station-02", "station-03"]);
    // Serials: CA 1, server 2, stations 3.., all distinct.
    assert_eq!(m.ca.serial, "01");
    assert_eq!(m.server[0].cert.serial, "02");
    let serials: Vec<_> = m.stations.iter().map(|s| s.cert.serial.as_str()).collect();
    assert_eq!(serials, ["03", "04", "05"]);
    assert_eq!(m.next_serial, 6);
    assert_eq!(m.server[0].names, ["localhost", "127.0.0.1"]);
    assert_eq!(m.crl.number, 1);
    assert!(m.crl.revoked_serials.is_empty());

    // The identity sits in the certificate as CN and URI SAN.
    let pem = std::fs::read(pki.station_cert_path("station-02")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let (_, x) = X509Certificate::from_der(&pem.contents).unwrap();
    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "station-02");
    let sans = x.subject_alternative_name().unwrap().unwrap();
    assert!(sans
        .value
        .general_names
        .iter()
        .any(|g| matches!(g, GeneralName::URI("urn:fedcrime:station:station-02"))));
    assert_eq!(
        x.validity().not_after.timestamp(),
        (now() + Duration::days(30)).unix_timestamp()
    );
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
}

#[test]
fn every_station_certificate_binds_its_update_signing_key() {
    let (_d, pki) = fresh(2);
    for s in &pki.manifest().stations {
        let path = pki.station_cert_path(&s.name);
        let der = crate::pem_der(&std::fs::read(&path).unwrap(), "certificate", &path).unwrap();
        let bound = fedcrime_identity::update_key_from_certificate(&der)
            .unwrap()
            .map(|k| fedcrime_audit::PublicKey(k).to_text());
        assert_eq!(bound, s.update_key, "{}", s.name);
        let text = std::fs::read_to_string(pki.station_signing_key_path(&s.name)).unwrap();
        let key = fedcrime_audit::SigningKey::from_pkcs8_pem(&text, "test").unwrap();
        assert_eq!(Some(key.public_key().to_text()), s.update_key);
    }
    // Another station's signing key in place of station-01's is noticed.
    std::fs::copy(
        pki.station_signing_key_path("station-02"),
        pki.station_signing_key_path("station-01"),
    )
    .unwrap();
    let problems = pki.verify().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("station-01.sign.key") && p.contains("does not match")),
        "{problems:?}"
    );
}

#[test]
fn verify_notices_a_swapped_certificate() {
    let (_d, pki) = fresh(2);
    std::fs::copy(
        pki.station_cert_path("station-01"),
        pki.station_cert_path("station-02"),
    )
    .unwrap();
    let problems = pki.verify().unwrap();
    assert!(
        problems.iter().any(|p| p.contains("serial")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("does not match the public key")),
        "{problems:?}"
    );
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let (dir, pki) = fresh(1);
    let before = pki.manifest().ca.sha256.clone();
    let err = Pki::generate(dir.path(), 2, &PkiOptions::new(now(), 30)).unwrap_err();
    assert!(matches!(err, CertsError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    // Nothing was touched.
    assert_eq!(Pki::open(dir.path()).unwrap().manifest().ca.sha256, before);
    assert!(!dir.path().join(files::DirLock::FILE).exists());

    let mut opts = PkiOptions::new(now(), 30);
    opts.force = true;
    let again = Pki::generate(dir.path(), 2, &opts).unwrap();
    assert_ne!(again.manifest().ca.sha256, before);
    assert_eq!(again.manifest().stations.len(), 2);
    assert_eq!(again.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn revoke_updates_the_crl_and_manifest() {
    let (dir, mut pki) = fresh(3);
    assert_eq!(crl_serials(&pki), (1, vec![]));
    let rec = pki
        .revoke("station-02", RevocationReason::KeyCompromise, now())
        .unwrap();
    assert_eq!(rec.cert.serial, "04");
    assert_eq!(crl_serials(&pki), (2, vec!["04".to_owned()]));
    let reopened = Pki::open(dir.path()).unwrap();
    let rev = reopened
        .station("station-02")
        .unwrap()
        .revoked
        .clone()
        .unwrap();
    assert_eq!(rev.reason, RevocationReason::KeyCompromise);
    assert_eq!(reopened.manifest().crl.revoked_serials, ["04"]);

    pki.revoke("station-03", RevocationReason::Superseded, now())
        .unwrap();
    assert_eq!(
        crl_serials(&pki),
        (3, vec!["04".to_owned(), "05".to_owned()])
    );
    assert_eq!(pki.verify().unwrap(), Vec::<String>::new());

    let err = pki
        .revoke("station-02", RevocationReason::Unspecified, now())
        .unwrap_err();
    assert!(matches!(err, CertsError::AlreadyRevoked { .. }), "{err}");
    let err = pki
        .revoke("station-99", RevocationReason::Unspecified, now())
        .unwrap_err();
    assert!(matches!(err, CertsError::UnknownStation { .. }), "{err}");
}

#[test]
fn add_station_picks_the_next_name_and_reissues_only_after_revocation() {
    let (_d, mut pki) = fresh(2);
    let v = Validity::days_from(now(), 30);
    let rec = pki.add_station(None, v, now()).unwrap();
    assert_eq!(rec.name, "station-03");
    let rec = pki.add_station(Some("hollywood"), v, now()).unwrap();
    assert_eq!(rec.uri, "urn:fedcrime:station:hollywood");
    let err = pki.add_station(Some("station-01"), v, now()).unwrap_err();
    assert!(matches!(err, CertsError::StationExists { .. }), "{err}");
    let err = pki.add_station(Some("Station 1"), v, now()).unwrap_err();
    assert!(matches!(err, CertsError::InvalidStationName(_)), "{err}");

    let old = pki.station("station-01").unwrap().clone();
    pki.revoke("station-01", RevocationReason::Superseded, now())
        .unwrap();
    let new = pki.add_station(Some("station-01"), v, now()).unwrap();
    assert_ne!(new.cert.serial, old.cert.serial);
    let retired = pki
        .manifest()
        .stations
        .iter()
        .find(|s| s.cert.serial == old.cert.serial)
        .unwrap();
    assert!(retired.cert.cert.starts_with(layout::RETIRED_DIR));
    assert!(retired.cert.key.is_none());
    assert!(pki.dir().join(&retired.cert.cert).is_file());
    // The old serial stays revoked.
    assert_eq!(crl_serials(&pki).1, vec![old.cert.serial.clone()]);
    assert_eq!(pki.verify().unwrap(), Vec::<String>::new());
    let statuses = pki.statuses(now());
    let st = |serial: &str| {
        statuses
            .iter()
            .find(|s| s.cert.serial == serial)
            .unwrap()
            .status
    };
    assert_eq!(st(&old.cert.serial), CertStatus::Revoked);
    assert_eq!(st(&new.cert.serial), CertStatus::Valid);
}

#[test]
fn statuses_report_expiry() {
    let (_d, mut pki) = fresh(1);
    let past = Validity::between(now() - Duration::days(10), now() - Duration::days(1));
    pki.add_station(Some("old-timer"), past, now()).unwrap();
    let statuses = pki.statuses(now());
    let s = statuses.iter().find(|s| s.name == "old-timer").unwrap();
    assert_eq!(s.status, CertStatus::Expired);
    let later = pki.statuses(now() + Duration::days(31));
    assert!(later
        .iter()
        .filter(|s| s.kind != "ca")
        .all(|s| s.status == CertStatus::Expired));
    // An expired station may be issued again without revocation.
    pki.add_station(Some("old-timer"), Validity::days_from(now(), 5), now())
        .unwrap();
}

#[test]
fn validity_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PkiOptions::new(now(), 30);
    opts.station_validity = Validity::between(now(), now() - Duration::days(1));
    let err = Pki::generate(dir.path(), 1, &opts).unwrap_err();
    assert!(matches!(err, CertsError::Validity { .. }), "{err}");

    let mut opts = PkiOptions::new(now(), 30);
    opts.ca_validity = Validity::days_from(now(), 10);
    let err = Pki::generate(dir.path(), 1, &opts).unwrap_err();
    assert!(err.to_string().contains("CA ends"), "{err}");
}

#[test]
fn server_names_are_validated_and_renewal_supersedes() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PkiOptions::new(now(), 30);
    opts.server_names = vec!["fl.lapd.example".into(), "bad name".into()];
    let err = Pki::generate(dir.path(), 0, &opts).unwrap_err();
    assert!(matches!(err, CertsError::InvalidServerName { .. }), "{err}");

    opts.server_names = vec!["fl.lapd.example".into(), "10.0.0.5".into()];
    opts.force = true;
    let mut pki = Pki::generate(dir.path(), 0, &opts).unwrap();
    assert_eq!(pki.verify().unwrap(), Vec::<String>::new());
    let names = vec!["fl2.lapd.example".to_owned()];
    pki.reissue_server(&names, Validity::days_from(now(), 20))
        .unwrap();
    assert_eq!(pki.manifest().server.len(), 2);
    assert_eq!(pki.verify().unwrap(), Vec::<String>::new());
    let statuses = pki.statuses(now());
    let servers: Vec<_> = statuses.iter().filter(|s| s.kind == "server").collect();
    assert_eq!(servers[0].status, CertStatus::Superseded);
    assert_eq!(servers[1].status, CertStatus::Valid);
}

#[test]
fn opening_a_non_pki_names_the_missing_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let err = Pki::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("manifest.json"), "{err}");
    std::fs::write(dir.path().join(layout::MANIFEST), "{ not json").unwrap();
    let err = Pki::open(dir.path()).unwrap_err();
    assert!(matches!(err, CertsError::Manifest { .. }), "{err}");
}

#[test]
fn a_held_lock_refuses_concurrent_changes() {
    let (_d, mut pki) = fresh(1);
    let lock = files::DirLock::acquire(pki.dir()).unwrap();
    let err = pki
        .revoke("station-01", RevocationReason::Unspecified, now())
        .unwrap_err();
    assert!(matches!(err, CertsError::Locked { .. }), "{err}");
    drop(lock);
    pki.revoke("station-01", RevocationReason::Unspecified, now())
        .unwrap();
}

#[test]
fn station_names_follow_the_rules() {
    for ok in ["station-01", "a", "hollywood-2"] {
        StationId::new(ok).unwrap();
    }
    for bad in ["", "Station", "1st", "a_b", "end-", "x".repeat(64).as_str()] {
        assert!(StationId::new(bad).is_err(), "{bad:?}");
    }
    assert_eq!(station_name(7), "station-07");
    assert_eq!(station_name(123), "station-123");
}
