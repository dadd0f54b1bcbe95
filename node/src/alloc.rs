//! A global allocator that keeps a malformed request from aborting the process.
//!
//! The `kafka-protocol` decoders (0.18) pre-allocate `Vec::with_capacity(n)` from array lengths
//! read off the wire, before checking that `n` elements could fit in the frame (upstream issues
//! and pull requests #152, #161, #200). A 20-byte frame can ask for hundreds of gigabytes; the
//! system allocator refuses, and Rust aborts on allocation failure. Until the fix lands upstream,
//! allocations of at least [`HUGE_BYTES`] are served by an anonymous `mmap` with
//! `MAP_NORESERVE`: address space only, no memory committed until touched. The decoder then
//! fails on the short frame as it should, the `Vec` is dropped and the mapping returned. No
//! legitimate allocation in Sluice comes near the threshold (frames are at most 100 MiB).
//! Everything else goes to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this size are mapped lazily instead of allocated.
pub const HUGE_BYTES: usize = 1 << 30;

pub struct GuardedAlloc;

unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE_BYTES && layout.align() <= 4096 {
            return map(layout.size());
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= HUGE_BYTES && layout.align() <= 4096 {
            // Fresh anonymous mappings are zero-filled.
            return map(layout.size());
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= HUGE_BYTES && layout.align() <= 4096 {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let huge = |size: usize| size >= HUGE_BYTES && layout.align() <= 4096;
        if !huge(layout.size()) && !huge(new_size) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing the threshold: allocate anew, copy, free the old block.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping touches no existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    }
}

#[global_allocator]
static GLOBAL: GuardedAlloc = GuardedAlloc;

#[cfg(test)]
mod tests {
    #[test]
    fn a_huge_capacity_request_is_address_space_not_an_abort() {
        let v: Vec<[u8; 64]> = Vec::with_capacity(2_000_000_000);
        assert!(v.capacity() >= 2_000_000_000);
        drop(v);
        let small: Vec<u8> = Vec::with_capacity(10);
        assert!(small.capacity() >= 10);
    }
}
