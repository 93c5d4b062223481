//! The queue of stanzas waiting to be written to one session: many producers (whoever
//! delivers), one consumer (the session's task), bounded, and never blocking a producer.
//!
//! Written here rather than taken from tokio: `tokio::sync::mpsc`'s bounded channel costs
//! about 800 bytes per session even while empty (its shared state is padded to cache lines
//! and its first block of 32 slots stays allocated), and every idle session holds one. This
//! queue is a mutex over a `VecDeque` and a [`Notify`]: about 100 bytes, and a buffer that
//! grows with what waits and is given back after a burst. Producers hold the lock only to
//! push a pointer; the consumer takes a whole batch under one lock per item, as before.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::Notify;

/// A buffer larger than this many slots is freed once the consumer has emptied it (after a
/// burst); a smaller one is kept for the next stanzas.
const KEEP_SLOTS: usize = 64;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the consumer: `notify_one` stores a permit when the consumer is not waiting,
    /// so a push between its check and its wait is not missed.
    ready: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    capacity: usize,
    /// The consumer closed the queue: nothing more is accepted.
    closed: bool,
    /// The producer side is gone: once empty, the queue ends.
    sender_gone: bool,
    /// The consumer found the queue empty and waits: the next push wakes it. Under load
    /// the consumer is draining, not waiting, and pushes skip the wake-up.
    waiting: bool,
}

/// Why [`QueueSender::try_send`] did not queue the item (which it gives back).
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// `capacity` items are waiting.
    Full(T),
    /// The consumer closed the queue or is gone.
    Closed(T),
}

/// Why [`QueueReceiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing waits now.
    Empty,
    /// Nothing waits, and nothing more can come.
    Disconnected,
}

/// The producers' side (one value, shared behind the session's handle).
pub struct QueueSender<T> {
    shared: Arc<Shared<T>>,
}

/// The consumer's side.
pub struct QueueReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue holding at most `capacity` items (at least 1).
pub fn channel<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            closed: false,
            sender_gone: false,
            waiting: false,
        }),
        ready: Notify::new(),
    });
    (
        QueueSender {
            shared: shared.clone(),
        },
        QueueReceiver { shared },
    )
}

impl<T> QueueSender<T> {
    /// Queues `item` without waiting.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let wake = {
            let mut s = self.shared.state.lock();
            if s.closed {
                return Err(TrySendError::Closed(item));
            }
            if s.items.len() >= s.capacity {
                return Err(TrySendError::Full(item));
            }
            s.items.push_back(item);
            std::mem::take(&mut s.waiting)
        };
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> Drop for QueueSender<T> {
    fn drop(&mut self) {
        self.shared.state.lock().sender_gone = true;
        self.shared.ready.notify_one();
    }
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        self.shared.state.lock().closed = true;
    }
}

impl<T> State<T> {
    fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front();
        if self.items.is_empty() && self.items.capacity() > KEEP_SLOTS {
            self.items = VecDeque::new();
        }
        item
    }

    fn ended(&self) -> bool {
        self.items.is_empty() && (self.sender_gone || self.closed)
    }
}

impl<T> QueueReceiver<T> {
    /// The next item, waiting for one; `None` once the queue is empty and the producer
    /// side is gone or the queue closed. Cancel-safe: an item is taken only by the poll
    /// that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut s = self.shared.state.lock();
                if let Some(item) = s.pop() {
                    return Some(item);
                }
                if s.ended() {
                    return None;
                }
                // Set under the lock: a push after this wakes us (a permit is stored if
                // it comes before we wait).
                s.waiting = true;
            }
            self.shared.ready.notified().await;
        }
    }

    /// The next item if one waits now.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut s = self.shared.state.lock();
        match s.pop() {
            Some(item) => Ok(item),
            None if s.ended() => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Accepts nothing more; what waits can still be received.
    pub fn close(&mut self) {
        self.shared.state.lock().closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_arrive_in_order_and_the_bound_refuses_more() {
        let (tx, mut rx) = channel(3);
        for i in 0..3 {
            tx.try_send(i).expect("room");
        }
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(rx.try_recv(), Ok(1));
        tx.try_send(4).expect("room again");
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.recv().await, Some(4));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_and_ends_when_the_sender_is_gone() {
        let (tx, mut rx) = channel::<u32>(8);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            let end = rx.recv().await;
            (first, second, end)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(1).expect("room");
        tx.try_send(2).expect("room");
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("join");
        assert_eq!(got, (Some(1), Some(2), None));
    }

    #[tokio::test]
    async fn closing_refuses_new_items_and_keeps_the_waiting_ones() {
        let (tx, mut rx) = channel(8);
        tx.try_send("a").expect("room");
        rx.close();
        assert_eq!(tx.try_send("b"), Err(TrySendError::Closed("b")));
        assert_eq!(rx.try_recv(), Ok("a"));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(rx.recv().await, None);
        drop(rx);
        assert_eq!(tx.try_send("c"), Err(TrySendError::Closed("c")));
    }

    /// A receive abandoned after the wake-up (as a `select!` does when another branch wins)
    /// loses nothing: the item stays queued and the next receive gets it at once.
    #[tokio::test]
    async fn an_abandoned_receive_loses_nothing() {
        let (tx, mut rx) = channel(8);
        {
            let recv = rx.recv();
            tokio::pin!(recv);
            assert!(futures_util::poll!(recv.as_mut()).is_pending());
            tx.try_send(7).expect("room");
            // Dropped without being polled again.
        }
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("not lost");
        assert_eq!(got, Some(7));
    }

    #[tokio::test]
    async fn a_burst_buffer_is_given_back_once_drained() {
        let (tx, mut rx) = channel(10_000);
        for i in 0..1_000 {
            tx.try_send(i).expect("room");
        }
        while rx.try_recv().is_ok() {}
        assert!(rx.shared.state.lock().items.capacity() <= KEEP_SLOTS);
    }

    /// Many producers on other threads, one consumer: everything arrives, each producer's
    /// items in its order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_lose_nothing() {
        let (tx, mut rx) = channel::<(u32, u32)>(1_000_000);
        let tx = Arc::new(tx);
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        tx.try_send((p, i)).expect("room");
                    }
                })
            })
            .collect();
        let mut next = [0u32; 4];
        for _ in 0..40_000 {
            let (p, i) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("arrives")
                .expect("open");
            assert_eq!(i, next[p as usize]);
            next[p as usize] += 1;
        }
        for p in producers {
            p.join().expect("producer");
        }
        assert_eq!(next, [10_000; 4]);
    }
}
