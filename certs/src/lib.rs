//! # fedcrime-certs
//!
//! The agency's public-key infrastructure for fedcrime: one self-signed agency
//! CA, a server certificate for the aggregation server, one client certificate
//! per precinct station, and a certificate revocation list (CRL) signed by the
//! CA. The aggregation server (`fedcrime_net`) accepts a station only
//! if its certificate chains to this CA, is within its validity period, and is
//! not listed in the CRL; the server re-reads the CRL file when it changes, so
//! a revocation takes effect without a restart.
//!
//! ## Identity
//! A station's identity (e.g. `station-07`) is bound in its certificate twice:
//! as the subject common name (for humans and logs) and as a URI subject
//! alternative name `urn:fedcrime:station:station-07`. **The server trusts the
//! URI SAN** (SANs are the X.509 place for identities; the CN is legacy). A
//! certificate whose CN disagrees with its URI is refused by the server.
//!
//! ## Layout of a PKI directory
//! | file | what | mode |
//! |---|---|---|
//! | `ca.pem`, `ca.key` | agency CA certificate and key | 0644, 0600 |
//! | `server.pem`, `server.key` | server certificate and key | 0644, 0600 |
//! | `stations/<name>.pem`, `stations/<name>.key` | station certificate and key | 0644, 0600 |
//! | `crl.pem` | the revocation list | 0644 |
//! | `manifest.json` | what was issued: serials, identities, validity, revocations | 0644 |
//!
//! Keys are ECDSA P-256; serial numbers count up from 1 per CA. Every file is
//! written atomically (temporary file, fsync, rename) so a reader, such as a
//! server watching `crl.pem`, never sees half a file. The [`Pki`] type is the
//! library API (tests generate throw-away PKIs with it); the `fedcrime-certs`
//! binary is a thin command-line shell over it.

mod error;
mod files;
pub mod manifest;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

pub use error::{CertsError, Result};
pub use files::{DIR_MODE, KEY_MODE, PUBLIC_MODE};
pub use manifest::{
    CertRecord, CrlRecord, Manifest, Revocation, RevocationReason, ServerRecord, StationRecord,
};

/// File names inside a PKI directory.
pub mod layout {
    /// The agency CA certificate (PEM).
    pub const CA_CERT: &str = "ca.pem";
    /// The agency CA private key (PEM, PKCS#8).
    pub const CA_KEY: &str = "ca.key";
    /// The server certificate (PEM).
    pub const SERVER_CERT: &str = "server.pem";
    /// The server private key (PEM, PKCS#8).
    pub const SERVER_KEY: &str = "server.key";
    /// The certificate revocation list (PEM).
    pub const CRL: &str = "crl.pem";
    /// The JSON manifest.
    pub const MANIFEST: &str = "manifest.json";
    /// Folder of station certificates and keys.
    pub const STATIONS_DIR: &str = "stations";
    /// Folder where certificates of revoked stations go when re-issued.
    pub const RETIRED_DIR: &str = "stations/retired";

    /// A station's certificate file, relative to the PKI directory.
    pub fn station_cert(name: &str) -> String {
        format!("{STATIONS_DIR}/{name}.pem")
    }

    /// A station's private key file, relative to the PKI directory.
    pub fn station_key(name: &str) -> String {
        format!("{STATIONS_DIR}/{name}.key")
    }

    /// A station's Ed25519 update-signing key (PKCS#8 PEM), relative to the
    /// PKI directory; its public key is bound in the station's certificate.
    pub fn station_signing_key(name: &str) -> String {
        format!("{STATIONS_DIR}/{name}.sign.key")
    }

    /// The server's Ed25519 audit-log key (PKCS#8 PEM): it signs the log's
    /// tree heads.
    pub const AUDIT_KEY: &str = "audit.key";
    /// The audit-log public key (hex) stations check tree heads with.
    pub const AUDIT_PUB: &str = "audit.pub";
}

pub use fedcrime_identity::{StationId, STATION_URI_PREFIX};

/// Server names used when none are given.
pub const DEFAULT_SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// How far back `not_before` is set from "now" for certificates issued with
/// [`Validity::days_from`], to tolerate small clock differences between hosts.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::minutes(5);

/// How long a CRL announces itself valid (`nextUpdate`). Informative only: the
/// server keeps using the newest CRL it has, however old.
pub const CRL_VALIDITY: Duration = Duration::days(365);

/// The conventional name of the `index`-th station: `station-01`, `station-02`, ...
/// (two digits at least).
pub fn station_name(index: usize) -> String {
    format!("station-{index:02}")
}

/// A validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// `days` days starting at `now` (backdated by [`CLOCK_SKEW_ALLOWANCE`]),
    /// truncated to whole seconds as X.509 stores them.
    pub fn days_from(now: OffsetDateTime, days: u32) -> Self {
        let now = truncate(now);
        Validity {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// An explicit period (e.g. one already over, for tests of expiry).
    pub fn between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        Validity {
            not_before: truncate(not_before),
            not_after: truncate(not_after),
        }
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.not_after <= self.not_before {
            return Err(CertsError::Validity {
                reason: format!(
                    "{what}: not_after {} is not after not_before {}",
                    manifest::format_time(self.not_after),
                    manifest::format_time(self.not_before)
                ),
            });
        }
        Ok(())
    }
}

fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// How [`Pki::generate`] builds a PKI.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// The agency name (organisation of every certificate, CA common name prefix).
    pub agency: String,
    /// Server SANs: DNS names and IP addresses.
    pub server_names: Vec<String>,
    /// Validity of the CA.
    pub ca_validity: Validity,
    /// Validity of the server certificate.
    pub server_validity: Validity,
    /// Validity of the station certificates.
    pub station_validity: Validity,
    /// Replace an existing PKI in the directory.
    pub force: bool,
    /// The issue time (CRL `thisUpdate`, manifest `created`).
    pub now: OffsetDateTime,
}

impl PkiOptions {
    /// Defaults: agency "fedcrime agency", server names localhost and 127.0.0.1,
    /// a 10-year CA and `valid_days`-day leaves starting at `now`.
    pub fn new(now: OffsetDateTime, valid_days: u32) -> Self {
        PkiOptions {
            agency: "fedcrime agency".to_owned(),
            server_names: DEFAULT_SERVER_NAMES.iter().map(|s| s.to_string()).collect(),
            ca_validity: Validity::days_from(now, 3650.max(valid_days)),
            server_validity: Validity::days_from(now, valid_days),
            station_validity: Validity::days_from(now, valid_days),
            force: false,
            now: truncate(now),
        }
    }
}

/// Status of a certificate at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertStatus {
    /// Within its validity period and not revoked.
    Valid,
    /// Its validity has not started yet.
    NotYetValid,
    /// Its validity is over.
    Expired,
    /// Listed in the CRL.
    Revoked,
    /// A newer certificate replaced it (server certificates only).
    Superseded,
}

impl CertStatus {
    /// Lowercase label for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::NotYetValid => "not-yet-valid",
            CertStatus::Expired => "expired",
            CertStatus::Revoked => "revoked",
            CertStatus::Superseded => "superseded",
        }
    }

    fn of(cert: &CertRecord, now: OffsetDateTime) -> CertStatus {
        if now < cert.not_before {
            CertStatus::NotYetValid
        } else if now > cert.not_after {
            CertStatus::Expired
        } else {
            CertStatus::Valid
        }
    }
}

/// An open PKI directory and its manifest.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    manifest: Manifest,
}

/// The CA, loaded for signing.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Pki {
    /// Creates a PKI in `dir` (created if missing): the CA, the server
    /// certificate, `stations` station certificates named `station-01`... and
    /// an empty CRL. Refuses to overwrite an existing PKI unless `opts.force`.
    pub fn generate(dir: &Path, stations: usize, opts: &PkiOptions) -> Result<Pki> {
        opts.ca_validity.check("CA")?;
        opts.server_validity.check("server certificate")?;
        opts.station_validity.check("station certificates")?;
        files::create_dir(dir)?;
        let _lock = files::DirLock::acquire(dir)?;
        let existing = existing_pki_files(dir)?;
        if let Some(first) = existing.first() {
            if !opts.force {
                return Err(CertsError::AlreadyExists {
                    path: first.clone(),
                });
            }
            for path in &existing {
                files::remove_if_exists(path)?;
            }
        }
        files::create_dir(&dir.join(layout::STATIONS_DIR))?;

        let now = truncate(opts.now);
        let key = new_key("the CA key")?;
        // The agency's name and a short fingerprint of the CA key: two
        // authorities never share a subject, so a certificate of another one
        // is refused as from an unknown issuer, not as a bad signature.
        let ca_name = format!(
            "{} Root CA {}",
            opts.agency,
            &fingerprint(&key.public_key_der())[..8]
        );
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&opts.agency, &ca_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = opts.ca_validity.not_before;
        params.not_after = opts.ca_validity.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&manifest::serial_bytes(1)));
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertsError::rcgen("sign the CA certificate", e))?;
        let ca_record = CertRecord {
            serial: manifest::serial_hex(1),
            common_name: ca_name,
            not_before: opts.ca_validity.not_before,
            not_after: opts.ca_validity.not_after,
            cert: layout::CA_CERT.to_owned(),
            key: Some(layout::CA_KEY.to_owned()),
            sha256: fingerprint(cert.der()),
        };
        files::write_atomic(
            &dir.join(layout::CA_KEY),
            key.serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        files::write_atomic(
            &dir.join(layout::CA_CERT),
            cert.pem().as_bytes(),
            PUBLIC_MODE,
        )?;
        let ca = Ca { cert, key };

        let mut pki = Pki {
            dir: dir.to_owned(),
            manifest: Manifest {
                format: manifest::MANIFEST_FORMAT,
                agency: opts.agency.clone(),
                created: truncate(now),
                next_serial: 2,
                ca: ca_record,
                server: Vec::new(),
                stations: Vec::new(),
                crl: CrlRecord {
                    file: layout::CRL.to_owned(),
                    number: 0,
                    this_update: truncate(now),
                    next_update: truncate(now) + CRL_VALIDITY,
                    revoked_serials: Vec::new(),
                },
            },
        };
        pki.issue_server(&ca, &opts.server_names, opts.server_validity)?;
        pki.issue_audit_key()?;
        for i in 1..=stations {
            pki.issue_station(&ca, &station_name(i), opts.station_validity)?;
        }
        pki.write_crl(&ca, now)?;
        pki.save()?;
        Ok(pki)
    }

    /// Problems with a live station's update-signing key: the certificate
    /// must bind the key the manifest records, and the private key file
    /// must match it.
    fn check_signing_key(&self, s: &StationRecord) -> Vec<String> {
        let mut problems = Vec::new();
        let path = self.dir.join(&s.cert.cert);
        let bound = files::read(&path)
            .and_then(|b| pem_der(&b, "certificate", &path))
            .map_err(|e| e.to_string())
            .and_then(|der| {
                fedcrime_identity::update_key_from_certificate(&der).map_err(|e| e.to_string())
            });
        let bound = match bound {
            Ok(b) => b.map(|k| fedcrime_audit::PublicKey(k).to_text()),
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                return problems;
            }
        };
        if bound != s.update_key {
            problems.push(format!(
                "{}: binds update key {} but the manifest says {}",
                path.display(),
                bound.as_deref().unwrap_or("none"),
                s.update_key.as_deref().unwrap_or("none")
            ));
        }
        if let (Some(rel), Some(expected)) = (&s.signing_key, &bound) {
            let key_path = self.dir.join(rel);
            let origin = key_path.display().to_string();
            match files::read_string(&key_path)
                .map(|t| fedcrime_audit::SigningKey::from_pkcs8_pem(&t, &origin))
            {
                Ok(Ok(k)) if k.public_key().to_text() == *expected => {}
                Ok(Ok(_)) => problems.push(format!(
                    "{origin}: does not match the update key bound in {}",
                    path.display()
                )),
                Ok(Err(e)) => problems.push(e.to_string()),
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }

    /// Makes the server's audit-log key (`audit.key`, `audit.pub`).
    fn issue_audit_key(&self) -> Result<()> {
        let what = "the audit-log key";
        let key =
            fedcrime_audit::SigningKey::generate().map_err(|source| CertsError::SigningKey {
                what: what.into(),
                source: Box::new(source),
            })?;
        files::write_atomic(
            &self.dir.join(layout::AUDIT_KEY),
            key.to_pkcs8_pem().as_bytes(),
            KEY_MODE,
        )?;
        let mut public = key.public_key().to_text();
        public.push('\n');
        files::write_atomic(
            &self.dir.join(layout::AUDIT_PUB),
            public.as_bytes(),
            PUBLIC_MODE,
        )?;
        Ok(())
    }

    /// The server's audit-log key file.
    pub fn audit_key_path(&self) -> PathBuf {
        self.dir.join(layout::AUDIT_KEY)
    }

    /// The audit-log public key file stations check tree heads with.
    pub fn audit_pub_path(&self) -> PathBuf {
        self.dir.join(layout::AUDIT_PUB)
    }

    /// A station's update-signing key file.
    pub fn station_signing_key_path(&self, name: &str) -> PathBuf {
        self.dir.join(layout::station_signing_key(name))
    }

    /// Opens an existing PKI directory (reads and checks its manifest).
    pub fn open(dir: &Path) -> Result<Pki> {
        let path = dir.join(layout::MANIFEST);
        if !path.is_file() {
            return Err(CertsError::NotAPki {
                dir: dir.to_owned(),
                manifest: path,
            });
        }
        let text = files::read_string(&path)?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| CertsError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if manifest.format != manifest::MANIFEST_FORMAT {
            return Err(CertsError::Manifest {
                path,
                reason: format!(
                    "format {} is not supported (this build reads format {})",
                    manifest.format,
                    manifest::MANIFEST_FORMAT
                ),
            });
        }
        if manifest.server.is_empty() {
            return Err(CertsError::Manifest {
                path,
                reason: "no server certificate recorded".to_owned(),
            });
        }
        Ok(Pki {
            dir: dir.to_owned(),
            manifest,
        })
    }

    /// Re-reads the manifest (under the lock, another run may have changed it).
    fn refresh(&mut self) -> Result<()> {
        self.manifest = Pki::open(&self.dir)?.manifest;
        Ok(())
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as last saved.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Path of the CA certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(layout::CA_CERT)
    }

    /// Path of the CA private key.
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join(layout::CA_KEY)
    }

    /// Path of the server certificate.
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join(layout::SERVER_CERT)
    }

    /// Path of the server private key.
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join(layout::SERVER_KEY)
    }

    /// Path of the CRL.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(layout::CRL)
    }

    /// Path of the manifest.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(layout::MANIFEST)
    }

    /// Path of a station's certificate.
    pub fn station_cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(layout::station_cert(name))
    }

    /// Path of a station's private key.
    pub fn station_key_path(&self, name: &str) -> PathBuf {
        self.dir.join(layout::station_key(name))
    }

    /// The latest certificate issued to `name`, if any.
    pub fn station(&self, name: &str) -> Option<&StationRecord> {
        self.manifest.stations.iter().rev().find(|s| s.name == name)
    }

    /// The current server certificate.
    pub fn server(&self) -> Option<&ServerRecord> {
        self.manifest.server.last()
    }

    /// The next free conventional name: one past the highest `station-NN` issued.
    pub fn next_station_name(&self) -> String {
        let highest = self
            .manifest
            .stations
            .iter()
            .filter_map(|s| s.name.strip_prefix("station-")?.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        station_name(highest + 1)
    }

    /// Issues a certificate to a new station (`name`, or the next free
    /// `station-NN`). A name that already has a certificate can be issued
    /// again only once that certificate is revoked or expired at `now`; the
    /// old certificate moves to `stations/retired/` and its key is deleted.
    pub fn add_station(
        &mut self,
        name: Option<&str>,
        validity: Validity,
        now: OffsetDateTime,
    ) -> Result<StationRecord> {
        validity.check("station certificate")?;
        let _lock = files::DirLock::acquire(&self.dir)?;
        self.refresh()?;
        let name = match name {
            Some(n) => n.to_owned(),
            None => self.next_station_name(),
        };
        StationId::new(name.as_str())?;
        let reissue = if let Some(prev) = self.station(&name) {
            let expired = now > prev.cert.not_after;
            if prev.revoked.is_none() && !expired {
                return Err(CertsError::StationExists {
                    name,
                    serial: prev.cert.serial.clone(),
                });
            }
            Some(prev.cert.serial.clone())
        } else {
            None
        };
        if let Some(serial) = reissue {
            self.retire_station_files(&name, &serial)?;
            // Record the move at once: should issuing fail below, the
            // manifest still matches the files.
            self.save()?;
        }
        let ca = self.load_ca()?;
        let record = self.issue_station(&ca, &name, validity)?;
        self.save()?;
        Ok(record)
    }

    /// Revokes the live certificate of station `name`, re-signs the CRL with
    /// a new number and saves the manifest. The CRL is written first, so a
    /// crash in between leaves the revocation in force.
    pub fn revoke(
        &mut self,
        name: &str,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<StationRecord> {
        let _lock = files::DirLock::acquire(&self.dir)?;
        self.refresh()?;
        let idx = self
            .manifest
            .stations
            .iter()
            .rposition(|s| s.name == name)
            .ok_or_else(|| CertsError::UnknownStation {
                name: name.to_owned(),
            })?;
        if self.manifest.stations[idx].revoked.is_some() {
            return Err(CertsError::AlreadyRevoked {
                name: name.to_owned(),
                serial: self.manifest.stations[idx].cert.serial.clone(),
            });
        }
        let ca = self.load_ca()?;
        self.manifest.stations[idx].revoked = Some(Revocation {
            at: truncate(now),
            reason,
        });
        if let Err(e) = self.write_crl(&ca, now) {
            self.manifest.stations[idx].revoked = None;
            return Err(e);
        }
        self.save()?;
        Ok(self.manifest.stations[idx].clone())
    }

    /// Issues a new server certificate (e.g. before the old one expires, or
    /// for new names), replacing `server.pem` and `server.key`.
    pub fn reissue_server(&mut self, names: &[String], validity: Validity) -> Result<ServerRecord> {
        validity.check("server certificate")?;
        let _lock = files::DirLock::acquire(&self.dir)?;
        self.refresh()?;
        let ca = self.load_ca()?;
        let record = self.issue_server(&ca, names, validity)?;
        self.save()?;
        Ok(record)
    }

    /// The status of every certificate at `now`: (kind, name, record, status).
    pub fn statuses(&self, now: OffsetDateTime) -> Vec<StatusLine<'_>> {
        let mut out = Vec::with_capacity(2 + self.manifest.stations.len());
        out.push(StatusLine {
            kind: "ca",
            name: &self.manifest.ca.common_name,
            cert: &self.manifest.ca,
            status: CertStatus::of(&self.manifest.ca, now),
            revoked: None,
        });
        let last = self.manifest.server.len().saturating_sub(1);
        for (i, s) in self.manifest.server.iter().enumerate() {
            let status = if i < last {
                CertStatus::Superseded
            } else {
                CertStatus::of(&s.cert, now)
            };
            out.push(StatusLine {
                kind: "server",
                name: &s.cert.common_name,
                cert: &s.cert,
                status,
                revoked: None,
            });
        }
        for s in &self.manifest.stations {
            let status = if s.revoked.is_some() {
                CertStatus::Revoked
            } else {
                CertStatus::of(&s.cert, now)
            };
            out.push(StatusLine {
                kind: "station",
                name: &s.name,
                cert: &s.cert,
                status,
                revoked: s.revoked.as_ref(),
            });
        }
        out
    }

    /// Cross-checks the files against the manifest: every live certificate
    /// parses, carries the recorded serial, name and validity, is signed by
    /// the CA, and matches its private key; the CRL is signed by the CA and
    /// lists exactly the revoked serials. Returns the problems found (empty
    /// when all is consistent); fails only if the CA itself cannot be read.
    pub fn verify(&self) -> Result<Vec<String>> {
        use x509_parser::prelude::*;
        let mut problems = Vec::new();
        let ca_path = self.ca_cert_path();
        let ca_der = pem_der(&files::read(&ca_path)?, "certificate", &ca_path)?;
        let (_, ca_x509) = X509Certificate::from_der(&ca_der).map_err(|e| CertsError::Parse {
            what: "certificate",
            path: ca_path.clone(),
            reason: e.to_string(),
        })?;
        let ca_spki = ca_x509.public_key();
        let mut check = |record: &CertRecord, expect_uri: Option<&str>, expect_names: &[String]| {
            let path = self.dir.join(&record.cert);
            let der = match files::read(&path).and_then(|b| pem_der(&b, "certificate", &path)) {
                Ok(d) => d,
                Err(e) => return problems.push(e.to_string()),
            };
            let (_, x) = match X509Certificate::from_der(&der) {
                Ok(x) => x,
                Err(e) => return problems.push(format!("{}: {e}", path.display())),
            };
            let p = path.display();
            let serial = format!("{:02x}", x.serial);
            if serial != record.serial {
                problems.push(format!(
                    "{p}: serial {serial} but the manifest says {}",
                    record.serial
                ));
            }
            let cn = x
                .subject()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok())
                .unwrap_or_default();
            if cn != record.common_name {
                problems.push(format!(
                    "{p}: common name {cn:?} but the manifest says {:?}",
                    record.common_name
                ));
            }
            let nb = x.validity().not_before.timestamp();
            let na = x.validity().not_after.timestamp();
            if nb != record.not_before.unix_timestamp() || na != record.not_after.unix_timestamp() {
                problems.push(format!("{p}: validity differs from the manifest"));
            }
            if fingerprint(&der) != record.sha256 {
                problems.push(format!(
                    "{p}: SHA-256 fingerprint differs from the manifest"
                ));
            }
            if x.verify_signature(Some(ca_spki)).is_err() {
                problems.push(format!(
                    "{p}: not signed by the CA in {}",
                    ca_path.display()
                ));
            }
            let sans = x
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|s| s.value.general_names.clone())
                .unwrap_or_default();
            // A station certificate must give the identity the manifest
            // records, by the same rule the server applies to a peer.
            if let Some(uri) = expect_uri {
                match fedcrime_identity::station_from_certificate(&der) {
                    Ok(id) if id.uri() == uri => {}
                    Ok(id) => problems.push(format!(
                        "{p}: identifies {} but the manifest says {uri}",
                        id.uri()
                    )),
                    Err(e) => problems.push(format!("{p}: no usable station identity: {e}")),
                }
            }
            for name in expect_names {
                let found = sans.iter().any(|g| match g {
                    GeneralName::DNSName(d) => d == name,
                    GeneralName::IPAddress(b) => match name.parse::<IpAddr>() {
                        Ok(IpAddr::V4(v4)) => *b == v4.octets(),
                        Ok(IpAddr::V6(v6)) => *b == v6.octets(),
                        Err(_) => false,
                    },
                    _ => false,
                });
                if !found {
                    problems.push(format!("{p}: missing the server name {name}"));
                }
            }
            if let Some(key) = &record.key {
                let key_path = self.dir.join(key);
                match files::read_string(&key_path).map(|k| KeyPair::from_pem(&k)) {
                    Ok(Ok(k)) => {
                        if k.public_key_der() != x.public_key().raw {
                            problems.push(format!(
                                "{}: does not match the public key of {p}",
                                key_path.display()
                            ));
                        }
                    }
                    Ok(Err(e)) => problems.push(format!("{}: {e}", key_path.display())),
                    Err(e) => problems.push(e.to_string()),
                }
            }
        };
        check(&self.manifest.ca, None, &[]);
        if let Some(server) = self.manifest.server.last() {
            check(&server.cert, None, &server.names);
        }
        let mut key_problems = Vec::new();
        for s in self.live_station_records() {
            check(&s.cert, Some(&s.uri), &[]);
            key_problems.extend(self.check_signing_key(s));
        }
        problems.extend(key_problems);
        // The CRL.
        let crl_path = self.crl_path();
        match files::read(&crl_path).and_then(|b| pem_der(&b, "CRL", &crl_path)) {
            Err(e) => problems.push(e.to_string()),
            Ok(der) => match CertificateRevocationList::from_der(&der) {
                Err(e) => problems.push(format!("{}: {e}", crl_path.display())),
                Ok((_, crl)) => {
                    if crl.verify_signature(ca_spki).is_err() {
                        problems.push(format!("{}: not signed by the CA", crl_path.display()));
                    }
                    let mut listed: Vec<String> = crl
                        .iter_revoked_certificates()
                        .map(|r| format!("{:02x}", r.user_certificate))
                        .collect();
                    listed.sort();
                    let mut expected = self.manifest.crl.revoked_serials.clone();
                    expected.sort();
                    if listed != expected {
                        problems.push(format!(
                            "{}: lists serials {listed:?} but the manifest says {expected:?}",
                            crl_path.display()
                        ));
                    }
                }
            },
        }
        Ok(problems)
    }

    /// Station records whose files are the current ones (the latest per name).
    fn live_station_records(&self) -> impl Iterator<Item = &StationRecord> {
        self.manifest
            .stations
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                !self.manifest.stations[i + 1..]
                    .iter()
                    .any(|later| later.name == s.name)
            })
            .map(|(_, s)| s)
    }

    fn load_ca(&self) -> Result<Ca> {
        let cert_path = self.ca_cert_path();
        let key_path = self.ca_key_path();
        let key_pem = files::read_string(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CertsError::Parse {
            what: "private key",
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let cert_pem = files::read_string(&cert_path)?;
        let params =
            CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| CertsError::Parse {
                what: "certificate",
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        // Re-signing the parsed parameters reproduces the subject and key
        // identifier that issued certificates must name; the result is used
        // only as the issuer, never written.
        let cert = params.self_signed(&key).map_err(|e| {
            CertsError::rcgen(format!("load the CA from {}", key_path.display()), e)
        })?;
        Ok(Ca { cert, key })
    }

    fn take_serial(&mut self) -> u64 {
        let s = self.manifest.next_serial;
        self.manifest.next_serial += 1;
        s
    }

    fn check_within_ca(&self, validity: &Validity, what: &str) -> Result<()> {
        if validity.not_after > self.manifest.ca.not_after {
            return Err(CertsError::Validity {
                reason: format!(
                    "{what} would end {} but the CA ends {}",
                    manifest::format_time(validity.not_after),
                    manifest::format_time(self.manifest.ca.not_after)
                ),
            });
        }
        Ok(())
    }

    fn issue_server(
        &mut self,
        ca: &Ca,
        names: &[String],
        validity: Validity,
    ) -> Result<ServerRecord> {
        self.check_within_ca(&validity, "the server certificate")?;
        let names: Vec<String> = if names.is_empty() {
            DEFAULT_SERVER_NAMES.iter().map(|s| s.to_string()).collect()
        } else {
            names.to_vec()
        };
        let mut sans = Vec::with_capacity(names.len());
        for name in &names {
            sans.push(server_san(name)?);
        }
        let key = new_key("the server key")?;
        let serial = self.take_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&self.manifest.agency, &names[0]);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&manifest::serial_bytes(serial)));
        let cert = params
            .signed_by(&key, &ca.cert, &ca.key)
            .map_err(|e| CertsError::rcgen("sign the server certificate", e))?;
        files::write_atomic(
            &self.server_key_path(),
            key.serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        files::write_atomic(&self.server_cert_path(), cert.pem().as_bytes(), PUBLIC_MODE)?;
        let record = ServerRecord {
            cert: CertRecord {
                serial: manifest::serial_hex(serial),
                common_name: names[0].clone(),
                not_before: validity.not_before,
                not_after: validity.not_after,
                cert: layout::SERVER_CERT.to_owned(),
                key: Some(layout::SERVER_KEY.to_owned()),
                sha256: fingerprint(cert.der()),
            },
            names,
        };
        // Older server records keep their history but no longer own the files.
        for old in &mut self.manifest.server {
            old.cert.key = None;
        }
        self.manifest.server.push(record.clone());
        Ok(record)
    }

    fn issue_station(&mut self, ca: &Ca, name: &str, validity: Validity) -> Result<StationRecord> {
        let id = StationId::new(name)?;
        self.check_within_ca(&validity, &format!("the certificate of {name}"))?;
        let key = new_key(&format!("the key of {name}"))?;
        let signing_what = format!("the update-signing key of {name}");
        let signing =
            fedcrime_audit::SigningKey::generate().map_err(|source| CertsError::SigningKey {
                what: signing_what.clone(),
                source: Box::new(source),
            })?;
        let update_key = signing.public_key();
        let serial = self.take_serial();
        let uri = id.uri();
        let mut params = CertificateParams::default();
        let mut dn = dn(&self.manifest.agency, name);
        dn.push(DnType::OrganizationalUnitName, "stations");
        params.distinguished_name = dn;
        let key_uri = fedcrime_identity::update_key_uri(&update_key.0);
        params.subject_alt_names =
            vec![
                SanType::URI(uri.as_str().try_into().map_err(|e| {
                    CertsError::rcgen(format!("encode the identity URI of {name}"), e)
                })?),
                SanType::URI(key_uri.as_str().try_into().map_err(|e| {
                    CertsError::rcgen(format!("encode the update-key URI of {name}"), e)
                })?),
            ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&manifest::serial_bytes(serial)));
        let cert = params
            .signed_by(&key, &ca.cert, &ca.key)
            .map_err(|e| CertsError::rcgen(format!("sign the certificate of {name}"), e))?;
        files::create_dir(&self.dir.join(layout::STATIONS_DIR))?;
        files::write_atomic(
            &self.station_key_path(name),
            key.serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        files::write_atomic(
            &self.dir.join(layout::station_signing_key(name)),
            signing.to_pkcs8_pem().as_bytes(),
            KEY_MODE,
        )?;
        files::write_atomic(
            &self.station_cert_path(name),
            cert.pem().as_bytes(),
            PUBLIC_MODE,
        )?;
        let record = StationRecord {
            name: name.to_owned(),
            uri,
            cert: CertRecord {
                serial: manifest::serial_hex(serial),
                common_name: name.to_owned(),
                not_before: validity.not_before,
                not_after: validity.not_after,
                cert: layout::station_cert(name),
                key: Some(layout::station_key(name)),
                sha256: fingerprint(cert.der()),
            },
            revoked: None,
            update_key: Some(update_key.to_text()),
            signing_key: Some(layout::station_signing_key(name)),
        };
        self.manifest.stations.push(record.clone());
        Ok(record)
    }

    /// Moves a station's old certificate to `stations/retired/` and deletes its key.
    fn retire_station_files(&mut self, name: &str, serial: &str) -> Result<()> {
        let retired_dir = self.dir.join(layout::RETIRED_DIR);
        files::create_dir(&retired_dir)?;
        let retired_rel = format!("{}/{name}-{serial}.pem", layout::RETIRED_DIR);
        let from = self.station_cert_path(name);
        let to = self.dir.join(&retired_rel);
        if from.is_file() {
            std::fs::rename(&from, &to)
                .map_err(|e| CertsError::io("moving to stations/retired", &from, e))?;
        }
        files::remove_if_exists(&self.station_key_path(name))?;
        files::remove_if_exists(&self.dir.join(layout::station_signing_key(name)))?;
        if let Some(rec) = self
            .manifest
            .stations
            .iter_mut()
            .rev()
            .find(|s| s.name == name && s.cert.serial == serial)
        {
            rec.cert.cert = retired_rel;
            rec.cert.key = None;
            rec.signing_key = None;
        }
        Ok(())
    }

    fn write_crl(&mut self, ca: &Ca, now: OffsetDateTime) -> Result<()> {
        let now = truncate(now);
        let mut revoked = Vec::new();
        let mut serials = Vec::new();
        for s in &self.manifest.stations {
            let Some(rev) = &s.revoked else { continue };
            let serial =
                manifest::parse_serial(&s.cert.serial).ok_or_else(|| CertsError::Manifest {
                    path: self.manifest_path(),
                    reason: format!("station {}: bad serial {:?}", s.name, s.cert.serial),
                })?;
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&manifest::serial_bytes(serial)),
                revocation_time: rev.at,
                reason_code: Some(rev.reason.to_rcgen()),
                invalidity_date: None,
            });
            serials.push(s.cert.serial.clone());
        }
        let number = self.manifest.crl.number + 1;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from_slice(&manifest::serial_bytes(number)),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: ca.cert.params().key_identifier_method.clone(),
        };
        let crl = params
            .signed_by(&ca.cert, &ca.key)
            .map_err(|e| CertsError::rcgen("sign the CRL", e))?;
        let pem = crl
            .pem()
            .map_err(|e| CertsError::rcgen("encode the CRL", e))?;
        files::write_atomic(&self.crl_path(), pem.as_bytes(), PUBLIC_MODE)?;
        self.manifest.crl = CrlRecord {
            file: layout::CRL.to_owned(),
            number,
            this_update: now,
            next_update: now + CRL_VALIDITY,
            revoked_serials: serials,
        };
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let mut json =
            serde_json::to_string_pretty(&self.manifest).map_err(|e| CertsError::Manifest {
                path: self.manifest_path(),
                reason: e.to_string(),
            })?;
        json.push('\n');
        files::write_atomic(&self.manifest_path(), json.as_bytes(), PUBLIC_MODE)
    }
}

/// One row of [`Pki::statuses`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusLine<'a> {
    /// "ca", "server" or "station".
    pub kind: &'static str,
    /// Station name or common name.
    pub name: &'a str,
    /// The certificate record.
    pub cert: &'a CertRecord,
    /// Its status at the time asked.
    pub status: CertStatus,
    /// The revocation, if any.
    pub revoked: Option<&'a Revocation>,
}

fn existing_pki_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = [
        layout::MANIFEST,
        layout::CA_CERT,
        layout::CA_KEY,
        layout::SERVER_CERT,
        layout::SERVER_KEY,
        layout::CRL,
        layout::AUDIT_KEY,
        layout::AUDIT_PUB,
    ]
    .iter()
    .map(|f| dir.join(f))
    .filter(|p| p.exists())
    .collect();
    for sub in [layout::STATIONS_DIR, layout::RETIRED_DIR] {
        let stations = dir.join(sub);
        if !stations.is_dir() {
            continue;
        }
        let entries =
            std::fs::read_dir(&stations).map_err(|e| CertsError::io("listing", &stations, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| CertsError::io("listing", &stations, e))?;
            let path = entry.path();
            let is_pki_file = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("pem") | Some("key")
            );
            if is_pki_file && path.is_file() {
                found.push(path);
            }
        }
    }
    Ok(found)
}

fn new_key(what: &str) -> Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CertsError::rcgen(format!("generate {what}"), e))
}

fn dn(agency: &str, common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, agency);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn server_san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = |reason: &str| CertsError::InvalidServerName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.len() > 253 {
        return Err(bad("a DNS name has 1 to 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each DNS label has 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("DNS labels hold only letters, digits and '-'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a DNS label neither starts nor ends with '-'"));
        }
    }
    let ia5 = name
        .try_into()
        .map_err(|e: rcgen::Error| bad(&e.to_string()))?;
    Ok(SanType::DnsName(ia5))
}

fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER payload of the first PEM block of `bytes`.
fn pem_der(bytes: &[u8], what: &'static str, path: &Path) -> Result<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(bytes).map_err(|e| CertsError::Parse {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(pem.contents)
}

#[cfg(test)]
mod tests;
