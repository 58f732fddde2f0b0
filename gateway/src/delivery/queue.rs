//! One connection's bounded outbound queue: many senders (the local
//! registry, the connection's reader), one receiver (its writer).
//!
//! tokio's `mpsc::channel` allocates its shared state (cache-line padded,
//! about 500 bytes) and a first block of 32 slots (about 550 bytes) as soon
//! as it is created. Every open connection has a queue, and an idle one is
//! empty nearly all the time, so that was about 1 KiB per idle connection.
//! Here the queue is a `VecDeque` behind a mutex, next to two [`Notify`]s:
//! about 150 bytes while empty. Slots are allocated as values queue up and
//! released once the queue drains after a burst.
//!
//! The interface is the part of tokio's that the gateway uses, with tokio's
//! error types: [`Sender::try_send`] (the registry: a full queue means a slow
//! consumer), [`Sender::send`] (the reader: waits for room), and
//! [`Receiver::recv`] / [`Receiver::try_recv`]. `recv` and `send` are
//! cancel safe: dropping either future loses nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use error::{SendError, TryRecvError, TrySendError};
pub use tokio::sync::mpsc::error;

/// Above this many slots, a drained queue frees its buffer (a burst's worth
/// of slots is not kept by a connection that has gone quiet).
const KEEP_SLOTS: usize = 32;

/// A bounded queue of at most `capacity` values (at least 1).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            senders: 1,
            closed: false,
        }),
        filled: Notify::new(),
        drained: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the receiver: a value was queued, or the last sender left.
    filled: Notify,
    /// Wakes waiting senders: room was made, or the receiver left.
    drained: Notify,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    capacity: usize,
    /// Live [`Sender`]s; at 0 the receiver gets `None` once drained.
    senders: usize,
    /// The receiver is gone: sends fail.
    closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing here panics while holding the lock; recover anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side; cloned for each sender.
#[derive(Debug)]
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `value` if there is room, without waiting.
    ///
    /// # Errors
    /// [`TrySendError::Full`] when the queue holds `capacity` values,
    /// [`TrySendError::Closed`] when the receiver is gone; both give the
    /// value back.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed(value));
        }
        if state.queue.len() >= state.capacity {
            return Err(TrySendError::Full(value));
        }
        state.queue.push_back(value);
        drop(state);
        self.shared.filled.notify_one();
        Ok(())
    }

    /// Queues `value`, waiting while the queue is full.
    ///
    /// # Errors
    /// [`SendError`] with the value when the receiver is gone.
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        let mut value = value;
        loop {
            // Registered before the check, so a wake-up between the check
            // and the wait is not missed.
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(v)) => return Err(SendError(v)),
                Err(TrySendError::Full(v)) => value = v,
            }
            drained.await;
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            self.shared.filled.notify_one();
        }
    }
}

/// The receiving side.
#[derive(Debug)]
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// Takes the oldest value, without waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is queued,
    /// [`TryRecvError::Disconnected`] when nothing is queued and every
    /// sender is gone.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        let was_full = state.queue.len() >= state.capacity;
        let Some(value) = state.queue.pop_front() else {
            return Err(if state.senders == 0 {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        };
        if state.queue.is_empty() && state.queue.capacity() > KEEP_SLOTS {
            state.queue = VecDeque::new();
        }
        drop(state);
        if was_full {
            self.shared.drained.notify_waiters();
        }
        Ok(value)
    }

    /// Takes the oldest value, waiting for one; `None` once every sender is
    /// gone and the queue is drained.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(value) => return Some(value),
                Err(TryRecvError::Disconnected) => return None,
                // `notify_one` keeps a wake-up for a receiver not yet
                // waiting, so one sent after the check is not missed.
                Err(TryRecvError::Empty) => self.shared.filled.notified().await,
            }
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        let queued = std::mem::take(&mut state.queue);
        drop(state);
        // Dropped outside the lock.
        drop(queued);
        self.shared.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_out_in_order_and_a_full_queue_refuses() {
        let (tx, mut rx) = channel(2);
        tx.try_send(1).unwrap();
        tx.clone().try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv().unwrap(), 1);
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_recv().unwrap(), 2);
        assert_eq!(rx.try_recv().unwrap(), 3);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn the_receiver_sees_the_end_after_the_last_value() {
        let (tx, mut rx) = channel(4);
        let tx2 = tx.clone();
        tx.try_send(1).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        drop(tx2);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[test]
    fn sends_fail_once_the_receiver_is_gone() {
        let (tx, rx) = channel(4);
        tx.try_send(1).unwrap();
        drop(rx);
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
    }

    #[test]
    fn a_drained_queue_frees_a_bursts_slots() {
        let (tx, mut rx) = channel(1024);
        for i in 0..100 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.lock().queue.capacity(), 0);
    }

    #[tokio::test]
    async fn recv_waits_for_a_value_or_the_last_sender() {
        let (tx, mut rx) = channel(4);
        let got = tokio::spawn(async move { (rx.recv().await, rx.recv().await) });
        tokio::task::yield_now().await;
        tx.try_send(7).unwrap();
        drop(tx);
        assert_eq!(got.await.unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn send_waits_for_room_then_queues() {
        let (tx, mut rx) = channel(1);
        tx.try_send(1).unwrap();
        let sent = tokio::spawn(async move { tx.send(2).await.is_ok() });
        tokio::task::yield_now().await;
        assert!(!sent.is_finished());
        assert_eq!(rx.recv().await, Some(1));
        assert!(sent.await.unwrap());
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn a_waiting_send_fails_when_the_receiver_leaves() {
        let (tx, rx) = channel(1);
        tx.try_send(1).unwrap();
        let sent = tokio::spawn(async move { tx.send(2).await.is_err() });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(sent.await.unwrap());
    }

    /// Every connection holds one queue from its start.
    #[test]
    fn an_empty_queue_is_small() {
        assert!(std::mem::size_of::<Shared<crate::delivery::registry::Outbound>>() <= 160);
    }
}
