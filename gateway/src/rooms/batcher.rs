//! Many callers' small requests sent together: a task collects what is
//! queued (up to `max_batch` items, waiting at most `linger` after the first
//! one), hands the batch to one `flush` call (one Redis round trip) and
//! answers each caller on its own oneshot.
//!
//! It exists for connection registrations: in a connect storm, thousands of
//! connections per second each sent their own script call and two `SADD`s,
//! Redis fell behind, registrations timed out and freshly upgraded
//! connections were closed again, so their clients came back and fed the
//! storm. Batched, a storm costs few round trips per gateway.
//!
//! Batches are flushed one after another: while one is in flight the next
//! collects, so the batch size grows with the load and the queue is the
//! back-pressure. An item that waited in the queue longer than
//! `queue_deadline` is answered [`BatchError::Overloaded`] without being
//! sent (its caller refuses the connection with a retry hint instead of
//! waiting for a round trip that would come too late), and an item whose
//! caller has gone is skipped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How the batcher collects and sheds.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most items sent in one flush.
    pub max_batch: usize,
    /// Longest wait after the first item for more (zero: take only what is
    /// already queued).
    pub linger: Duration,
    /// An item queued longer than this is answered `Overloaded`, unsent.
    pub queue_deadline: Duration,
    /// Most items queued; more are answered `Overloaded` at once.
    pub queue_capacity: usize,
}

/// Why a batched request has no answer.
#[derive(Debug, thiserror::Error)]
pub enum BatchError<E> {
    /// The queue was full, or the item waited past its deadline: nothing
    /// was sent.
    #[error("overloaded: the batch queue is backed up")]
    Overloaded,
    /// The flush of its batch failed (every item of that batch gets it).
    #[error("{0}")]
    Failed(Arc<E>),
    /// The batcher has stopped (the process is ending).
    #[error("batcher stopped")]
    Stopped,
}

/// One queued item and where its answer goes.
struct Job<T, R, E> {
    item: T,
    queued: Instant,
    reply: oneshot::Sender<Result<R, BatchError<E>>>,
}

/// The sending side; cheap to clone.
pub struct Batcher<T, R, E> {
    tx: mpsc::Sender<Job<T, R, E>>,
}

impl<T, R, E> Clone for Batcher<T, R, E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T, R, E> std::fmt::Debug for Batcher<T, R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .finish()
    }
}

impl<T, R, E> Batcher<T, R, E>
where
    T: Send + 'static,
    R: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Starts the collecting task on the current runtime. `flush` gets each
    /// batch and returns one answer per item, in order (fewer answers fail
    /// the missing items with `Stopped`).
    pub fn spawn<F, Fut>(limits: BatchLimits, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, E>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(limits.queue_capacity.max(1));
        tokio::spawn(run(rx, limits, flush));
        Self { tx }
    }

    /// Queues `item` and waits for its answer.
    ///
    /// # Errors
    /// [`BatchError::Overloaded`] when the queue is full or the item waited
    /// past the deadline (not sent); [`BatchError::Failed`] when its batch
    /// failed; [`BatchError::Stopped`] when the batcher has stopped.
    pub async fn call(&self, item: T) -> Result<R, BatchError<E>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            item,
            queued: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(BatchError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(BatchError::Stopped),
        }
        answer.await.unwrap_or(Err(BatchError::Stopped))
    }

    /// Items waiting in the queue right now (not counting a batch in flight).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The collecting task: runs until every [`Batcher`] is dropped.
async fn run<T, R, E, F, Fut>(mut rx: mpsc::Receiver<Job<T, R, E>>, limits: BatchLimits, flush: F)
where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, E>>,
{
    while let Some(first) = rx.recv().await {
        let jobs = collect(&mut rx, first, &limits).await;
        let live = shed(jobs, limits.queue_deadline);
        if live.is_empty() {
            continue;
        }
        let (items, replies): (Vec<T>, Vec<_>) =
            live.into_iter().map(|job| (job.item, job.reply)).unzip();
        match flush(items).await {
            Ok(answers) => {
                let mut answers = answers.into_iter();
                for reply in replies {
                    let _ = reply.send(answers.next().ok_or(BatchError::Stopped));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Failed(e.clone())));
                }
            }
        }
    }
}

/// The batch that starts with `first`: what is queued, plus what arrives
/// within `linger`, up to `max_batch` items.
async fn collect<J>(rx: &mut mpsc::Receiver<J>, first: J, limits: &BatchLimits) -> Vec<J> {
    let max = limits.max_batch.max(1);
    let mut jobs = Vec::with_capacity(max.min(64));
    jobs.push(first);
    let until = Instant::now() + limits.linger;
    while jobs.len() < max {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) if limits.linger.is_zero() => break,
            Err(_) => match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) | Err(_) => break,
            },
        }
    }
    jobs
}

/// Drops the jobs whose caller has gone, and answers `Overloaded` to those
/// queued longer than `deadline`; returns the rest.
fn shed<T, R, E>(jobs: Vec<Job<T, R, E>>, deadline: Duration) -> Vec<Job<T, R, E>> {
    let now = Instant::now();
    jobs.into_iter()
        .filter_map(|job| {
            if job.reply.is_closed() {
                None
            } else if now.duration_since(job.queued) > deadline {
                let _ = job.reply.send(Err(BatchError::Overloaded));
                None
            } else {
                Some(job)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn limits(max_batch: usize, linger_ms: u64) -> BatchLimits {
        BatchLimits {
            max_batch,
            linger: Duration::from_millis(linger_ms),
            queue_deadline: Duration::from_secs(1),
            queue_capacity: 1000,
        }
    }

    /// The batches a test batcher was given, in order.
    type Seen = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A batcher that doubles numbers and records each batch it was given.
    fn doubler(limits: BatchLimits) -> (Batcher<u32, u32, String>, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let batcher = Batcher::spawn(limits, move |items: Vec<u32>| {
            log.lock().unwrap().push(items.clone());
            async move { Ok(items.into_iter().map(|i| i * 2).collect()) }
        });
        (batcher, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_batches_and_each_gets_its_own_answer() {
        let (batcher, seen) = doubler(limits(16, 2));
        let calls = (0..40u32).map(|i| {
            let b = batcher.clone();
            tokio::spawn(async move { (i, b.call(i).await.unwrap()) })
        });
        for call in futures_util::future::join_all(calls).await {
            let (i, answer) = call.unwrap();
            assert_eq!(answer, i * 2);
        }
        let batches = seen.lock().unwrap().clone();
        let sent: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(sent, 40, "every item sent exactly once: {batches:?}");
        assert!(batches.iter().all(|b| b.len() <= 16), "{batches:?}");
        assert_eq!(batches.len(), 3, "40 items in batches of 16: {batches:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_item_goes_out_after_the_linger() {
        let (batcher, seen) = doubler(limits(16, 2));
        let started = Instant::now();
        assert_eq!(batcher.call(21).await.unwrap(), 42);
        assert_eq!(started.elapsed(), Duration::from_millis(2));
        assert_eq!(seen.lock().unwrap().clone(), vec![vec![21]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_flush_fails_every_item_of_its_batch_only() {
        let flushes = Arc::new(Mutex::new(0));
        let n = flushes.clone();
        let batcher: Batcher<u32, u32, String> = Batcher::spawn(limits(4, 1), move |items| {
            let first = {
                let mut n = n.lock().unwrap();
                *n += 1;
                *n == 1
            };
            async move {
                if first {
                    Err("redis timed out".to_string())
                } else {
                    Ok(items)
                }
            }
        });
        let calls: Vec<_> = (0..4u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        for call in calls {
            match call.await.unwrap() {
                Err(BatchError::Failed(e)) => assert_eq!(*e, "redis timed out"),
                other => panic!("expected the batch's failure, got {other:?}"),
            }
        }
        assert_eq!(batcher.call(7).await.unwrap(), 7);
    }

    /// While a flush hangs, what queues behind it past the deadline is
    /// answered `Overloaded` and never sent; a full queue refuses at once.
    #[tokio::test(start_paused = true)]
    async fn items_stuck_behind_a_slow_flush_are_shed_unsent() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let limits = BatchLimits {
            max_batch: 8,
            linger: Duration::ZERO,
            queue_deadline: Duration::from_millis(500),
            queue_capacity: 3,
        };
        let batcher: Batcher<u32, u32, String> = Batcher::spawn(limits, move |items: Vec<u32>| {
            log.lock().unwrap().push(items.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(items)
            }
        });
        let b = batcher.clone();
        let slow = tokio::spawn(async move { b.call(1).await });
        // Let the first batch go out, then queue three behind it.
        while seen.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let queued: Vec<_> = (10..13u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        while batcher.queued() < 3 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            batcher.call(99).await,
            Err(BatchError::Overloaded)
        ));
        assert_eq!(slow.await.unwrap().unwrap(), 1);
        for call in queued {
            assert!(matches!(call.await.unwrap(), Err(BatchError::Overloaded)));
        }
        assert_eq!(seen.lock().unwrap().clone(), vec![vec![1]]);
    }
}
