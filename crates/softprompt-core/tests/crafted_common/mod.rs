//! Shared by the `crafted_*` tests: an allocator that records the largest single
//! allocation made on the current thread, and `expect_err`, which runs one reader on
//! one crafted input and checks the contract every case must meet: an error (no panic,
//! no success), on one line, naming the file and the problem, made without any large
//! allocation.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use softprompt_core::Error;

/// Counts, per thread, the largest allocation (or reallocation) requested.
struct PeakAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: thread-local storage may be gone while a thread shuts down.
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

// SAFETY: every method forwards to the system allocator with the arguments it was given
// (noting a size never allocates: the thread-local is a plain `Cell`), so the GlobalAlloc
// contract holds exactly as it does for `System`.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's `layout` obligations are passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; the caller's `new_size` obligations
        // are passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

/// Largest single allocation a reader may make on a small crafted file.
pub const SMALL_ALLOC_LIMIT: usize = 4 << 20;

/// Run `f` and return its result and the largest allocation it made on this thread.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(|l| l.get()))
}

/// `f` must fail with one error, on one line, whose message names `file` and contains
/// every string of `needles`, and must not allocate more than `alloc_limit` bytes at once.
/// Returns the error for further checks.
#[track_caller]
pub fn expect_err_with_limit<T: std::fmt::Debug>(
    file: &Path,
    needles: &[&str],
    alloc_limit: usize,
    f: impl FnOnce() -> Result<T, Error>,
) -> Error {
    let (res, largest) = measure(f);
    let e = match res {
        Ok(v) => panic!("{}: expected an error, got {v:?}", file.display()),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(
        msg.contains(&*file.to_string_lossy()),
        "message does not name {}: {msg}",
        file.display()
    );
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    assert!(
        largest <= alloc_limit,
        "{}: largest allocation {largest} bytes (limit {alloc_limit}) for: {msg}",
        file.display()
    );
    e
}

/// [`expect_err_with_limit`] with [`SMALL_ALLOC_LIMIT`].
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(
    file: &Path,
    needles: &[&str],
    f: impl FnOnce() -> Result<T, Error>,
) -> Error {
    expect_err_with_limit(file, needles, SMALL_ALLOC_LIMIT, f)
}
