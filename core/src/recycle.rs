//! Keeping a vector's allocation from one step to the next when its items borrow from the step.

/// `v`'s allocation, emptied, as a vector of `U`: the same type as `T` but for lifetimes, so that a step's
/// vectors of borrowed items can be kept between steps. Layouts that differ do not compile.
pub(crate) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    const { assert!(std::mem::size_of::<T>() == std::mem::size_of::<U>()) };
    const { assert!(std::mem::align_of::<T>() == std::mem::align_of::<U>()) };
    v.clear();
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, cap) = (v.as_mut_ptr(), v.capacity());
    // SAFETY: the allocation was made for `cap` elements of T, whose size and alignment are U's (checked
    // above), so it is one for `cap` elements of U; it holds none (cleared), and `v` no longer owns it.
    unsafe { Vec::from_raw_parts(ptr.cast::<U>(), 0, cap) }
}
