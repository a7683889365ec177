//! The scheduler step's working vectors, kept between steps.

use crate::kv::SeqId;
use crate::model::Pick;

/// A step's working vectors, kept from step to step (emptied) so that a warm decode step allocates none.
#[derive(Default)]
pub(super) struct StepScratch {
    pub(super) pieces: Vec<(usize, usize, usize)>,
    pub(super) order: Vec<usize>,
    pub(super) producing: Vec<bool>,
    pub(super) draws: Vec<f32>,
    pub(super) job_of: Vec<Option<usize>>,
    pub(super) feeds: Vec<u32>,
    pub(super) spans: Vec<(usize, usize)>,
    pub(super) batch: Vec<(SeqId, &'static [u32])>,
    pub(super) picks: Vec<Pick<'static>>,
    pub(super) grammar: Vec<Option<std::result::Result<Vec<u32>, String>>>,
}

/// `v`'s allocation, emptied, as a vector of `U`: the same type as `T` but for lifetimes, so that a step's
/// vectors of borrowed items can be kept between steps. Layouts that differ do not compile.
pub(super) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    const { assert!(std::mem::size_of::<T>() == std::mem::size_of::<U>()) };
    const { assert!(std::mem::align_of::<T>() == std::mem::align_of::<U>()) };
    v.clear();
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, cap) = (v.as_mut_ptr(), v.capacity());
    // SAFETY: the allocation was made for `cap` elements of T, whose size and alignment are U's (checked
    // above), so it is one for `cap` elements of U; it holds none (cleared), and `v` no longer owns it.
    unsafe { Vec::from_raw_parts(ptr.cast::<U>(), 0, cap) }
}
