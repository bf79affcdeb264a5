//! `fedcrime-certs`: provisions the agency PKI for fedcrime (CA, server
//! certificate, per-station client certificates, revocation list).
//! See the library docs of `fedcrime_certs` for the layout and identity rules.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fedcrime_certs::{manifest::format_time, Pki, PkiOptions, RevocationReason, Validity};
use time::OffsetDateTime;

/// Certificate provisioning for a fedcrime federation.
///
/// The agency runs this once to create its CA, the aggregation server's
/// certificate and one client certificate per precinct station, then ships
/// each station its `stations/<name>.pem`, `stations/<name>.key` and `ca.pem`.
/// The server is configured with `ca.pem`, `server.pem`, `server.key` and
/// `crl.pem`; it re-reads `crl.pem` when it changes, so `revoke` takes effect
/// without a restart.
///
/// A station's identity is the URI subject alternative name
/// `urn:fedcrime:station:<name>` of its certificate (also its common name).
#[derive(Debug, Parser)]
#[command(name = "fedcrime-certs", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new PKI: CA, server certificate, N station certificates
    /// (each with an Ed25519 update-signing key its certificate binds), the
    /// server's audit-log key (audit.key, audit.pub), empty CRL.
    ///
    /// Example: fedcrime-certs init --out pki --stations 21 --server-name fl.lapd.example
    Init {
        /// Directory to create the PKI in (created if missing, mode 0700).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Number of station certificates to issue (station-01 ... station-NN).
        #[arg(long, value_name = "N")]
        stations: usize,
        /// A DNS name or IP address of the server, repeatable
        /// [default: localhost and 127.0.0.1].
        #[arg(long = "server-name", value_name = "NAME")]
        server_names: Vec<String>,
        /// Validity of the server and station certificates, in days.
        #[arg(long, value_name = "D", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        valid_days: u32,
        /// Validity of the CA, in days (at least --valid-days).
        #[arg(long, value_name = "D", default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
        ca_valid_days: u32,
        /// Agency name, the organisation in every certificate.
        #[arg(long, value_name = "NAME", default_value = "fedcrime agency")]
        agency: String,
        /// Replace an existing PKI in DIR (its CA, keys and certificates are deleted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate to one more station, with its Ed25519
    /// update-signing key (NAME.sign.key; the certificate binds its public
    /// key as urn:fedcrime:update-key:ed25519:<hex>).
    ///
    /// A station whose certificate was revoked (or expired) can be issued a
    /// new one under the same name; the old certificate is moved to
    /// stations/retired/.
    AddStation {
        /// The PKI directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Station name [default: the next free station-NN].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Validity in days.
        #[arg(long, value_name = "D", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        valid_days: u32,
        /// First day of validity, YYYY-MM-DD (UTC midnight) [default: now,
        /// less a few minutes of clock-skew allowance]: issue ahead for a
        /// station that goes live later, or make a certificate that has
        /// already expired to test the server's refusal.
        #[arg(long, value_name = "DATE", value_parser = parse_date)]
        valid_from: Option<time::Date>,
    },
    /// Revoke a station's certificate: re-signs crl.pem, which a running server picks up.
    Revoke {
        /// The PKI directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The station to revoke, e.g. station-07.
        #[arg(long, value_name = "NAME")]
        station: String,
        /// Why: unspecified, key-compromise, affiliation-changed, superseded,
        /// cessation-of-operation, privilege-withdrawn.
        #[arg(long, value_name = "REASON", default_value = "unspecified")]
        reason: String,
    },
    /// Issue a new server certificate (rotation or new names); restart the server to use it.
    RenewServer {
        /// The PKI directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A DNS name or IP address of the server, repeatable [default: the current names].
        #[arg(long = "server-name", value_name = "NAME")]
        server_names: Vec<String>,
        /// Validity in days.
        #[arg(long, value_name = "D", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        valid_days: u32,
    },
    /// Show what was issued, expiry and revocations; checks the files against the manifest.
    ///
    /// Exits with status 1 if a file disagrees with the manifest.
    Show {
        /// The PKI directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Print JSON (the manifest, each certificate's status, problems found).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    match run(cli, OffsetDateTime::now_utc(), &mut stdout.lock()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fedcrime-certs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command at time `now`, writing its report to `out`.
fn run(cli: Cli, now: OffsetDateTime, out: &mut impl Write) -> Result<ExitCode> {
    match cli.command {
        Command::Init {
            out: dir,
            stations,
            server_names,
            valid_days,
            ca_valid_days,
            agency,
            force,
        } => {
            let mut opts = PkiOptions::new(now, valid_days);
            opts.agency = agency;
            opts.force = force;
            opts.ca_validity = Validity::days_from(now, ca_valid_days);
            if !server_names.is_empty() {
                opts.server_names = server_names;
            }
            let pki = Pki::generate(&dir, stations, &opts)
                .with_context(|| format!("creating the PKI in {}", dir.display()))?;
            let m = pki.manifest();
            writeln!(out, "created PKI in {}", dir.display())?;
            writeln!(
                out,
                "  CA        {} (sha256 {}), valid until {}",
                m.ca.common_name,
                m.ca.sha256,
                format_time(m.ca.not_after)
            )?;
            if let Some(server) = pki.server() {
                writeln!(
                    out,
                    "  server    {} ({}), valid until {}",
                    server.cert.common_name,
                    server.names.join(", "),
                    format_time(server.cert.not_after)
                )?;
            }
            writeln!(
                out,
                "  stations  {} certificate(s) in {}",
                m.stations.len(),
                pki.dir()
                    .join(fedcrime_certs::layout::STATIONS_DIR)
                    .display()
            )?;
            writeln!(out, "  CRL       {}", pki.crl_path().display())?;
            writeln!(
                out,
                "  audit     {} (the server signs its audit log's tree heads; stations get {})",
                pki.audit_key_path().display(),
                pki.audit_pub_path().display()
            )?;
            writeln!(out, "  manifest  {}", pki.manifest_path().display())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::AddStation {
            dir,
            name,
            valid_days,
            valid_from,
        } => {
            let mut pki = Pki::open(&dir)?;
            let validity = match valid_from {
                Some(day) => {
                    let start = day.midnight().assume_utc();
                    Validity::between(start, start + time::Duration::days(i64::from(valid_days)))
                }
                None => Validity::days_from(now, valid_days),
            };
            let rec = pki
                .add_station(name.as_deref(), validity, now)
                .with_context(|| format!("adding a station to {}", dir.display()))?;
            writeln!(
                out,
                "issued {} (serial {}, {}), valid until {}",
                rec.name,
                rec.cert.serial,
                rec.uri,
                format_time(rec.cert.not_after)
            )?;
            writeln!(
                out,
                "  certificate {}",
                pki.station_cert_path(&rec.name).display()
            )?;
            writeln!(
                out,
                "  key         {}",
                pki.station_key_path(&rec.name).display()
            )?;
            writeln!(
                out,
                "  signing key {} (Ed25519 {}, bound in the certificate: signs every update)",
                pki.station_signing_key_path(&rec.name).display(),
                rec.update_key.as_deref().unwrap_or("?")
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke {
            dir,
            station,
            reason,
        } => {
            let reason: RevocationReason = reason.parse()?;
            let mut pki = Pki::open(&dir)?;
            let rec = pki
                .revoke(&station, reason, now)
                .with_context(|| format!("revoking {station} in {}", dir.display()))?;
            writeln!(
                out,
                "revoked {} (serial {}, reason {reason}); CRL number {} written to {}",
                rec.name,
                rec.cert.serial,
                pki.manifest().crl.number,
                pki.crl_path().display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RenewServer {
            dir,
            server_names,
            valid_days,
        } => {
            let mut pki = Pki::open(&dir)?;
            let names = if server_names.is_empty() {
                pki.server().map(|s| s.names.clone()).unwrap_or_default()
            } else {
                server_names
            };
            let rec = pki
                .reissue_server(&names, Validity::days_from(now, valid_days))
                .with_context(|| format!("renewing the server certificate in {}", dir.display()))?;
            writeln!(
                out,
                "issued server certificate serial {} for {}, valid until {}",
                rec.cert.serial,
                rec.names.join(", "),
                format_time(rec.cert.not_after)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { dir, json } => {
            let pki = Pki::open(&dir)?;
            let problems = pki.verify()?;
            let statuses = pki.statuses(now);
            if json {
                let doc = serde_json::json!({
                    "dir": pki.dir(),
                    "manifest": pki.manifest(),
                    "status": statuses,
                    "problems": problems,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                let m = pki.manifest();
                writeln!(
                    out,
                    "PKI {} (agency {:?}, created {}), CRL number {} ({} revoked)",
                    pki.dir().display(),
                    m.agency,
                    format_time(m.created),
                    m.crl.number,
                    m.crl.revoked_serials.len()
                )?;
                writeln!(
                    out,
                    "{:<8} {:<24} {:<7} {:<14} {:<21} note",
                    "kind", "name", "serial", "status", "not after"
                )?;
                for s in &statuses {
                    let note = match s.revoked {
                        Some(r) => format!("revoked {} ({})", format_time(r.at), r.reason),
                        None => String::new(),
                    };
                    writeln!(
                        out,
                        "{:<8} {:<24} {:<7} {:<14} {:<21} {note}",
                        s.kind,
                        s.name,
                        s.cert.serial,
                        s.status.as_str(),
                        format_time(s.cert.not_after)
                    )?;
                }
                for p in &problems {
                    writeln!(out, "problem: {p}")?;
                }
            }
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Parses a `YYYY-MM-DD` date.
fn parse_date(text: &str) -> std::result::Result<time::Date, String> {
    let format = time::format_description::parse_borrowed::<2>("[year]-[month]-[day]")
        .map_err(|e| format!("date format: {e}"))?;
    time::Date::parse(text, &format).map_err(|e| format!("{text:?} is not a YYYY-MM-DD date: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn run_args(args: &[&str], now: OffsetDateTime) -> (Result<ExitCode>, String) {
        let cli =
            Cli::try_parse_from(std::iter::once("fedcrime-certs").chain(args.iter().copied()))
                .expect("arguments parse");
        let mut out = Vec::new();
        let result = run(cli, now, &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn init_add_revoke_show_from_the_command_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let d = dir.to_str().unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_760_000_000).unwrap();
        let (r, out) = run_args(
            &["init", "--out", d, "--stations", "2", "--valid-days", "10"],
            now,
        );
        r.unwrap();
        assert!(out.contains("2 certificate(s)"), "{out}");

        let (r, _) = run_args(&["init", "--out", d, "--stations", "2"], now);
        let err = format!("{:#}", r.unwrap_err());
        assert!(
            err.contains("manifest.json") && err.contains("--force"),
            "{err}"
        );

        let (r, out) = run_args(&["add-station", "--dir", d, "--name", "station-22"], now);
        r.unwrap();
        assert!(out.contains("urn:fedcrime:station:station-22"), "{out}");

        let (r, out) = run_args(
            &[
                "revoke",
                "--dir",
                d,
                "--station",
                "station-01",
                "--reason",
                "key-compromise",
            ],
            now,
        );
        r.unwrap();
        assert!(out.contains("CRL number 2"), "{out}");

        let (r, _) = run_args(
            &[
                "revoke",
                "--dir",
                d,
                "--station",
                "station-02",
                "--reason",
                "lost",
            ],
            now,
        );
        assert!(format!("{:#}", r.unwrap_err()).contains("key-compromise"));

        let (r, out) = run_args(&["show", "--dir", d], now + time::Duration::days(1));
        assert_eq!(r.unwrap(), ExitCode::SUCCESS);
        assert!(
            out.contains("station-01") && out.contains("revoked") && out.contains("key-compromise"),
            "{out}"
        );
        assert!(!out.contains("problem:"), "{out}");

        let (r, out) = run_args(
            &["show", "--dir", d, "--json"],
            now + time::Duration::days(11),
        );
        assert_eq!(r.unwrap(), ExitCode::SUCCESS);
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let status = doc["status"].as_array().unwrap();
        let of = |name: &str| {
            status.iter().find(|s| s["name"] == name).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(of("station-01"), "revoked");
        assert_eq!(of("station-02"), "expired");
        assert_eq!(doc["problems"].as_array().unwrap().len(), 0);

        // A tampered file makes `show` fail.
        std::fs::write(dir.join("crl.pem"), "garbage").unwrap();
        let (r, out) = run_args(&["show", "--dir", d], now);
        assert_eq!(r.unwrap(), ExitCode::FAILURE);
        assert!(out.contains("problem:") && out.contains("crl.pem"), "{out}");
    }
}
