//! `gitlab-sim`: serve a seeded simulated GitLab.

use clap::Parser;
use gitlab_sim::{Mode, SeedSpec, SimConfig, UserRateLimit};

/// A stateful GitLab REST v4 simulator. Prints GITLAB_URL=, GITLAB_TOKEN= and GITLAB_SCOPE= as
/// its first three lines on stdout, then serves until interrupted.
#[derive(Debug, Parser)]
#[command(name = "gitlab-sim", version)]
struct Args {
    /// Seed of the generated organisation: the same seed and sizes give the same state.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Users (bots and service accounts included).
    #[arg(long, default_value_t = 60)]
    users: usize,
    /// Groups in the top-level group's tree (the top-level group included).
    #[arg(long, default_value_t = 12)]
    groups: usize,
    /// Projects in the tree.
    #[arg(long, default_value_t = 30)]
    projects: usize,
    /// Maximum subgroup nesting below the top-level group.
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// Direct group and project memberships.
    #[arg(long, default_value_t = 400)]
    memberships: usize,
    /// Group-to-group and project-to-group shares.
    #[arg(long, default_value_t = 6)]
    shares: usize,
    /// Address to listen on; port 0 picks a free port (the printed URL has the real one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// GitLab.com (no admin API, endpoint limits, group owner token) or self-managed (admin token).
    #[arg(long, value_enum, default_value_t = Mode::SelfManaged)]
    mode: Mode,
    /// Per-user request limit (Rack::Attack throttle with RateLimit-* headers); off when absent.
    #[arg(long)]
    rate_limit: Option<u64>,
    /// The throttle's period in seconds.
    #[arg(long, default_value_t = 60)]
    rate_period: u64,
    /// Turn off the mode's per-endpoint application limits.
    #[arg(long)]
    no_endpoint_limits: bool,
    /// Maximum offset of offset pagination on keyset-capable lists (0 = unlimited).
    #[arg(long, default_value_t = 50_000)]
    offset_cap: u64,
    /// Fraction of requests answered with 500/502/503.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to every response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of requests whose connection drops mid-response.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Fraction of requests answered 409 Resource lock.
    #[arg(long, default_value_t = 0.0)]
    lock_rate: f64,
}

// mimalloc: the simulator renders millions of small JSON values; the same allocator as the
// worker, so the benchmark's stand-in for GitLab takes less of the CPU it shares with the sync.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let a = Args::parse();
    for (name, v) in [
        ("--error-rate", a.error_rate),
        ("--drop-rate", a.drop_rate),
        ("--lock-rate", a.lock_rate),
    ] {
        if !(0.0..=1.0).contains(&v) {
            eprintln!("error: {name} must be between 0 and 1, got {v}");
            return std::process::ExitCode::from(2);
        }
    }
    if a.rate_period == 0 {
        eprintln!("error: --rate-period must be at least 1 second");
        return std::process::ExitCode::from(2);
    }
    let seeded = gitlab_sim::seed::generate(&SeedSpec {
        seed: a.seed,
        users: a.users,
        groups: a.groups,
        projects: a.projects,
        depth: a.depth,
        memberships: a.memberships,
        shares: a.shares,
        mode: a.mode,
    });
    let mut config = SimConfig::for_mode(a.mode);
    config.rate_limit = a.rate_limit.map(|limit| UserRateLimit {
        limit,
        period_secs: a.rate_period,
    });
    config.endpoint_limits = !a.no_endpoint_limits;
    config.offset_cap = a.offset_cap;
    config.faults.error_rate = a.error_rate;
    config.faults.latency_ms = a.latency_ms;
    config.faults.drop_rate = a.drop_rate;
    config.faults.lock_rate = a.lock_rate;
    let sim = gitlab_sim::Sim::new(seeded.world, config, a.seed);
    let running = match gitlab_sim::serve(sim, &a.listen).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", a.listen);
            return std::process::ExitCode::from(1);
        }
    };
    println!("GITLAB_URL={}", running.url);
    println!("GITLAB_TOKEN={}", seeded.token);
    println!("GITLAB_SCOPE={}", seeded.scope);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    running.stop().await;
    std::process::ExitCode::SUCCESS
}
