//! `fedcrime-sim`: one-machine federations, data tools and centralized baselines.

#![allow(dead_code)]

mod plot;

fn main() {
    eprintln!("fedcrime-sim: no commands yet");
    std::process::exit(2);
}
