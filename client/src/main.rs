//! `fedcrime-client`: a precinct station.
//!
//! It will load only its own partition of the crime records, train locally
//! from each round's global model, and send back only parameters and aggregate
//! metrics (see issue "Federated rounds").

fn main() {
    eprintln!(
        "fedcrime-client: the station client is not built yet (see the project's open issues)"
    );
    std::process::exit(2);
}
