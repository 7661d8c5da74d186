//! The global allocator edgemesh runs with: mimalloc, entered through its plain functions
//! whenever the alignment asked for is one every mimalloc block already has.
//!
//! The `mimalloc` crate's allocator passes every request to `mi_malloc_aligned`. For a block
//! over 1 KiB that function cannot use its fast path and over-allocates (`size + align - 1`)
//! then aligns, even at alignment 8. A proxied request makes such a block (the exchange's
//! 2,648-byte future), and under load about one more in the upstream connection's task:
//! allocation took 408 instructions per request that way, 177 through `mi_malloc`
//! (callgrind, BENCHMARKS.md). Every mimalloc block is word-aligned, so only alignments
//! above a word need the aligned functions.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc as the global allocator (`#[global_allocator]`).
pub struct Mimalloc;

/// Every mimalloc block starts on a word boundary: block sizes are whole words and pages
/// are aligned.
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: each function hands the request to mimalloc, which returns blocks of at least the
// requested size (or null) aligned to `layout.align()`: by mimalloc's word alignment where
// that is at most a word, by the `_aligned` functions otherwise. `mi_free` and the realloc
// functions accept any block mimalloc returned, aligned or not.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every size class edgemesh uses, at every alignment up to a page, come back
    /// aligned, writable to their last byte, and keep their contents through realloc.
    #[test]
    fn blocks_are_aligned_and_usable() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 24, 100, 1024, 1025, 2648, 8192, 70_000, 5 << 20] {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    for zeroed in [false, true] {
                        let p = if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        };
                        assert!(!p.is_null(), "size {size} align {align}");
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            let s = std::slice::from_raw_parts(p, size);
                            assert!(s.iter().all(|&b| b == 0), "size {size} align {align}");
                        }
                        p.write_bytes(0xa5, size);
                        let grown = a.realloc(p, layout, size * 2 + 1);
                        assert!(!grown.is_null());
                        assert_eq!(
                            grown as usize % align,
                            0,
                            "realloc size {size} align {align}"
                        );
                        let s = std::slice::from_raw_parts(grown, size);
                        assert!(
                            s.iter().all(|&b| b == 0xa5),
                            "realloc size {size} align {align}"
                        );
                        grown.add(size * 2).write(1);
                        a.dealloc(grown, Layout::from_size_align(size * 2 + 1, align).unwrap());
                    }
                }
            }
        }
    }
}
