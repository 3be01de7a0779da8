//! Explicit completion of a unit of work (a position's documents, an initial-sync range, a
//! whole-index step). Every holder of a [`Completion`] must settle it with [`Completion::done`]
//! once its part is acknowledged by the engine; a holder that is dropped unsettled (a failed,
//! cancelled or panicking fetch or write) marks the whole unit failed. A failed unit never runs
//! its `on_done` callback, so its position is never checkpointed: it is retried after the
//! pipeline restarts from the last stored checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Callback = Box<dyn FnOnce() + Send>;

/// One holder's obligation in a unit of work. Cloning hands out a new obligation for another
/// part (a chunk sent to a writer); each must be settled.
pub struct Completion {
    shared: Arc<Shared>,
    settled: bool,
}

struct Shared {
    failed: AtomicBool,
    on_done: Mutex<Option<Callback>>,
    on_fail: Mutex<Option<Callback>>,
}

impl Completion {
    /// A unit whose `on_done` runs once every obligation is settled, or whose `on_fail` runs
    /// (instead) when any obligation was dropped unsettled.
    pub fn new(
        on_done: impl FnOnce() + Send + 'static,
        on_fail: impl FnOnce() + Send + 'static,
    ) -> Self {
        Completion {
            shared: Arc::new(Shared {
                failed: AtomicBool::new(false),
                on_done: Mutex::new(Some(Box::new(on_done))),
                on_fail: Mutex::new(Some(Box::new(on_fail))),
            }),
            settled: false,
        }
    }

    /// Settles this holder's part: everything it was responsible for is acknowledged.
    pub fn done(mut self) {
        self.settled = true;
    }
}

impl Clone for Completion {
    fn clone(&self) -> Self {
        Completion {
            shared: self.shared.clone(),
            settled: false,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.failed.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let slot = if self.failed.load(Ordering::SeqCst) {
            &self.on_fail
        } else {
            &self.on_done
        };
        let callback = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = callback {
            f();
        }
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completion")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn unit() -> (Completion, mpsc::Receiver<&'static str>) {
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        let c = Completion::new(
            move || tx.send("done").unwrap(),
            move || tx2.send("failed").unwrap(),
        );
        (c, rx)
    }

    #[test]
    fn a_unit_is_done_only_when_every_part_is_settled() {
        let (c, rx) = unit();
        let part = c.clone();
        c.done();
        assert!(rx.try_recv().is_err(), "one part still open");
        part.done();
        assert_eq!(rx.try_recv().unwrap(), "done");
    }

    #[test]
    fn a_part_dropped_unsettled_fails_the_unit() {
        let (c, rx) = unit();
        let part = c.clone();
        c.done();
        drop(part);
        assert_eq!(rx.try_recv().unwrap(), "failed");
        assert!(rx.try_recv().is_err(), "fires once");
    }

    #[test]
    fn a_part_held_by_a_panicking_thread_fails_the_unit() {
        let (c, rx) = unit();
        let part = c.clone();
        let joined = std::thread::spawn(move || {
            let _held = part;
            panic!("injected");
        })
        .join();
        assert!(joined.is_err());
        c.done();
        assert_eq!(rx.try_recv().unwrap(), "failed");
    }
}
