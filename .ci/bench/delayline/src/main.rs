//! delayline: holds every IPv4 packet routed through a TUN device for a
//! fixed time, then hands it back to the kernel. It emulates a WAN's
//! propagation delay on kernels without tc's netem qdisc.
//!
//! `.ci/bench/wan.sh` runs it in a router namespace between the agency and
//! the stations. Policy routing sends every forwarded packet into the TUN
//! device. delayline reads the packet and keeps it for the one-way delay of
//! the station it comes from or goes to. It then writes the packet back, and
//! the kernel forwards it to its destination.
//!
//! Delays: with `--delay-ms A-B --stations N --subnet X.Y.Z`, station `i`,
//! at address `X.Y.Z.(i+1)`, gets `A + (B - A) * i / (N - 1)` ms each way,
//! so round-trip times spread evenly from 2A to 2B. Other packets get A.
//! Packets keep their order within each station's direction. At most
//! `--limit` packets wait at once; beyond that, packets are dropped and
//! counted, like a router's full queue.
//!
//! Loss: `--loss P` drops each packet with probability P percent as it
//! arrives (each direction crosses the device once, so P each way). The
//! kernel hands the device single wire-size packets (a TUN device without
//! offloads takes no segmentation-offload batches), so TCP and QUIC lose
//! the same share of packets. A filter on the hosts' own interfaces would
//! see TSO/GSO batches of up to 64 KB and drop whole batches at once.
//!
//!   delayline --dev fcd0 --delay-ms 10-25 --stations 21 --subnet 10.77.1 --loss 1

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

struct Args {
    dev: String,
    low_ms: f64,
    high_ms: f64,
    stations: usize,
    subnet: [u8; 3],
    limit: usize,
    loss_pct: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dev: "fcd0".into(),
        low_ms: 12.5,
        high_ms: 12.5,
        stations: 1,
        subnet: [10, 77, 1],
        limit: 200_000,
        loss_pct: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dev" => args.dev = value()?,
            "--delay-ms" => {
                let v = value()?;
                let (a, b) = v.split_once('-').unwrap_or((&v, &v));
                args.low_ms = a
                    .parse()
                    .map_err(|_| format!("--delay-ms: bad number {a:?}"))?;
                args.high_ms = b
                    .parse()
                    .map_err(|_| format!("--delay-ms: bad number {b:?}"))?;
                if !(0.0..=10_000.0).contains(&args.low_ms) || args.high_ms < args.low_ms {
                    return Err(format!("--delay-ms: {v:?} is not A-B with 0 <= A <= B"));
                }
            }
            "--stations" => {
                let v = value()?;
                args.stations = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1 && n <= 254)
                    .ok_or(format!("--stations: {v:?} is not 1-254"))?;
            }
            "--subnet" => {
                let v = value()?;
                let parts: Vec<u8> = v.split('.').filter_map(|p| p.parse().ok()).collect();
                args.subnet = <[u8; 3]>::try_from(parts)
                    .map_err(|_| format!("--subnet: {v:?} is not three octets like 10.77.1"))?;
            }
            "--loss" => {
                let v = value()?;
                args.loss_pct = v
                    .parse()
                    .ok()
                    .filter(|p: &f64| (0.0..=100.0).contains(p))
                    .ok_or(format!("--loss: {v:?} is not a percentage 0-100"))?;
            }
            "--limit" => {
                let v = value()?;
                args.limit = v
                    .parse()
                    .map_err(|_| format!("--limit: bad number {v:?}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "{}",
                    include_str!("main.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//!").trim_start())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(args)
}

/// Opens (creating it) the TUN device `name`, without packet information
/// headers: each read returns one IP packet.
fn open_tun(name: &str) -> Result<File, String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!("device name {name:?} must be 1-15 bytes"));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e} (needs root and CONFIG_TUN)"))?;
    // struct ifreq: the name, then the flags (a short) in the union.
    let mut ifreq = [0u8; 40];
    ifreq[..name.len()].copy_from_slice(name.as_bytes());
    ifreq[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq`
    // outlives and is large enough for (40 bytes on 64-bit Linux).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) };
    if rc < 0 {
        return Err(format!(
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

/// Which station a packet belongs to (by its source or destination address
/// in the station subnet), or `None` for other packets.
fn station_of(packet: &[u8], subnet: [u8; 3], stations: usize) -> Option<usize> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    [&packet[12..16], &packet[16..20]]
        .into_iter()
        .find_map(|a| {
            (a[..3] == subnet && a[3] >= 1 && usize::from(a[3]) <= stations)
                .then(|| usize::from(a[3]) - 1)
        })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("delayline: {e}");
            return ExitCode::from(2);
        }
    };
    let tun = match open_tun(&args.dev) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("delayline: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut writer = match tun.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("delayline: duplicating the TUN descriptor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let delays: Vec<Duration> = (0..=args.stations)
        .map(|i| {
            let frac = if args.stations > 1 {
                i.min(args.stations - 1) as f64 / (args.stations - 1) as f64
            } else {
                0.0
            };
            Duration::from_secs_f64((args.low_ms + (args.high_ms - args.low_ms) * frac) / 1e3)
        })
        .collect();
    eprintln!(
        "delayline: {} up, {:.1}-{:.1} ms each way over {} stations in {}.{}.{}.0/24, {}% loss",
        args.dev,
        args.low_ms,
        args.high_ms,
        args.stations,
        args.subnet[0],
        args.subnet[1],
        args.subnet[2],
        args.loss_pct
    );
    let waiting = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<(Instant, usize, Vec<u8>)>();
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();

    // Writer: one FIFO per station (and one for the rest), each with a
    // constant delay, so the earliest due packet is at one of the heads.
    let w_waiting = Arc::clone(&waiting);
    let writer_thread = std::thread::spawn(move || {
        let mut queues: Vec<VecDeque<(Instant, Vec<u8>)>> = vec![VecDeque::new(); delays.len()];
        loop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for q in &mut queues {
                while let Some((due, _)) = q.front() {
                    if *due > now {
                        next = Some(next.map_or(*due, |n: Instant| n.min(*due)));
                        break;
                    }
                    let (_, packet) = q.pop_front().expect("a front");
                    // A write error (e.g. the device going down) drops the packet, as a link would.
                    let _ = writer.write(&packet);
                    w_waiting.fetch_sub(1, Ordering::Relaxed);
                    let _ = free_tx.send(packet);
                }
            }
            let got = match next {
                Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match got {
                Ok((at, which, packet)) => {
                    queues[which].push_back((at + delays[which], packet));
                    while let Ok((at, which, packet)) = rx.try_recv() {
                        queues[which].push_back((at + delays[which], packet));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    });

    let mut reader = tun;
    let stations = args.stations;
    let mut last_report = Instant::now();
    let mut forwarded = 0u64;
    let mut lost = 0u64;
    // xorshift64* for the loss draws, seeded from the clock.
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    let drop_below = (args.loss_pct / 100.0 * u64::MAX as f64) as u64;
    // One scratch buffer for reads; each kept packet is copied into a
    // recycled buffer of its own size (no 64 KiB buffer per packet).
    let mut scratch = vec![0u8; 65_536];
    loop {
        let n = match reader.read(&mut scratch) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("delayline: reading {}: {e}", args.dev);
                break;
            }
        };
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        if state.wrapping_mul(0x2545_f491_4f6c_dd1d) < drop_below {
            lost += 1;
            continue;
        }
        if waiting.load(Ordering::Relaxed) >= args.limit as u64 {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut buf = free_rx.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&scratch[..n]);
        let which = station_of(&buf, args.subnet, stations).unwrap_or(stations);
        waiting.fetch_add(1, Ordering::Relaxed);
        forwarded += 1;
        if tx.send((Instant::now(), which, buf)).is_err() {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "delayline: {forwarded} packets delayed, {lost} lost at random, {} waiting, {} dropped (queue full)",
                waiting.load(Ordering::Relaxed),
                dropped.load(Ordering::Relaxed)
            );
            last_report = Instant::now();
        }
    }
    drop(tx);
    let _ = writer_thread.join();
    ExitCode::FAILURE
}
