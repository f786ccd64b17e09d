//! Closures the library calls back: progress and CRIU's notifications. Neither may unwind into C
//! (undefined behaviour), so each runs under catch_unwind and a panic becomes an error of the call.
use std::any::Any;
use std::cell::RefCell;
use std::ops::ControlFlow;
use std::os::raw::{c_int, c_ulonglong, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use nucleus_checkpoint_sys as sys;

use crate::error::{Error, Result};
use crate::types::Notification;

pub(crate) fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a payload that is not a string".to_owned()
    }
}

/// Drops a panic's payload without letting a panicking Drop unwind into C (such a payload leaks).
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// One call's progress closure and, once it has panicked, the panic (then it is not called again).
pub(crate) struct Progress<'a> {
    f: &'a mut dyn FnMut(u64),
    panic: Option<String>,
}

impl<'a> Progress<'a> {
    pub(crate) fn new(f: &'a mut dyn FnMut(u64)) -> Self {
        Progress { f, panic: None }
    }

    pub(crate) fn user(&mut self) -> *mut c_void {
        self as *mut Progress<'a> as *mut c_void
    }

    pub(crate) fn callback() -> sys::nc_progress_fn {
        Some(progress_trampoline)
    }

    /// The call's result, or the panic as its error.
    pub(crate) fn finish(self, outcome: Result<()>) -> Result<()> {
        match self.panic {
            Some(text) => Err(Error::panicked("progress callback", &text, &outcome)),
            None => outcome,
        }
    }
}

unsafe extern "C" fn progress_trampoline(bytes_hashed: c_ulonglong, user: *mut c_void) {
    if user.is_null() {
        return;
    }
    // SAFETY: user is the Progress of the call running on this thread (the library calls progress
    // on the calling thread), which outlives the call.
    let progress = &mut *(user as *mut Progress<'_>);
    if progress.panic.is_some() {
        return;
    }
    let f = &mut progress.f;
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (*f)(bytes_hashed as u64))) {
        progress.panic = Some(panic_text(&*payload));
        drop_payload(payload);
    }
}

/// A notification closure as Options keeps it.
pub(crate) type NotifyFn = dyn Fn(Notification, libc::pid_t) -> ControlFlow<()> + Send + Sync + 'static;

thread_local! {
    /// The panic of a notification closure during the dump or restore running on this thread (the
    /// library calls it on the calling thread): one options handle may serve calls on several
    /// threads at once, so the panic is kept with the call, not with the handle.
    static NOTIFY_PANIC: RefCell<Option<String>> = RefCell::new(None);
}

pub(crate) unsafe extern "C" fn notify_trampoline(
    what: sys::nc_notification,
    pid: sys::pid_t,
    user: *mut c_void,
) -> c_int {
    if user.is_null() {
        return 0;
    }
    // SAFETY: user is the Box<NotifyFn> the Options owns, alive while a call reads the options.
    let f = &*(user as *const Box<NotifyFn>);
    match catch_unwind(AssertUnwindSafe(|| f(Notification(what), pid))) {
        Ok(ControlFlow::Continue(())) => 0,
        Ok(ControlFlow::Break(())) => 1,
        Err(payload) => {
            let text = panic_text(&*payload);
            drop_payload(payload);
            NOTIFY_PANIC.with(|slot| {
                let mut slot = slot.borrow_mut();
                if slot.is_none() {
                    *slot = Some(text);
                }
            });
            1 // stops CRIU: the dump fails (the tree runs on), the restore fails
        }
    }
}

/// Runs a dump or restore; a notification closure's panic during it becomes its error.
pub(crate) fn with_notify_panics(f: impl FnOnce() -> Result<()>) -> Result<()> {
    // Saved and put back: a closure may itself run a dump on another runtime.
    let outer = NOTIFY_PANIC.with(|slot| slot.borrow_mut().take());
    let outcome = f();
    let panic = NOTIFY_PANIC.with(|slot| std::mem::replace(&mut *slot.borrow_mut(), outer));
    match panic {
        Some(text) => Err(Error::panicked("notify callback", &text, &outcome)),
        None => outcome,
    }
}
