//! `fedcrime-sim`: one-machine federations, data tools and centralized baselines.

fn main() {
    eprintln!("fedcrime-sim: no commands yet");
    std::process::exit(2);
}
