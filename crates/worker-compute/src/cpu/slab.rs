//! Weight memory: the matrices of a model carved one after another out of large zeroed
//! allocations (slabs) that Linux is asked to back with 2 MiB pages.
//!
//! A decode step streams every weight once. With each matrix in an allocation of its own, only
//! the 2 MiB-aligned stretches inside a matrix could get huge pages: none of SmolLM2's layer
//! matrices (69-553 KB) and about half of Qwen2.5-0.5B's, so most of a step read 4 KiB pages,
//! a TLB miss every 4 KiB and a page walk that has to come from memory too once the weights
//! stream through the caches. Carved from 64 MiB slabs, each used from its first 2 MiB
//! boundary, all but the last stretch of a slab lies on 2 MiB pages.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::backend::Result;
use crate::error::ComputeError;

/// Bytes of a slab; a larger weight gets one of its own size.
const SLAB_BYTES: usize = 64 << 20;
/// The huge page size that slabs are laid out for.
const HUGE_PAGE: usize = 2 << 20;
/// Where each weight starts in its slab: a cache line, so panels keep the alignment a weight
/// of its own had from the allocator (16 bytes) and more.
const WEIGHT_ALIGN: usize = 64;

/// One zeroed allocation, freed when the last weight carved from it is dropped.
struct Slab {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the slab is plain bytes. Each `WeightBytes` reaches only its own range, written
// through `&mut WeightBytes` and read through `&WeightBytes`, so Rust's borrow rules on the
// weights keep the threads apart; the allocation itself is only freed by `Drop`.
unsafe impl Send for Slab {}
// SAFETY: as above.
unsafe impl Sync for Slab {}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: allocated in `new_slab` with this layout, and freed only here, once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The bytes of one weight: `len` bytes of a slab, zero until written.
pub(super) struct WeightBytes {
    slab: Arc<Slab>,
    offset: usize,
    len: usize,
}

impl WeightBytes {
    /// The bytes, to fill them (before the weight is shared).
    pub(super) fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: `offset + len` lies inside the slab (`Slabs::alloc`).
        unsafe { self.slab.ptr.as_ptr().add(self.offset) }
    }
}

impl Deref for WeightBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `offset..offset + len` lies inside the slab, which lives as long as `self`,
        // and no other `WeightBytes` reaches it (ranges are handed out once).
        unsafe { std::slice::from_raw_parts(self.slab.ptr.as_ptr().add(self.offset), self.len) }
    }
}

/// Hands out weight memory from the current slab, starting a new slab when a weight does not
/// fit in what is left of it.
pub(super) struct Slabs {
    /// The slab being filled and the offset of its first free byte.
    current: Option<(Arc<Slab>, usize)>,
    /// Bytes of a new slab ([`SLAB_BYTES`]; less in tests).
    slab_bytes: usize,
}

impl Default for Slabs {
    fn default() -> Self {
        Self {
            current: None,
            slab_bytes: SLAB_BYTES,
        }
    }
}

impl Slabs {
    /// `len` zero bytes for a weight.
    pub(super) fn alloc(&mut self, len: usize) -> Result<WeightBytes> {
        if let Some((slab, used)) = &mut self.current {
            if let Some(offset) = fit(slab, *used, len, WEIGHT_ALIGN) {
                *used = offset + len;
                let slab = Arc::clone(slab);
                return Ok(WeightBytes { slab, offset, len });
            }
        }
        // A new slab, used from its first 2 MiB boundary so that all of it but the end can lie
        // on huge pages (the untouched stretch before that costs no memory).
        let slab = new_slab(len.max(self.slab_bytes) + HUGE_PAGE)?;
        let offset = fit(&slab, 0, len, HUGE_PAGE).ok_or(ComputeError::Alloc {
            what: "weight",
            bytes: len as u128,
        })?;
        // A weight larger than a slab takes one of its own and leaves the current one to the
        // weights after it.
        if len <= self.slab_bytes || self.current.is_none() {
            self.current = Some((Arc::clone(&slab), offset + len));
        }
        Ok(WeightBytes { slab, offset, len })
    }
}

/// The offset in `slab` of the first address at or after offset `used` that is a multiple of
/// `align`, if `len` bytes fit there.
fn fit(slab: &Slab, used: usize, len: usize, align: usize) -> Option<usize> {
    let base = slab.ptr.as_ptr() as usize;
    let start = (base + used).next_multiple_of(align) - base;
    (start + len <= slab.layout.size()).then_some(start)
}

/// A zeroed slab of `bytes` bytes, its 2 MiB-aligned interior advised onto huge pages before
/// anything touches it.
fn new_slab(bytes: usize) -> Result<Arc<Slab>> {
    let err = || ComputeError::Alloc {
        what: "weight",
        bytes: bytes as u128,
    };
    // Alignment 1: the system allocator's `calloc`, which maps fresh zero pages for a large
    // size (untouched, so the advice below still applies); a larger alignment would zero the
    // pages by writing them.
    let layout = Layout::from_size_align(bytes.max(1), 1).map_err(|_| err())?;
    // SAFETY: the layout has a non-zero size.
    let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or_else(err)?;
    advise_huge_pages(ptr.as_ptr(), bytes);
    Ok(Arc::new(Slab { ptr, layout }))
}

/// Asks Linux to back the 2 MiB-aligned stretch of `len` bytes from `start` (untouched) with
/// 2 MiB pages where it can. Only a hint: without transparent huge pages nothing changes.
fn advise_huge_pages(start: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        let (first, end) = (
            (start as usize).next_multiple_of(HUGE_PAGE),
            start as usize + len,
        );
        if end >= first + HUGE_PAGE {
            let len = (end - first) / HUGE_PAGE * HUGE_PAGE;
            // SAFETY: the range lies inside the allocation, which nothing has touched yet;
            // madvise only changes how its pages are backed, not their contents.
            unsafe { libc::madvise(first as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights are zeroed, aligned, apart from each other, and keep their bytes while others
    /// are dropped around them; a slab starts at a 2 MiB boundary; a weight larger than a slab
    /// gets its own.
    #[test]
    fn weights_are_zeroed_aligned_disjoint_and_outlive_their_neighbours() {
        const SLAB: usize = 1 << 20;
        let mut slabs = Slabs {
            slab_bytes: SLAB,
            ..Slabs::default()
        };
        // A slab holds at least `SLAB` bytes past its first 2 MiB boundary; 4 MiB cannot fit.
        let sizes = [100, 5000, 300_000, 3, 4 << 20, 64, 1];
        let mut weights: Vec<WeightBytes> =
            sizes.iter().map(|&n| slabs.alloc(n).unwrap()).collect();
        for (i, w) in weights.iter_mut().enumerate() {
            assert!(w.iter().all(|&b| b == 0), "weight {i} is not zeroed");
            assert_eq!(w.as_mut_ptr() as usize % WEIGHT_ALIGN, 0, "weight {i}");
            // SAFETY: `len` bytes from the weight's own pointer.
            unsafe { std::ptr::write_bytes(w.as_mut_ptr(), i as u8 + 1, w.len) };
        }
        let ranges: Vec<(usize, usize)> = weights
            .iter()
            .map(|w| (w.as_ptr() as usize, w.as_ptr() as usize + w.len()))
            .collect();
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:?} and {b:?} overlap");
            }
        }
        // A slab's first weight starts at its first 2 MiB boundary.
        assert_eq!(weights[0].as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(weights[4].as_ptr() as usize % HUGE_PAGE, 0);
        // The weight larger than a slab did not end the slab being filled.
        assert!(Arc::ptr_eq(&weights[3].slab, &weights[5].slab));
        assert!(!Arc::ptr_eq(&weights[4].slab, &weights[5].slab));
        let last = weights.pop().unwrap();
        weights.drain(..3);
        assert!(last.iter().all(|&b| b == 7));
        assert!(weights
            .iter()
            .zip(4u8..)
            .all(|(w, v)| w.iter().all(|&b| b == v)));
    }
}
