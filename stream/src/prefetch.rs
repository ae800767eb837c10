//! Asking the processor for memory before it is read.
//!
//! The stream stage's per-reading work is short; what it waits for is memory: a payload
//! written long before, a slot of the point index, a point's state. Where the next few of
//! those are known ahead, asking for them first lets their misses overlap instead of
//! following one another.

/// Ask for the cache line at the start of `value` to be brought in, without waiting for it.
/// A hint: it changes no result.
#[inline(always)]
pub(crate) fn prefetch<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: every x86_64 processor has SSE, and a prefetch reads nothing the program can
    // see and cannot fault, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
