//! `fedcrime-server`: the agency's federated aggregation server.
//!
//! It will accept station connections over QUIC with mutual TLS, run rounds of
//! federated learning through the shared round engine in `fedcrime-common`,
//! and checkpoint after every round (see issue "Federated rounds").

fn main() {
    eprintln!(
        "fedcrime-server: the aggregation server is not built yet (see the project's open issues)"
    );
    std::process::exit(2);
}
