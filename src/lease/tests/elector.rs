//! Unit tests of the elector: leading, handing over, resigning, and stepping down at its
//! renew deadline or when another holds the lease.

use super::*;

fn fast_cfg() -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_millis(300),
        renew_deadline: Duration::from_millis(200),
        retry_period: Duration::from_millis(50),
    }
}

struct Replica {
    rx: watch::Receiver<Role>,
    stop: CancellationToken,
    resign: Arc<Notify>,
    task: tokio::task::JoinHandle<Result<(), LeaseError>>,
}

fn start(path: &Path, id: &str) -> Replica {
    start_with(path, id, fast_cfg())
}

fn start_with(path: &Path, id: &str, cfg: LeaseConfig) -> Replica {
    let backend: Arc<dyn LeaseBackend> =
        Arc::new(FileLease::new(path, id, cfg.lease_duration).unwrap());
    let (tx, rx) = watch::channel(Role::Standby);
    let stop = CancellationToken::new();
    let resign = Arc::new(Notify::new());
    let task = tokio::spawn(run_elector_with_resign(
        backend,
        cfg,
        tx,
        stop.clone(),
        Arc::clone(&resign),
    ));
    Replica {
        rx,
        stop,
        resign,
        task,
    }
}

fn epoch_of(r: &Replica) -> Option<u64> {
    match *r.rx.borrow() {
        Role::Leader { epoch } => Some(epoch),
        Role::Standby => None,
    }
}

async fn wait_leader(r: &mut Replica, within: Duration) -> u64 {
    let role = tokio::time::timeout(within, r.rx.wait_for(|r| matches!(r, Role::Leader { .. })))
        .await
        .expect("no leader in time")
        .unwrap();
    match *role {
        Role::Leader { epoch } => epoch,
        Role::Standby => unreachable!(),
    }
}

/// Checks for a while that the two never lead at once (an elector steps down at its
/// renew deadline, before its lease can expire for the other), then returns which one
/// leads and its epoch. Who leads may change in between: a stall of the shared machine
/// longer than renew_deadline makes a leader step down, as it should.
async fn the_one_leader(a: &Replica, b: &Replica) -> (bool, u64) {
    let t0 = Instant::now();
    let mut seen_leader = false;
    loop {
        let (ea, eb) = (epoch_of(a), epoch_of(b));
        assert!(ea.is_none() || eb.is_none(), "two leaders: {ea:?} {eb:?}");
        seen_leader |= ea.is_some() || eb.is_some();
        if seen_leader && t0.elapsed() > Duration::from_millis(500) {
            match (ea, eb) {
                (Some(e), None) => return (true, e),
                (None, Some(e)) => return (false, e),
                _ => {}
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "no leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elector_shutdown_hands_over_quickly_with_higher_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.json");
    // A long lease, so that a handover well before it could expire proves the release
    // (without timing the handover itself, which a loaded machine would make flaky).
    let slow = LeaseConfig {
        lease_duration: Duration::from_secs(20),
        renew_deadline: Duration::from_secs(15),
        retry_period: Duration::from_millis(50),
    };
    let a = start_with(&path, "a", slow);
    let b = start_with(&path, "b", slow);
    let (a_leads, epoch) = the_one_leader(&a, &b).await;
    let (leader, mut standby) = if a_leads { (a, b) } else { (b, a) };

    let t0 = Instant::now();
    leader.stop.cancel();
    let new_epoch = wait_leader(&mut standby, Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert!(new_epoch > epoch, "{new_epoch} <= {epoch}");
    // Had it been left to expire, the standby would have waited about 20 s.
    assert!(took < Duration::from_secs(10), "handover took {took:?}");
    leader.task.await.unwrap().unwrap();
    assert_eq!(*leader.rx.borrow(), Role::Standby);

    standby.stop.cancel();
    standby.task.await.unwrap().unwrap();
    assert_eq!(*standby.rx.borrow(), Role::Standby);
    assert_eq!(FileLease::current(&path).unwrap(), (None, new_epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elector_resign_hands_over_and_sits_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.json");
    let a = start(&path, "a");
    let b = start(&path, "b");
    let (a_leads, epoch) = the_one_leader(&a, &b).await;
    let (mut leader, mut standby) = if a_leads { (a, b) } else { (b, a) };

    leader.resign.notify_one();
    // Bounds, not timings (it took over 1 s once, on a loaded machine).
    let new_epoch = wait_leader(&mut standby, Duration::from_secs(10)).await;
    assert!(new_epoch > epoch);
    assert_eq!(epoch_of(&leader), None);

    // Once the new leader goes away, the resigned one takes over again.
    standby.stop.cancel();
    standby.task.await.unwrap().unwrap();
    let third = wait_leader(&mut leader, Duration::from_secs(10)).await;
    assert!(third > new_epoch);
    leader.stop.cancel();
    leader.task.await.unwrap().unwrap();
}

/// A backend that grants epoch 1 once, then never answers (a stuck store).
struct Stuck {
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl LeaseBackend for Stuck {
    async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Ok(held(1))
        } else {
            std::future::pending().await
        }
    }
    async fn release(&self) -> Result<(), LeaseError> {
        std::future::pending().await
    }
    fn identity(&self) -> &str {
        "stuck"
    }
    fn lease_duration(&self) -> Duration {
        Duration::from_secs(2)
    }
}

#[tokio::test(start_paused = true)]
async fn elector_steps_down_at_renew_deadline_even_if_the_store_hangs() {
    let cfg = LeaseConfig::default();
    let backend = Arc::new(Stuck {
        calls: Default::default(),
    });
    // Shutdown while a release hangs is still bounded (the helper stops the elector).
    let took = led_then_stepped_down(backend, cfg).await;
    assert!(
        took >= cfg.renew_deadline && took < cfg.renew_deadline + cfg.retry_period,
        "stepped down after {took:?}"
    );
}

/// A backend that answers from a script, then repeats its last answer (`None`: an error
/// of the store).
struct Script {
    answers: Mutex<std::collections::VecDeque<Option<LeaseState>>>,
}

impl Script {
    fn new(answers: Vec<Option<LeaseState>>) -> Arc<Self> {
        Arc::new(Script {
            answers: Mutex::new(answers.into()),
        })
    }
}

#[async_trait]
impl LeaseBackend for Script {
    async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
        let mut answers = self.answers.lock().unwrap();
        let answer = match answers.len() {
            0 => None,
            1 => answers[0].clone(),
            _ => answers.pop_front().flatten(),
        };
        answer.ok_or_else(|| LeaseError::Io {
            path: "script".into(),
            source: std::io::Error::other("the store failed"),
        })
    }
    async fn release(&self) -> Result<(), LeaseError> {
        Ok(())
    }
    fn identity(&self) -> &str {
        "script"
    }
    fn lease_duration(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// Runs the elector on `backend` with `cfg` until it has led and stepped down: how long
/// after the start it stepped down.
async fn led_then_stepped_down(backend: Arc<dyn LeaseBackend>, cfg: LeaseConfig) -> Duration {
    let (tx, mut rx) = watch::channel(Role::Standby);
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let task = tokio::spawn(run_elector(backend, cfg, tx, stop.clone()));
    tokio::time::timeout(
        Duration::from_secs(60),
        rx.wait_for(|r| *r == Role::Leader { epoch: 1 }),
    )
    .await
    .expect("never led")
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        rx.wait_for(|r| *r == Role::Standby),
    )
    .await
    .expect("the leader never stepped down")
    .unwrap();
    let took = t0.elapsed();
    stop.cancel();
    task.await.unwrap().unwrap();
    took
}

/// A leader that sees another holder in the lease (a clock skew, a hand-edited lease)
/// steps down at that attempt, not at its renew deadline.
#[tokio::test(start_paused = true)]
async fn elector_steps_down_at_once_when_another_holds_the_lease() {
    let cfg = LeaseConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(100),
    };
    let backend = Script::new(vec![Some(held(1)), Some(other("b", 2))]);
    let took = led_then_stepped_down(backend, cfg).await;
    assert!(
        took < Duration::from_millis(300),
        "stepped down after {took:?}"
    );
}

/// A leader whose store answers errors steps down at its renew deadline, not at the first
/// failed attempt after it (which comes up to a retry period later).
#[tokio::test(start_paused = true)]
async fn elector_steps_down_at_renew_deadline_when_the_store_fails() {
    let cfg = LeaseConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(1400),
    };
    let backend = Script::new(vec![Some(held(1)), None]);
    let took = led_then_stepped_down(backend, cfg).await;
    assert!(
        took >= cfg.renew_deadline && took < cfg.renew_deadline + Duration::from_millis(100),
        "stepped down after {took:?}"
    );
}

#[tokio::test]
async fn elector_rejects_renew_deadline_not_below_backend_lease() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn LeaseBackend> = Arc::new(lease_at(&dir, "a", Duration::from_millis(150)));
    let (tx, _rx) = watch::channel(Role::Standby);
    let err = run_elector(backend, fast_cfg(), tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::Config { .. }), "{err}");
}

/// A backend whose first renewal lands but takes a second to answer, and that fails after.
struct SlowRenewal {
    calls: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl LeaseBackend for SlowRenewal {
    async fn try_acquire_or_renew(&self) -> Result<LeaseState, LeaseError> {
        match self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Ok(held(1)),
            1 => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(held(1))
            }
            _ => Err(LeaseError::Io {
                path: "slow".into(),
                source: std::io::Error::other("the store failed"),
            }),
        }
    }
    async fn release(&self) -> Result<(), LeaseError> {
        Ok(())
    }
    fn identity(&self) -> &str {
        "slow"
    }
    fn lease_duration(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// A renewal holds the lease from when it was sent, not from when its answer came: the
/// store may have written it at once, so the others count the lease from then. Counted
/// from the answer, a slow renewal (a file's fsync, a busy API server) stretched the
/// leader's deadline by the answer's delay, past the lease's expiry as the others judge
/// it, and two players could lead at once.
#[tokio::test(start_paused = true)]
async fn a_slow_renewal_counts_its_deadline_from_when_it_was_sent() {
    let cfg = LeaseConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(100),
    };
    let backend = Arc::new(SlowRenewal {
        calls: Default::default(),
    });
    // Renewed by the attempt sent at 0.1 s (answered at 1.1 s): stands down at 1.6 s, not
    // at 2.6 s.
    let took = led_then_stepped_down(backend, cfg).await;
    assert!(
        took >= Duration::from_millis(1600) && took < Duration::from_millis(1700),
        "stepped down after {took:?}"
    );
}
