//! Send buffers bounded in bytes (a switchboard patch, see PATCHES.md).
//!
//! The internal channel of a socket is bounded in packets, but a packet can be
//! anything from a 3-byte ping to a megabyte-long acknowledgement, so a count
//! alone does not bound memory. Every socket here also counts the bytes it has
//! queued and not yet handed to its transport, and every socket of one engine
//! adds to one total. [`Socket::reserve`](crate::Socket::reserve) refuses a
//! packet (as if the channel were full) when the socket already holds more
//! than its share; the overshoot is at most the one packet that crossed it.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use engineioxide_core::{Packet, PacketBuf};
use tokio::sync::mpsc::{self, error::TryRecvError};

/// The limits, shared by every socket of one engine.
#[derive(Debug)]
pub struct ByteBudget {
    per_socket: usize,
    total_limit: usize,
    total: AtomicUsize,
}

impl ByteBudget {
    /// No limit at all (the release's behaviour).
    pub fn unbounded() -> Self {
        Self::new(usize::MAX, usize::MAX)
    }

    /// At most `per_socket` bytes queued for one socket; and once every socket
    /// together holds more than `total_limit`, sockets holding more than a
    /// sixteenth of `per_socket` are refused too, so the ones that read
    /// promptly (and hold almost nothing) keep going.
    pub fn new(per_socket: usize, total_limit: usize) -> Self {
        Self {
            per_socket,
            total_limit,
            total: AtomicUsize::new(0),
        }
    }

    /// Bytes queued for every socket of this engine, not yet written out.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// One socket's queued bytes, counted on the way in and out of its channel.
#[derive(Debug)]
pub(crate) struct Queue {
    budget: Arc<ByteBudget>,
    bytes: AtomicUsize,
}

impl Queue {
    pub(crate) fn new(budget: Arc<ByteBudget>) -> Self {
        Self {
            budget,
            bytes: AtomicUsize::new(0),
        }
    }

    /// Whether this socket may queue another packet.
    pub(crate) fn admits(&self) -> bool {
        let mine = self.bytes.load(Ordering::Relaxed);
        let budget = &self.budget;
        mine <= budget.per_socket && (mine <= budget.per_socket / 16 || budget.total() <= budget.total_limit)
    }

    pub(crate) fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.budget.total.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.budget.total.fetch_sub(n, Ordering::Relaxed);
    }

    /// Bytes queued for this socket now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Queue {
    /// Whatever a closed socket still had queued leaves the total with it.
    fn drop(&mut self) {
        let left = *self.bytes.get_mut();
        self.budget.total.fetch_sub(left, Ordering::Relaxed);
    }
}

/// The payload bytes a packet holds in memory (what the budget counts).
pub(crate) fn weigh(packets: &PacketBuf) -> usize {
    packets
        .iter()
        .map(|p| match p {
            Packet::Message(msg) => msg.len(),
            Packet::Binary(bin) | Packet::BinaryV3(bin) => bin.len(),
            _ => 0,
        })
        .sum()
}

/// The receiving end of a socket's channel: takes each packet off the count
/// as the transport takes it out.
#[derive(Debug)]
pub(crate) struct BufferedRx {
    rx: mpsc::Receiver<PacketBuf>,
    queue: Arc<Queue>,
}

impl BufferedRx {
    pub(crate) fn new(rx: mpsc::Receiver<PacketBuf>, queue: Arc<Queue>) -> Self {
        Self { rx, queue }
    }

    fn taken(&self, packets: PacketBuf) -> PacketBuf {
        self.queue.sub(weigh(&packets));
        packets
    }

    pub(crate) async fn recv(&mut self) -> Option<PacketBuf> {
        let packets = self.rx.recv().await?;
        Some(self.taken(packets))
    }

    pub(crate) fn try_recv(&mut self) -> Result<PacketBuf, TryRecvError> {
        let packets = self.rx.try_recv()?;
        Ok(self.taken(packets))
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<PacketBuf>> {
        self.rx
            .poll_recv(cx)
            .map(|packets| packets.map(|p| self.taken(p)))
    }

    pub(crate) fn close(&mut self) {
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    fn message(n: usize) -> PacketBuf {
        smallvec![Packet::Message("x".repeat(n).into())]
    }

    #[test]
    fn a_socket_over_its_share_is_refused_until_it_drains() {
        let budget = Arc::new(ByteBudget::new(100, usize::MAX));
        let queue = Queue::new(budget.clone());
        queue.add(weigh(&message(100)));
        assert!(queue.admits(), "at the limit, not past it");
        queue.add(weigh(&message(1)));
        assert!(!queue.admits());
        queue.sub(weigh(&message(50)));
        assert!(queue.admits());
        assert_eq!(budget.total(), 51);
    }

    #[test]
    fn past_the_total_only_sockets_holding_more_than_a_sixteenth_are_refused() {
        let budget = Arc::new(ByteBudget::new(1600, 1000));
        let (heavy, light) = (Queue::new(budget.clone()), Queue::new(budget.clone()));
        heavy.add(1001);
        light.add(50);
        assert!(!heavy.admits());
        assert!(light.admits(), "a socket that reads promptly keeps going");
        light.add(60);
        assert!(!light.admits());
    }

    #[test]
    fn a_dropped_queue_gives_its_bytes_back_to_the_total() {
        let budget = Arc::new(ByteBudget::unbounded());
        let queue = Queue::new(budget.clone());
        queue.add(42);
        assert_eq!(budget.total(), 42);
        drop(queue);
        assert_eq!(budget.total(), 0);
    }

    #[tokio::test]
    async fn the_receiver_takes_packets_off_the_count() {
        let budget = Arc::new(ByteBudget::unbounded());
        let queue = Arc::new(Queue::new(budget.clone()));
        let (tx, rx) = mpsc::channel(4);
        let mut rx = BufferedRx::new(rx, queue.clone());
        for n in [10, 20] {
            let packets = message(n);
            queue.add(weigh(&packets));
            tx.try_send(packets).unwrap();
        }
        assert_eq!(queue.bytes(), 30);
        rx.recv().await.unwrap();
        assert_eq!(queue.bytes(), 20);
        rx.try_recv().unwrap();
        assert_eq!((queue.bytes(), budget.total()), (0, 0));
    }
}
