//! `fedcrime-certs`: provisions the agency PKI (see issue "Secure transport").

fn main() {
    eprintln!(
        "fedcrime-certs: certificate provisioning is not built yet (see the project's open issues)"
    );
    std::process::exit(2);
}
