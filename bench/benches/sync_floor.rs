//! The floor under dispatch latency in `sync` on this machine: the least a
//! durable answer to a message can take when nothing but the disk, the
//! loopback network and the thread hand-offs stands in the way.
//!
//! A client sends small messages at a fixed rate (open loop, latency from
//! the intended send time) over several TCP connections, as agents send
//! completions. The server has Lanes' shape without Lanes: a reader thread
//! per connection; a writer thread that takes every message waiting,
//! appends them to a file as one group and hands the group on; a syncer
//! thread that makes the group durable with one fdatasync and only then
//! answers each message (as Lanes sends a dispatch only once the batch
//! holding it is durable). While one group syncs the next one fills.
//!
//! What Lanes' dispatch latency adds on top of this is the scheduler, the
//! record format, sled's flush (and its I/O thread), the protocol and
//! tokio. `--durability none` runs the same without the fdatasync: the
//! network and hand-offs alone.
//!
//! Two kinds of file: `append` grows it, as sled's log grows (each
//! fdatasync then also commits the file system's journal for the new
//! size); `overwrite` writes over a file filled and synced beforehand, so
//! an fdatasync has only data to flush: the disk's own floor.
//!
//! Run: `cargo bench -p lanes-bench --bench sync_floor [-- --rates
//! 2000,20000,40000 --seconds 10 --connections 10 --runs 3]`. Results go
//! to docs/BENCHMARKS.md (issue 6).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use hdrhistogram::Histogram;
use lanes_bench::list;
use mimalloc::MiMalloc;

#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

const USAGE: &str = "\
usage: sync_floor [--rates N,N,...] [--seconds S] [--connections N] [--runs N]
                  [--durabilities sync,none] [--files append,overwrite]
                  [--dir PATH]

  --rates N,..        messages per second, each run             (2000,20000,40000)
  --seconds S         seconds per run                           (10)
  --connections N     client connections (agents)               (10)
  --runs N            runs per rate and durability              (3)
  --durabilities D,.. sync (one fdatasync per group), none      (sync,none)
  --files F,..        append (the file grows) or overwrite (a file
                      written and synced beforehand)            (append,overwrite)
  --dir PATH          where the file goes; not a tmpfs          (target/)";

/// A message and its answer: the message's number and its intended send
/// time (ns from the run's start). The payload of a completion or a
/// dispatch is not the point here.
const MESSAGE_BYTES: usize = 16;
/// Bytes appended to the file per message: about an event in a record.
const RECORD_BYTES_PER_MESSAGE: usize = 64;
const LATENCY_US_MAX: u64 = 60_000_000;
/// Size of the file `overwrite` writes over, round and round.
const OVERWRITE_BYTES: u64 = 64 << 20;

struct Options {
    rates: Vec<u64>,
    seconds: f64,
    connections: usize,
    runs: usize,
    durabilities: Vec<bool>,
    /// `true`: overwrite a file written beforehand; `false`: append.
    overwrite: Vec<bool>,
    dir: std::path::PathBuf,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        rates: vec![2_000, 20_000, 40_000],
        seconds: 10.0,
        connections: 10,
        runs: 3,
        durabilities: vec![true, false],
        overwrite: vec![false, true],
        dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--bench" => {}
            "--rates" => options.rates = list(&value()?, |s| Ok(s.parse()?))?,
            "--seconds" => options.seconds = value()?.parse()?,
            "--connections" => options.connections = value()?.parse()?,
            "--runs" => options.runs = value()?.parse()?,
            "--durabilities" => {
                options.durabilities = list(&value()?, |s| match s {
                    "sync" => Ok(true),
                    "none" => Ok(false),
                    other => bail!("unknown durability {other:?}\n{USAGE}"),
                })?
            }
            "--files" => {
                options.overwrite = list(&value()?, |s| match s {
                    "append" => Ok(false),
                    "overwrite" => Ok(true),
                    other => bail!("unknown kind of file {other:?}\n{USAGE}"),
                })?
            }
            "--dir" => options.dir = value()?.into(),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        options.connections > 0 && options.runs > 0 && options.seconds > 0.0,
        "need connections, runs and seconds\n{USAGE}"
    );
    ensure!(
        options.rates.iter().all(|&rate| rate > 0),
        "rates must be positive"
    );
    Ok(options)
}

/// A message and the connection that sent it.
type Message = (usize, [u8; MESSAGE_BYTES]);
/// Messages of one group, in the order they arrived.
type Group = Vec<Message>;

/// The server: returns its address and the threads to join once every
/// client connection closed.
fn serve(
    folder: &Path,
    connections: usize,
    sync: bool,
    overwrite: bool,
) -> anyhow::Result<(std::net::SocketAddr, Vec<JoinHandle<anyhow::Result<Stats>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    // The writer's descriptor; the syncer's fdatasync goes through a copy
    // (it covers the file's data whichever descriptor asks).
    let path = folder.join("floor.log");
    let file = if overwrite {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..OVERWRITE_BYTES / zeros.len() as u64 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        file
    } else {
        OpenOptions::new().create(true).append(true).open(&path)?
    };
    let synced = file.try_clone()?;
    let (to_writer, from_readers) = channel::<Message>();
    let (to_syncer, from_writer) = sync_channel::<Group>(1);
    let answers: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    let acceptor = {
        let answers = answers.clone();
        std::thread::spawn(move || -> anyhow::Result<Vec<JoinHandle<()>>> {
            let mut readers = Vec::new();
            for index in 0..connections {
                let (stream, _) = listener.accept()?;
                stream.set_nodelay(true)?;
                answers
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the answers' lock was poisoned"))?
                    .push(stream.try_clone()?);
                let to_writer: Sender<_> = to_writer.clone();
                readers.push(std::thread::spawn(move || {
                    read_messages(stream, index, to_writer)
                }));
            }
            Ok(readers)
        })
    };
    threads.push(std::thread::spawn(move || -> anyhow::Result<Stats> {
        let readers = acceptor
            .join()
            .map_err(|_| anyhow::anyhow!("the acceptor panicked"))??;
        let stats = write_groups(file, overwrite, from_readers, to_syncer);
        for reader in readers {
            let _ = reader.join();
        }
        stats
    }));
    threads.push(std::thread::spawn(move || {
        sync_and_answer(synced, from_writer, answers, sync)
    }));
    Ok((address, threads))
}

fn read_messages(mut stream: TcpStream, index: usize, to_writer: Sender<Message>) {
    let mut message = [0u8; MESSAGE_BYTES];
    while stream.read_exact(&mut message).is_ok() {
        if to_writer.send((index, message)).is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Stats {
    groups: u64,
    messages: u64,
}

/// The writer: every message waiting becomes one group, written to the
/// file in one write and handed to the syncer (which holds at most one
/// more, as in Lanes: one group syncs, one waits, one fills).
fn write_groups(
    mut file: File,
    overwrite: bool,
    from_readers: Receiver<Message>,
    to_syncer: std::sync::mpsc::SyncSender<Group>,
) -> anyhow::Result<Stats> {
    let mut stats = Stats::default();
    let mut bytes = Vec::new();
    while let Ok(first) = from_readers.recv() {
        let mut group = vec![first];
        group.extend(from_readers.try_iter());
        bytes.clear();
        for (_, message) in &group {
            bytes.extend_from_slice(message);
            bytes.resize(bytes.len() + RECORD_BYTES_PER_MESSAGE - MESSAGE_BYTES, 0);
        }
        if overwrite {
            // Wraps before the end, so no write extends the file.
            let at = stats.messages * RECORD_BYTES_PER_MESSAGE as u64;
            let at = at % (OVERWRITE_BYTES - bytes.len() as u64);
            file.write_all_at(&bytes, at)?;
        } else {
            file.write_all(&bytes)?;
        }
        stats.groups += 1;
        stats.messages += group.len() as u64;
        if to_syncer.send(group).is_err() {
            break;
        }
    }
    // The syncer ends when this sender drops.
    Ok(stats)
}

/// The syncer: one fdatasync for every group waiting, then the answers.
fn sync_and_answer(
    file: File,
    from_writer: Receiver<Group>,
    answers: Arc<Mutex<Vec<TcpStream>>>,
    sync: bool,
) -> anyhow::Result<Stats> {
    let mut stats = Stats::default();
    while let Ok(first) = from_writer.recv() {
        let mut groups = vec![first];
        groups.extend(from_writer.try_iter());
        if sync {
            file.sync_data()?;
        }
        stats.groups += 1;
        let mut streams = answers
            .lock()
            .map_err(|_| anyhow::anyhow!("the answers' lock was poisoned"))?;
        for (index, message) in groups.iter().flatten() {
            stats.messages += 1;
            if streams[*index].write_all(message).is_err() {
                return Ok(stats);
            }
        }
    }
    Ok(stats)
}

struct Reading {
    latency: Histogram<u64>,
    sent: u64,
    late: u64,
    syncs: u64,
    seconds: f64,
}

/// The client: an open-loop sender over `connections` connections and a
/// reader per connection recording each answer's latency from the
/// message's intended send time.
fn client(
    address: std::net::SocketAddr,
    connections: usize,
    rate: u64,
    seconds: f64,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let mut streams = Vec::new();
    let mut readers = Vec::new();
    let start = Instant::now();
    let total = (rate as f64 * seconds) as u64;
    for index in 0..connections {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        let mut reading = stream.try_clone()?;
        let expected = (total + (connections - 1 - index) as u64) / connections as u64;
        readers.push(std::thread::spawn(
            move || -> anyhow::Result<Histogram<u64>> {
                let mut latency = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
                let mut answer = [0u8; MESSAGE_BYTES];
                for _ in 0..expected {
                    reading.read_exact(&mut answer)?;
                    let intended_ns = u64::from_le_bytes(answer[8..16].try_into()?);
                    let now_ns = start.elapsed().as_nanos() as u64;
                    latency.saturating_record(now_ns.saturating_sub(intended_ns) / 1_000);
                }
                Ok(latency)
            },
        ));
        streams.push(stream);
    }
    // Sent in order; a send more than 1 ms behind its time counts as late
    // (the sender, not the server, fell behind).
    let mut late = 0;
    for i in 0..total {
        let intended = Duration::from_nanos(i * 1_000_000_000 / rate);
        let now = start.elapsed();
        if intended > now {
            std::thread::sleep(intended - now);
        } else if now - intended > Duration::from_millis(1) {
            late += 1;
        }
        let mut message = [0u8; MESSAGE_BYTES];
        message[0..8].copy_from_slice(&i.to_le_bytes());
        message[8..16].copy_from_slice(&(intended.as_nanos() as u64).to_le_bytes());
        streams[(i % connections as u64) as usize].write_all(&message)?;
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    for reader in readers {
        latency.add(
            reader
                .join()
                .map_err(|_| anyhow::anyhow!("a reader panicked"))??,
        )?;
    }
    drop(streams);
    Ok((latency, total, late))
}

fn run(options: &Options, rate: u64, sync: bool, overwrite: bool) -> anyhow::Result<Reading> {
    let folder = tempfile::Builder::new()
        .prefix("sync-floor-")
        .tempdir_in(&options.dir)?;
    let (address, threads) = serve(folder.path(), options.connections, sync, overwrite)?;
    let started = Instant::now();
    let (latency, sent, late) = client(address, options.connections, rate, options.seconds)?;
    let seconds = started.elapsed().as_secs_f64();
    let mut syncs = 0;
    for (i, thread) in threads.into_iter().enumerate() {
        let stats = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a server thread panicked"))??;
        if i == 1 {
            syncs = stats.groups;
        }
    }
    Ok(Reading {
        latency,
        sent,
        late,
        syncs,
        seconds,
    })
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    std::fs::create_dir_all(&options.dir)?;
    println!(
        "sync floor: {} connections, {} s per run, {} runs; {} CPUs",
        options.connections,
        options.seconds,
        options.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("\n| durability | file | messages/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | syncs/s | late sends |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cases = options.durabilities.iter().flat_map(|&sync| {
        // Without a sync the kind of file makes no difference worth a run.
        let files = if sync {
            options.overwrite.clone()
        } else {
            vec![false]
        };
        files.into_iter().map(move |overwrite| (sync, overwrite))
    });
    for (sync, overwrite) in cases {
        for &rate in &options.rates {
            let mut cells: Vec<[f64; 7]> = Vec::new();
            for _ in 0..options.runs {
                let r = run(&options, rate, sync, overwrite)?;
                let q = |q: f64| r.latency.value_at_quantile(q) as f64;
                cells.push([
                    q(0.5),
                    q(0.9),
                    q(0.99),
                    q(0.999),
                    r.latency.max() as f64,
                    r.syncs as f64 / r.seconds,
                    r.late as f64 / r.sent.max(1) as f64 * 100.0,
                ]);
            }
            let median = |k: usize| {
                let mut values: Vec<f64> = cells.iter().map(|c| c[k]).collect();
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
            };
            println!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} % |",
                if sync { "sync" } else { "none" },
                if !sync {
                    "-"
                } else if overwrite {
                    "overwrite"
                } else {
                    "append"
                },
                rate,
                median(0),
                median(1),
                median(2),
                median(3),
                median(4),
                median(5),
                median(6)
            );
        }
    }
    println!(
        "\n(medians of {} runs; latency from each message's intended send time to its answer)",
        options.runs
    );
    Ok(())
}
