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

/// The size of a cache line on the processors this runs on.
const LINE: usize = 64;

/// Ask for every cache line `value` itself spans (not what it points to).
#[inline(always)]
pub(crate) fn prefetch_whole<T>(value: &T) {
    prefetch_span((value as *const T).cast(), std::mem::size_of::<T>());
}

/// Ask for every cache line of the first `most` elements of `values` (not what they point to).
#[inline(always)]
pub(crate) fn prefetch_first<T>(values: &[T], most: usize) {
    let n = values.len().min(most);
    prefetch_span(values.as_ptr().cast(), std::mem::size_of_val(&values[..n]));
}

/// Ask for a ring buffer's contents, up to [`DEQUE_LINES`] lines of each of its two runs:
/// what a search, a fit or a median over a short window reads.
#[inline(always)]
pub(crate) fn prefetch_deque<T>(deque: &std::collections::VecDeque<T>) {
    let (front, back) = deque.as_slices();
    for run in [front, back] {
        let bytes = std::mem::size_of_val(run).min(DEQUE_LINES * LINE);
        prefetch_span(run.as_ptr().cast(), bytes);
    }
}

/// Windows longer than this many lines are read on from what their start brings in.
const DEQUE_LINES: usize = 4;

/// Every line that the `bytes` from `start` lie in; none when `bytes` is 0.
#[inline(always)]
fn prefetch_span(start: *const u8, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let into_line = start as usize % LINE;
    // `wrapping_*`: the start of the first line can lie before the allocation, where `sub`
    // and `add` would be undefined behaviour. A prefetch never reads through the address.
    let line = start.wrapping_sub(into_line);
    let mut offset = 0;
    while offset < into_line + bytes {
        prefetch_address(line.wrapping_add(offset));
        offset += LINE;
    }
}

#[inline(always)]
fn prefetch_address(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `prefetch`.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
