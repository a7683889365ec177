//! The op lock of a device backend (see [`OpLock`]): the CUDA and wgpu backends record one thread's op at
//! a time.

use std::sync::Mutex;

/// Makes each op's recording (its metadata, scratch buffers and commands) one unbroken run when several
/// threads use one device, and keeps a read's submission out of the middle of another thread's op. Reentrant: an op may call other ops, or read.
#[derive(Default)]
pub struct OpLock {
    owner: Mutex<(Option<std::thread::ThreadId>, usize)>,
    free: std::sync::Condvar,
}

pub struct OpGuard<'a>(&'a OpLock);

impl OpLock {
    pub fn enter(&self) -> OpGuard<'_> {
        let me = std::thread::current().id();
        let mut g = self.owner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(o) = g.0 {
            if o == me {
                break;
            }
            g = self.free.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.0 = Some(me);
        g.1 += 1;
        OpGuard(self)
    }
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.0.owner.lock().unwrap_or_else(|e| e.into_inner());
        g.1 -= 1;
        if g.1 == 0 {
            g.0 = None;
            self.0.free.notify_all();
        }
    }
}
