//! The safe API against the installed library and the real CRIU, as root: a real process tree
//! (examples/counter) checkpointed, a tampered copy refused with Status::INTEGRITY, the tree
//! restored and counting on; CRIU's own failures with its exit code and lines; 32 threads x 200
//! failing calls each getting exactly their own message; callbacks whose panics become errors;
//! and the 0.3 calls: a tree dumped with Ed25519 on a "signer" key store, moved as transfer streams
//! to a "receiver" key store that holds only the public key and restored there, a stream with a
//! flipped byte refused with nothing left, pre-dumps; a chain of two layers made of a real dump
//! moved as one chain stream, whole or without the layer a receiver holds, and restored from the
//! new store, and bad chain streams refused; registry arguments; and migrations of a
//! counter in a PID namespace of its own, the receiver on one thread and the source on another:
//! one over loopback TCP, signed with Ed25519 and pinned to the receiver's key, that the receiver
//! restores; over a socket pair, ones the source refuses (a receiver it does not trust, or not the
//! one given) or a receiver trusting no key refuses, so that the source resumes; and one cut right
//! after the commit, which runs on the receiver (`source_told` false) and stays stopped at the
//! source; and one post-copy, whose memory follows the tree through the page stream.
//!
//! Run by tests/rust_binding_test.sh, which sets NC_RUST_TEST_DIR (a private folder under
//! /var/tmp/nucleus-checkpoint-tests), NUCLEUS_CHECKPOINT_HMAC_KEY_FILE (in a 0700 folder) and
//! NC_TEST_COUNTER (the counter program).
use std::env;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nucleus_checkpoint::{
    export, export_chain, import, import_chain, keygen, keygen_ed25519, key_path, public_key, pull_image, push_image,
    read_metadata, sign_as, sign_with_progress, signature_format_of, signer_of, trust_key, verify,
    verify_with_progress, Compression, Error, Notification, Options, ReceivedMigration, RestoreMode, Runtime,
    SignatureFormat, Signing, Status,
};

/// The tests reap as a subreaper with waitpid(-1): one at a time, so none reaps another's child.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn base() -> PathBuf {
    PathBuf::from(env::var_os("NC_RUST_TEST_DIR").expect("NC_RUST_TEST_DIR is set by tests/rust_binding_test.sh"))
}

/// A new folder under the test's base, removed first if a previous run left it.
fn fresh(name: &str) -> PathBuf {
    let dir = base().join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn become_subreaper() {
    // SAFETY: plain prctl.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
}

/// Reaps every exited child (restored trees are reparented to this subreaper).
fn reap() {
    // SAFETY: plain waitpid.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Running (not a zombie, not gone).
fn alive(pid: i32) -> bool {
    state_of(pid).map_or(false, |state| state != 'Z')
}

/// Its state letter in /proc/PID/stat (T: stopped), None once it is gone.
fn state_of(pid: i32) -> Option<char> {
    fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?.rsplit(") ").next()?.chars().next()
}

fn wait_until(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    done()
}

fn count_of(file: &Path) -> i64 {
    fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(-1)
}

/// The project's counter: a parent and its child in a session of their own, each counting in a
/// file of `dir` every 50 ms; stdio on /dev/null, or stdout on `stdout`.
fn start_counter(dir: &Path, stdout: Option<fs::File>) -> Child {
    let counter = env::var_os("NC_TEST_COUNTER").expect("NC_TEST_COUNTER names examples/counter");
    let child = Command::new(counter)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(stdout.map_or_else(Stdio::null, Stdio::from))
        .stderr(Stdio::null())
        .spawn()
        .expect("the counter starts");
    assert!(wait_until(10, || count_of(&dir.join("parent")) >= 3 && count_of(&dir.join("child")) >= 3));
    child
}

/// Kills the counter's process group when dropped, so a failing test leaves nothing running.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain kill of the counter's own process group (it made its own session).
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
        reap();
    }
}

/// Waits for the counter a dump killed, and reaps its child too: a zombie holds a PID the restore
/// needs.
fn wait_dumped(child: &mut Child) {
    let pid = child.id() as i32;
    child.wait().unwrap();
    assert!(wait_until(10, || {
        reap();
        !alive(pid)
    }));
}

/// Kills the tree rooted at `pid` (its own process group) and reaps it.
fn kill_tree(pid: i32) {
    // SAFETY: plain kill of the counter's own process group.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    assert!(wait_until(10, || {
        reap();
        !alive(pid)
    }));
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o700)).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Flips one byte in the middle of the checkpoint's first images/pages-*.img; returns its name.
fn flip_page_byte(checkpoint: &Path) -> String {
    let mut pages: Vec<PathBuf> = fs::read_dir(checkpoint.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("pages-") && name.ends_with(".img") && fs::metadata(p).unwrap().len() > 0
        })
        .collect();
    pages.sort();
    let page = pages.first().expect("the dump wrote pages");
    let mut f = fs::OpenOptions::new().read(true).write(true).open(page).unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    byte[0] ^= 0xff;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&byte).unwrap();
    page.file_name().unwrap().to_string_lossy().into_owned()
}

fn expect_err<T: std::fmt::Debug>(r: nucleus_checkpoint::Result<T>, status: Status, text: &str) -> Error {
    let e = r.expect_err("the call must fail");
    assert_eq!(e.status(), status, "{}", e);
    assert!(e.message().contains(text), "{:?} does not say {:?}", e.message(), text);
    assert!(e.to_string().starts_with(status.name()));
    e
}

#[test]
fn checkpoint_tamper_restore_with_real_criu() {
    let _serial = serial();
    become_subreaper();
    let work = fresh("round-trip");
    let counter_dir = work.join("counter");
    fs::create_dir(&counter_dir).unwrap();
    let checkpoint = work.join("checkpoint");

    let mut rt = Runtime::new().expect("a runtime with the installed CRIU");
    let v = rt.criu_version().unwrap();
    assert!(v.major > 4 || (v.major == 4 && v.minor >= 1), "{:?}", v);
    rt.criu_check().unwrap();

    let mut child = start_counter(&counter_dir, None);
    let pid = child.id() as i32;
    let _cleanup = KillOnDrop(pid);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut opts = Options::new().unwrap();
    let seen_in = Arc::clone(&seen);
    opts.add_annotation("io.example.binding", "rust")
        .unwrap()
        .log_level(4)
        .unwrap()
        .notify(move |what, _pid| {
            seen_in.lock().unwrap().push(what);
            ControlFlow::Continue(())
        })
        .unwrap();
    rt.checkpoint("rust-counter", pid, &checkpoint, Some(&opts)).expect("the dump");
    // Killed once signed: reap it (and its child), or the zombies keep the PIDs the restore needs.
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(wait_until(10, || {
        reap();
        !alive(pid)
    }));
    let notified = seen.lock().unwrap().clone();
    assert!(notified.contains(&Notification::PRE_DUMP) && notified.contains(&Notification::POST_DUMP), "{:?}", notified);
    let at_dump = count_of(&counter_dir.join("parent"));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(count_of(&counter_dir.join("parent")), at_dump, "the dumped tree was killed");

    verify(&checkpoint).expect("the checkpoint verifies");
    assert_eq!(signature_format_of(&checkpoint).unwrap(), SignatureFormat::MANIFEST);
    let metadata = read_metadata(&checkpoint).unwrap();
    assert!(metadata.contains("io.example.binding") && metadata.contains("rust-counter"), "{}", metadata);
    let mut totals = Vec::new();
    verify_with_progress(&checkpoint, |bytes| totals.push(bytes)).unwrap();
    assert!(!totals.is_empty() && totals.windows(2).all(|w| w[0] <= w[1]) && *totals.last().unwrap() > 0);

    // A tampered copy: refused by verify, and by restore (streamed, and verified whole first);
    // nothing of it runs.
    let bad = work.join("tampered");
    copy_tree(&checkpoint, &bad);
    verify(&bad).expect("an untouched copy verifies");
    let page = flip_page_byte(&bad);
    let e = expect_err(verify(&bad), Status::INTEGRITY, &page);
    assert_eq!(e.criu_exit_code(), None);
    expect_err(rt.restore(&bad, None), Status::INTEGRITY, "");
    let mut whole = Options::new().unwrap();
    whole.image_stream(false).unwrap();
    expect_err(rt.restore(&bad, Some(&whole)), Status::INTEGRITY, &page);
    // What CRIU had made of it was killed before it ran an instruction: it never counted.
    assert!(
        wait_until(10, || {
            reap();
            !alive(pid)
        }),
        "nothing of the tampered checkpoint runs"
    );
    assert_eq!(count_of(&counter_dir.join("parent")), at_dump);

    // Another container's checkpoint is refused.
    let mut other = Options::new().unwrap();
    other.expected_container_id(Some("someone-else")).unwrap();
    expect_err(rt.restore(&checkpoint, Some(&other)), Status::INTEGRITY, "someone-else");

    // The real one comes back with its PID and counts on from where it stopped.
    let mut restore_opts = Options::new().unwrap();
    restore_opts.expected_container_id(Some("rust-counter")).unwrap().restore_mode(RestoreMode::DETACHED).unwrap();
    let tree = rt.restore(&checkpoint, Some(&restore_opts)).expect("the restore");
    assert_eq!(tree.pid(), pid);
    assert!(tree.pidfd().as_raw_fd() >= 0);
    assert!(alive(pid));
    assert!(
        wait_until(10, || count_of(&counter_dir.join("parent")) > at_dump + 5),
        "counting on: {} at the dump, {} now",
        at_dump,
        count_of(&counter_dir.join("parent"))
    );
    tree.send_signal(libc::SIGKILL).unwrap();
    kill_tree(pid);
    assert!(tree.send_signal(0).is_err() || !alive(pid));
    println!("round trip: PID {} dumped at {}, restored and counted on; a flipped byte in {} refused", pid, at_dump, page);
}

#[test]
fn criu_failure_carries_exit_code_and_lines() {
    let _serial = serial();
    become_subreaper();
    let work = fresh("criu-failure");
    let counter_dir = work.join("counter");
    fs::create_dir(&counter_dir).unwrap();
    let out = work.join("stdout.txt");
    let checkpoint = work.join("checkpoint");
    let mut child = start_counter(&counter_dir, Some(fs::File::create(&out).unwrap()));
    let pid = child.id() as i32;
    let _cleanup = KillOnDrop(pid);
    let mut rt = Runtime::new().unwrap();
    rt.checkpoint("rust-file-gone", pid, &checkpoint, None).unwrap();
    wait_dumped(&mut child);
    fs::remove_file(&out).unwrap(); // a file the tree held open is gone: CRIU cannot reopen it
    let e = expect_err(rt.restore(&checkpoint, None), Status::CRIU, "Can't open file");
    assert_eq!(e.criu_exit_code(), Some(1), "{:?}", e);
    assert!(e.criu_lines().contains("Can't open file") && e.criu_lines().ends_with('\n'), "{:?}", e.criu_lines());
    // What CRIU had made of the tree, it killed: nothing runs on.
    assert!(wait_until(10, || {
        reap();
        !alive(pid)
    }));
}

#[test]
fn each_thread_gets_its_own_error() {
    let _serial = serial();
    const THREADS: usize = 32;
    const CALLS: usize = 1000;
    let root = fresh("threads");
    let dir_of = |t: usize, c: usize| root.join(format!("thread-{:02}/no-checkpoint-{:04}", t, c));
    let reference_path = dir_of(99, 9999);
    let reference = expect_err(verify(&reference_path), Status::NOT_FOUND, &reference_path.to_string_lossy());
    let reference_path = reference_path.to_string_lossy().into_owned();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            let reference = reference.message().to_owned();
            let reference_path = reference_path.clone();
            let root = root.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut wrong = Vec::new();
                let mut last = None;
                for c in 0..CALLS {
                    let dir = root.join(format!("thread-{:02}/no-checkpoint-{:04}", t, c));
                    let path = dir.to_string_lossy().into_owned();
                    let want = reference.replace(&reference_path, &path);
                    match verify(&dir) {
                        Err(e) if e.status() == Status::NOT_FOUND && e.message() == want => last = Some((path, e)),
                        other => wrong.push(format!("{}: {:?}", path, other)),
                    }
                }
                (wrong, last)
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for (t, h) in handles.into_iter().enumerate() {
        let (w, last) = h.join().expect("no thread panicked");
        wrong.extend(w);
        // Read here, on a thread that made none of its calls.
        let (path, e) = last.expect("each thread's last call failed as it should");
        assert!(path.contains(&format!("thread-{:02}/no-checkpoint-{:04}", t, CALLS - 1)));
        assert!(e.message().contains(&path), "{:?}", e);
    }
    assert!(wrong.is_empty(), "{} of {} calls got a message not their own, e.g. {}", wrong.len(), THREADS * CALLS, wrong[0]);
    println!("threads: {} threads x {} calls, each message its own", THREADS, CALLS);
}

#[test]
fn arguments_statuses_and_option_errors() {
    let _serial = serial();
    // A NUL byte inside is refused before any C call.
    expect_err(verify("/var/tmp/a\0b"), Status::INVALID, "NUL byte");
    expect_err(Runtime::with_criu("/usr/local/sbin/cr\0iu"), Status::INVALID, "NUL byte");
    let mut opts = Options::new().unwrap();
    expect_err(opts.add_annotation("na\0me", "v"), Status::INVALID, "NUL byte");
    // Non-UTF-8 paths pass through as bytes.
    use std::os::unix::ffi::OsStrExt;
    let odd = base().join(std::ffi::OsStr::from_bytes(b"no-such-\xff-dir"));
    expect_err(verify(&odd), Status::NOT_FOUND, "no-such-");
    expect_err(verify(""), Status::INVALID, "dir is NULL or empty");
    expect_err(Runtime::with_criu("/nonexistent/criu"), Status::NOT_FOUND, "/nonexistent/criu");

    // The values are the ABI's; a value the crate does not know is an ordinary one.
    let all = [
        (Status::OK, 0, "NC_OK"),
        (Status::INVALID, 1, "NC_E_INVALID"),
        (Status::PERMISSION, 2, "NC_E_PERMISSION"),
        (Status::NOT_FOUND, 3, "NC_E_NOT_FOUND"),
        (Status::STATE, 4, "NC_E_STATE"),
        (Status::CRIU, 5, "NC_E_CRIU"),
        (Status::INTEGRITY, 6, "NC_E_INTEGRITY"),
        (Status::IO, 7, "NC_E_IO"),
        (Status::KEY, 8, "NC_E_KEY"),
        (Status::NOMEM, 9, "NC_E_NOMEM"),
        (Status::INTERNAL, 10, "NC_E_INTERNAL"),
        (Status::UNSUPPORTED, 11, "NC_E_UNSUPPORTED"),
        (Status::UNCONFIRMED, 12, "NC_E_UNCONFIRMED"),
    ];
    for (status, value, name) in all {
        assert_eq!((status.0, status.name()), (value, name));
    }
    assert_eq!(Status(42).name(), "NC_E_UNKNOWN");
    assert_eq!(format!("{:?}", Notification(99)), "Notification(99)");
    assert_eq!(SignatureFormat(3), SignatureFormat::MANIFEST);

    // A setter's refusal is the handle's own error; a good value chains.
    expect_err(opts.log_level(9), Status::INVALID, "0 to 4");
    expect_err(opts.add_join_ns("pid:1"), Status::INVALID, "--join-ns");
    expect_err(opts.root(Some(Path::new("rootfs"))), Status::INVALID, "absolute");
    expect_err(opts.signature_format(SignatureFormat(0)), Status::INVALID, "");
    opts.log_level(2)
        .unwrap()
        .tcp_established(true)
        .unwrap()
        .root(Some(Path::new("/var/lib/c/rootfs")))
        .unwrap()
        .root(None)
        .unwrap()
        .file_validation(Some("filesize"))
        .unwrap()
        .add_runtime_file("config.json", b"{}")
        .unwrap()
        .reply_timeout_ms(0)
        .unwrap();
    let (r, w) = {
        let mut fds = [0; 2];
        // SAFETY: a plain pipe; both ends owned below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        use std::os::unix::io::{FromRawFd, OwnedFd};
        // SAFETY: new descriptors of ours.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    };
    use std::os::unix::io::AsFd;
    opts.add_inherit_fd(w.as_fd(), "stdout").unwrap();
    drop((r, w));

    // The key store is the test's own.
    let key = key_path().unwrap();
    assert_eq!(Some(key.as_os_str()), env::var_os("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE").as_deref());
    keygen().unwrap();
    assert!(!keygen().unwrap(), "made already");
    assert!(!nucleus_checkpoint::version().is_empty());
}

#[test]
fn callback_panics_become_errors() {
    let _serial = serial();
    become_subreaper();
    let dir = fresh("progress");
    fs::create_dir(dir.join("images")).unwrap();
    fs::write(dir.join("images/pages-1.img"), vec![7u8; 3 << 20]).unwrap();
    // Progress: counted, then a panic caught at the FFI boundary and reported.
    let mut calls = 0;
    sign_with_progress(&dir, SignatureFormat::SEED, |_| calls += 1).unwrap();
    assert!(calls >= 3, "{} progress calls for 3 MiB in 1 MiB reads", calls);
    let e = sign_with_progress(&dir, SignatureFormat::CHUNKED, |_| panic!("progress boom")).unwrap_err();
    assert!(e.is_panic() && e.status() == Status::INTERNAL && e.message().contains("progress boom"), "{:?}", e);
    let e = verify_with_progress(&dir, |_| panic!("verify boom")).unwrap_err();
    assert!(e.is_panic() && e.message().contains("verify boom"), "{:?}", e);
    verify(&dir).expect("the panic stopped nothing but the closure");

    // Notify: a panic at pre-dump stops CRIU; the dump fails and the tree runs on.
    let counter_dir = dir.join("counter");
    fs::create_dir(&counter_dir).unwrap();
    let mut child = start_counter(&counter_dir, None);
    let pid = child.id() as i32;
    let _cleanup = KillOnDrop(pid);
    let mut opts = Options::new().unwrap();
    opts.notify(|what, _| {
        if what == Notification::PRE_DUMP {
            panic!("notify boom");
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    let mut rt = Runtime::new().unwrap();
    let e = rt.checkpoint("rust-panic", pid, dir.join("checkpoint"), Some(&opts)).unwrap_err();
    assert!(e.is_panic() && e.message().contains("notify boom"), "{:?}", e);
    let before = count_of(&counter_dir.join("parent"));
    assert!(wait_until(10, || count_of(&counter_dir.join("parent")) > before + 3), "the tree runs on");
    // Break stops it the same way, without a panic.
    opts.notify(|what, _| if what == Notification::PRE_DUMP { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
        .unwrap();
    let e = rt.checkpoint("rust-break", pid, dir.join("checkpoint-2"), Some(&opts)).unwrap_err();
    assert!(!e.is_panic() && e.status() != Status::OK, "{:?}", e);
    assert!(alive(pid));
    kill_tree(pid);
    let _ = child.wait();
}

/// Points the library's key store at a folder's files (it reads the environment at each call),
/// and back when dropped. Tests run one at a time, so no other thread reads the environment.
struct KeyStoreAt(Vec<(&'static str, Option<std::ffi::OsString>)>);

impl KeyStoreAt {
    fn new(folder: &Path) -> KeyStoreAt {
        let vars = [
            ("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE", "hmac.key"),
            ("NUCLEUS_CHECKPOINT_ED25519_KEY_FILE", "ed25519.key"),
            ("NUCLEUS_CHECKPOINT_TRUSTED_KEYS", "trusted"),
        ];
        let saved = vars.iter().map(|(name, _)| (*name, env::var_os(name))).collect();
        for (name, file) in vars {
            env::set_var(name, folder.join(file));
        }
        KeyStoreAt(saved)
    }
}

impl Drop for KeyStoreAt {
    fn drop(&mut self) {
        for (name, value) in &self.0 {
            match value {
                Some(v) => env::set_var(name, v),
                None => env::remove_var(name),
            }
        }
    }
}

/// A folder with one 3 MiB image, signed as `format` and `signing` say.
fn small_checkpoint(dir: &Path, format: SignatureFormat, signing: Signing) {
    fs::create_dir_all(dir.join("images")).unwrap();
    fs::write(dir.join("images/pages-1.img"), "pages of memory ".repeat(3 << 16)).unwrap();
    sign_as(dir, format, signing).unwrap();
}

/// What a refused import left beside `dir` under a name holding its own.
fn left_beside(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&name))
        .collect()
}

#[test]
fn ed25519_transfer_restore_with_real_criu() {
    let _serial = serial();
    become_subreaper();
    let work = fresh("ed25519");
    let (signer, receiver) = (work.join("signer"), work.join("receiver"));
    for dir in [&signer, &receiver] {
        fs::create_dir(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
    let signer_keys = KeyStoreAt::new(&signer);
    expect_err(public_key(), Status::KEY, "");
    assert!(keygen_ed25519().unwrap(), "created");
    assert!(!keygen_ed25519().unwrap(), "made already");
    let key = public_key().unwrap();
    assert!(key.text.starts_with("nucleus-checkpoint-ed25519-public 1\n") && key.key_id.len() == 32, "{:?}", key);
    let chunked = work.join("chunked");
    small_checkpoint(&chunked, SignatureFormat::CHUNKED, Signing::ED25519);
    expect_err(sign_as(&chunked, SignatureFormat::SEED, Signing::ED25519), Status::INVALID, "HMAC-only");
    assert_eq!(signer_of(&chunked).unwrap(), (Signing::ED25519, Some(key.key_id.clone())));
    let hmac_signed = work.join("hmac-signed");
    small_checkpoint(&hmac_signed, SignatureFormat::MANIFEST, Signing::HMAC);
    assert_eq!(signer_of(&hmac_signed).unwrap(), (Signing::HMAC, None));

    // The real tree, dumped and signed with the signer's Ed25519 key.
    let counter_dir = work.join("counter");
    fs::create_dir(&counter_dir).unwrap();
    let mut child = start_counter(&counter_dir, None);
    let pid = child.id() as i32;
    let _cleanup = KillOnDrop(pid);
    let checkpoint = work.join("checkpoint");
    let mut rt = Runtime::new().unwrap();
    let mut opts = Options::new().unwrap();
    expect_err(opts.signing(Signing(0)), Status::INVALID, "");
    opts.signing(Signing::ED25519).unwrap();
    rt.checkpoint("rust-ed25519", pid, &checkpoint, Some(&opts)).expect("the Ed25519 dump");
    wait_dumped(&mut child);
    let at_dump = count_of(&counter_dir.join("parent"));
    assert_eq!(signer_of(&checkpoint).unwrap(), (Signing::ED25519, Some(key.key_id.clone())));
    verify(&checkpoint).expect("the signer trusts its own key");

    // Streams into files, plain and zstd; only the manifest format is exported.
    let (plain, zstd) = (work.join("plain.stream"), work.join("zstd.stream"));
    export(&checkpoint, fs::File::create(&plain).unwrap(), None).unwrap();
    let mut compressed = Options::new().unwrap();
    expect_err(compressed.compression(Compression(2)), Status::INVALID, "unknown compression 2");
    compressed.compression(Compression::ZSTD).unwrap();
    export(&checkpoint, fs::File::create(&zstd).unwrap(), Some(&compressed)).unwrap();
    let (plain_size, zstd_size) = (fs::metadata(&plain).unwrap().len(), fs::metadata(&zstd).unwrap().len());
    assert!(zstd_size < plain_size, "zstd {} bytes, plain {}", zstd_size, plain_size);
    let refused = fs::File::create(work.join("refused.stream")).unwrap();
    expect_err(export(&chunked, &refused, None), Status::INVALID, "sign it in format 3");
    assert_eq!(refused.metadata().unwrap().len(), 0, "a refused export wrote nothing");

    // The receiver: a key store of its own, with no key, trusting nobody yet.
    drop(signer_keys);
    let _receiver_keys = KeyStoreAt::new(&receiver);
    expect_err(verify(&checkpoint), Status::INTEGRITY, &key.key_id);
    let untrusted = work.join("untrusted-import");
    expect_err(import(fs::File::open(&plain).unwrap(), &untrusted, None), Status::INTEGRITY, "");
    assert!(left_beside(&untrusted).is_empty(), "{:?}", left_beside(&untrusted));
    expect_err(trust_key("nucleus-checkpoint-ed25519-public 1\nabc\n"), Status::KEY, "");
    trust_key(&key.text).unwrap();
    verify(&checkpoint).expect("verifies with only the public key trusted");
    // The signer's HMAC signatures stay its own: without the signer's HMAC key they never verify.
    expect_err(verify(&hmac_signed), Status::KEY, "no checkpoint HMAC key");
    assert!(keygen().unwrap(), "the receiver's own HMAC key");
    expect_err(verify(&hmac_signed), Status::INTEGRITY, "");

    // Through a socket pair (zstd, exported on a thread), a pipe, and from the file.
    let via_socket = work.join("via-socket");
    let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
    let source = checkpoint.clone();
    let sender = thread::spawn(move || export(&source, writer, Some(&compressed)));
    import(&reader, &via_socket, None).expect("import from the socket");
    drop(reader);
    sender.join().unwrap().expect("export into the socket");
    let via_pipe = work.join("via-pipe");
    let (r, w) = {
        let mut fds = [0; 2];
        // SAFETY: a plain pipe; both ends owned below.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        use std::os::unix::io::{FromRawFd, OwnedFd};
        // SAFETY: new descriptors of ours.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    };
    let source = checkpoint.clone();
    let sender = thread::spawn(move || export(&source, w, None));
    import(&r, &via_pipe, None).expect("import from the pipe");
    sender.join().unwrap().expect("export into the pipe");
    let via_file = work.join("via-file");
    import(fs::File::open(&zstd).unwrap(), &via_file, None).expect("import from the zstd file");
    for dir in [&via_socket, &via_pipe, &via_file] {
        verify(dir).unwrap();
        assert_eq!(signer_of(dir).unwrap(), (Signing::ED25519, Some(key.key_id.clone())));
    }

    // One byte flipped in the middle of the stream: refused, nothing left behind.
    let mut data = fs::read(&plain).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0x01;
    let flipped_stream = work.join("flipped.stream");
    fs::write(&flipped_stream, data).unwrap();
    let flipped = work.join("flipped-import");
    let e = expect_err(import(fs::File::open(&flipped_stream).unwrap(), &flipped, None), Status::INTEGRITY, "");
    assert!(!flipped.exists() && left_beside(&flipped).is_empty(), "{:?}", left_beside(&flipped));

    // The receiver restores the imported copy; the tree counts on from where it stopped.
    let mut restore_opts = Options::new().unwrap();
    restore_opts.expected_container_id(Some("rust-ed25519")).unwrap();
    let tree = rt.restore(&via_socket, Some(&restore_opts)).expect("the restore on the receiver");
    assert_eq!(tree.pid(), pid);
    assert!(
        wait_until(10, || count_of(&counter_dir.join("parent")) > at_dump + 3),
        "counting on: {} at the dump, {} now",
        at_dump,
        count_of(&counter_dir.join("parent"))
    );
    kill_tree(pid);
    println!(
        "ed25519: key {}, streams plain {} and zstd {} bytes; a flipped byte: {}",
        key.key_id, plain_size, zstd_size, e
    );
}

/// Whether this kernel tracks changed memory (soft-dirty), as CRIU sees it.
fn tracks_memory() -> bool {
    let criu = env::var_os("NC_TEST_CRIU").map(PathBuf::from).or_else(|| {
        ["/usr/sbin/criu", "/usr/bin/criu", "/usr/local/sbin/criu"].iter().map(PathBuf::from).find(|p| p.exists())
    });
    let criu = criu.expect("a criu to probe");
    Command::new(criu)
        .args(["check", "--feature", "mem_dirty_track"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(false, |s| s.success())
}

#[test]
fn predump_and_registry_arguments() {
    let _serial = serial();
    become_subreaper();
    let work = fresh("predump");
    let counter_dir = work.join("counter");
    fs::create_dir(&counter_dir).unwrap();
    let mut child = start_counter(&counter_dir, None);
    let pid = child.id() as i32;
    let _cleanup = KillOnDrop(pid);
    let (p0, last) = (work.join("p0"), work.join("final"));
    let mut rt = Runtime::new().unwrap();

    // Auto-dedup without a parent has nothing to take from: refused before anything runs.
    let mut dedup = Options::new().unwrap();
    dedup.auto_dedup(true).unwrap();
    expect_err(rt.checkpoint("rust-chain", pid, &last, Some(&dedup)), Status::INVALID, "auto-dedup needs a parent");
    // A parent that is not a sibling folder: refused before anything runs.
    let mut elsewhere = Options::new().unwrap();
    elsewhere.parent(Some(Path::new("../p0"))).unwrap().leave_running(true).unwrap();
    expect_err(rt.checkpoint("rust-chain", pid, &last, Some(&elsewhere)), Status::INVALID, "must be a folder beside");
    assert!(!last.exists());
    let outcome = rt.predump("rust-chain", pid, &p0, None);
    if tracks_memory() {
        outcome.expect("the pre-dump");
        dedup.parent(Some(&p0)).unwrap();
        rt.checkpoint("rust-chain", pid, &last, Some(&dedup)).expect("the dump on the pre-dump");
        wait_dumped(&mut child);
        let at_dump = count_of(&counter_dir.join("parent"));
        verify(&last).expect("the chain verifies");
        expect_err(rt.restore(&p0, None), Status::INVALID, "");
        let tree = rt.restore(&last, None).expect("the chain restores");
        assert_eq!(tree.pid(), pid);
        assert!(wait_until(10, || count_of(&counter_dir.join("parent")) > at_dump + 3));
        kill_tree(pid);
    } else {
        // This kernel cannot: the clear refusal, nothing made, and the tree runs on.
        let e = expect_err(outcome, Status::CRIU, "CONFIG_MEM_SOFT_DIRTY");
        assert!(!p0.exists());
        let before = count_of(&counter_dir.join("parent"));
        assert!(wait_until(10, || count_of(&counter_dir.join("parent")) > before + 2), "the tree runs on");
        println!("predump: no soft-dirty tracking here: {}", e);
    }

    // Registry images: the arguments, and a registry that is not there (the round trip is
    // tests/registry_test.py's).
    let pulled = work.join("pulled");
    let e = pull_image("no-host-here", &pulled, None).unwrap_err();
    assert_ne!(e.status(), Status::UNSUPPORTED, "this library was built without registry images: {}", e);
    expect_err(Err::<(), _>(e), Status::INVALID, "HOST[:PORT]/NAME[:TAG]");
    expect_err(push_image(&work, "", None), Status::INVALID, "");
    expect_err(push_image(&work, "a\0b", None), Status::INVALID, "NUL byte");
    let mut insecure = Options::new().unwrap();
    insecure.insecure_registry(true).unwrap();
    expect_err(
        pull_image("127.0.0.1:1/checkpoints/web:v1", &pulled, Some(&insecure)),
        Status::IO,
        "http://127.0.0.1:1/v2/checkpoints/web/manifests/v1",
    );
    assert!(!pulled.exists());
}

/// The SHA-256 of the checkpoint's `checkpoint.hmac` as `sha256sum` shows it, which
/// [`Options::add_receiver_has`] takes.
fn signature_sha256(dir: &Path) -> String {
    let out = Command::new("sha256sum").arg(dir.join("checkpoint.hmac")).output().unwrap();
    assert!(out.status.success(), "sha256sum: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// Sets the "chain" record in a checkpoint's metadata.json (python3's json module: no JSON crate
/// is at hand offline): a pre-dump without a parent, or a final dump on `parent` bound to `bound`.
const SET_CHAIN_RECORD: &str = r#"
import json, sys
path, parent, bound = sys.argv[1:4]
with open(path) as f:
    metadata = json.load(f)
metadata["nucleus"]["chain"] = {"predump": parent == "", "parent": parent, "parent_signature_sha256": bound}
with open(path, "w") as f:
    json.dump(metadata, f)
"#;

/// Copies the checkpoint `dumped` into `layers`/`name` and makes it a layer as a dump on a parent
/// makes one: the metadata's chain record bound to the signature of `layers`/`parent`, and CRIU's
/// link to the parent's images, all signed again. Without a parent ("") it is the chain's oldest
/// layer, a pre-dump; with one, the final dump.
fn link_layer(dumped: &Path, layers: &Path, name: &str, parent: &str) -> PathBuf {
    let dir = layers.join(name);
    copy_tree(dumped, &dir);
    let bound = if parent.is_empty() {
        String::new()
    } else {
        std::os::unix::fs::symlink(format!("../../{}/images", parent), dir.join("images/parent")).unwrap();
        signature_sha256(&layers.join(parent))
    };
    let status = Command::new("python3")
        .args(["-c", SET_CHAIN_RECORD])
        .arg(dir.join("metadata.json"))
        .args([parent, bound.as_str()])
        .status()
        .unwrap();
    assert!(status.success(), "setting the chain record of {}", dir.display());
    sign_as(&dir, SignatureFormat::MANIFEST, Signing::HMAC).unwrap();
    dir
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn chain_stream_with_real_criu() {
    let _serial = serial();
    become_subreaper();
    let work = fresh("chain-stream");
    let counter_dir = work.join("counter");
    fs::create_dir(&counter_dir).unwrap();
    let mut child = start_counter(&counter_dir, None);
    let pid = child.id() as i32;
    let _cleanup = KillOnDrop(pid);
    let dumped = work.join("dumped");
    let mut rt = Runtime::new().unwrap();
    rt.checkpoint("rust-chain-stream", pid, &dumped, None).expect("the dump");
    wait_dumped(&mut child);
    let at_dump = count_of(&counter_dir.join("parent"));
    // A chain of two layers made of the real dump, as a dump on a parent makes one: this runs
    // where the kernel cannot pre-dump.
    let layers = private_dir(&work, "layers");
    let p0 = link_layer(&dumped, &layers, "p0", "");
    let last = link_layer(&dumped, &layers, "final", "p0");
    verify(&last).expect("the chain verifies");
    let refused = fs::File::create(work.join("layer.stream")).unwrap();
    expect_err(export(&last, &refused, None), Status::INVALID, "export it with its chain");

    // The whole chain through a socket pair (zstd, exported on a thread) into a store made for it.
    let store = work.join("store");
    let (reader, writer) = UnixStream::pair().unwrap();
    let mut compressed = Options::new().unwrap();
    compressed.compression(Compression::ZSTD).unwrap();
    let source = last.clone();
    let sender = thread::spawn(move || export_chain(&source, writer, Some(&compressed)));
    let newest = import_chain(&reader, &store, None).expect("import_chain from the socket");
    drop(reader);
    sender.join().unwrap().expect("export_chain into the socket");
    assert_eq!(newest, store.join("final"));
    assert_eq!(names_in(&store), ["final", "p0"], "the two layers alone");
    assert_eq!(fs::read_link(newest.join("images/parent")).unwrap(), Path::new("../../p0/images"));
    for layer in ["p0", "final"] {
        assert_eq!(signature_sha256(&store.join(layer)), signature_sha256(&layers.join(layer)), "{}", layer);
    }
    verify(&newest).expect("the imported chain verifies");

    // A receiver that holds p0 is sent final alone; without p0 the same stream is refused.
    let full = work.join("full.stream");
    export_chain(&last, fs::File::create(&full).unwrap(), None).unwrap();
    let mut has_p0 = Options::new().unwrap();
    has_p0.add_receiver_has(&signature_sha256(&p0)).unwrap();
    let lacking = work.join("lacking.stream");
    export_chain(&last, fs::File::create(&lacking).unwrap(), Some(&has_p0)).unwrap();
    let size = |p: &Path| fs::metadata(p).unwrap().len();
    let pages = size(&p0.join("images/pages-1.img"));
    assert!(
        size(&lacking) + pages <= size(&full),
        "the stream leaving p0 out ({} bytes) is not {} bytes of pages smaller than the whole chain's ({})",
        size(&lacking),
        pages,
        size(&full)
    );
    let held = private_dir(&work, "held");
    copy_tree(&p0, &held.join("p0"));
    let completed = import_chain(fs::File::open(&lacking).unwrap(), &held, None).expect("import beside p0");
    assert_eq!(completed, held.join("final"));
    verify(&completed).expect("the chain completed beside the layer held verifies");
    expect_err(import_chain(fs::File::open(&lacking).unwrap(), work.join("empty"), None), Status::INVALID, "'p0'");

    // A plain dump is a chain of one.
    let one = work.join("one.stream");
    export_chain(&dumped, fs::File::create(&one).unwrap(), None).unwrap();
    let one_store = work.join("one-store");
    assert_eq!(import_chain(fs::File::open(&one).unwrap(), &one_store, None).unwrap(), one_store.join("dumped"));

    // Refused: one byte flipped in final's part of the stream, after p0 was imported; nothing is
    // left in the store.
    let mut data = fs::read(&full).unwrap();
    let at = data.len() * 3 / 4;
    data[at] ^= 0x01;
    let flipped = work.join("flipped.stream");
    fs::write(&flipped, data).unwrap();
    let flipped_store = private_dir(&work, "flipped-store");
    let e = expect_err(import_chain(fs::File::open(&flipped).unwrap(), &flipped_store, None), Status::INTEGRITY, "");
    assert!(names_in(&flipped_store).is_empty(), "{:?}", names_in(&flipped_store));
    // A layer held that is not a SHA-256 in lowercase hex.
    let mut bad = Options::new().unwrap();
    expect_err(bad.add_receiver_has("p0"), Status::INVALID, "64 lowercase hex digits");
    expect_err(bad.add_receiver_has(&signature_sha256(&p0).to_uppercase()), Status::INVALID, "64 lowercase hex digits");
    expect_err(bad.add_receiver_has("a\0b"), Status::INVALID, "NUL byte");
    // Each importer refuses the other's stream, saying which to use.
    let plain = work.join("plain.stream");
    export(&dumped, fs::File::create(&plain).unwrap(), None).unwrap();
    let plain_store = work.join("plain-store");
    expect_err(import_chain(fs::File::open(&plain).unwrap(), &plain_store, None), Status::INTEGRITY, "not a chain");
    let as_one = work.join("chain-as-one");
    expect_err(import(fs::File::open(&full).unwrap(), &as_one, None), Status::INTEGRITY, "nc_import_chain");

    // The chain restores from the store it was imported into: the tree counts on.
    let tree = rt.restore(&newest, None).expect("the imported chain restores");
    assert_eq!(tree.pid(), pid);
    assert!(
        wait_until(10, || count_of(&counter_dir.join("parent")) > at_dump + 3),
        "counting on: {} at the dump, {} now",
        at_dump,
        count_of(&counter_dir.join("parent"))
    );
    kill_tree(pid);
    println!("chain stream: whole {} bytes, without p0 {}; a flipped byte: {}", size(&full), size(&lacking), e);
}

/// The counter as the init of a PID namespace of its own (`unshare --pid --fork`), so that while
/// its migration holds it stopped here, the receiver (this same host) finds its PIDs free. Killed
/// when dropped: SIGKILL, which a PID namespace's init cannot ignore and which ends the namespace.
struct ContainedCounter {
    unshare: i32,
    pid: i32,
    /// The file its root counts in.
    parent: PathBuf,
}

impl ContainedCounter {
    /// Starts it counting in `work`/counter.
    fn start(work: &Path) -> ContainedCounter {
        ContainedCounter::filling(work, &[])
    }

    /// Starts it counting in `work`/counter, with the counter's further arguments (`MIB
    /// [private]`: the memory it fills).
    fn filling(work: &Path, memory: &[&str]) -> ContainedCounter {
        let dir = private_dir(work, "counter");
        let counter = env::var_os("NC_TEST_COUNTER").expect("NC_TEST_COUNTER names examples/counter");
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork"])
            .arg(counter)
            .arg(&dir)
            .args(memory)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare starts")
            .id() as i32; // reaped as this subreaper's other children are, by reap()
        let children = format!("/proc/{0}/task/{0}/children", unshare);
        let mut pid = 0;
        let started = wait_until(10, || {
            pid = fs::read_to_string(&children).ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0);
            pid > 0
        });
        let contained = ContainedCounter { unshare, pid, parent: dir.join("parent") };
        assert!(started && wait_until(10, || count_of(&contained.parent) >= 3), "the contained counter counts");
        contained
    }
}

impl Drop for ContainedCounter {
    fn drop(&mut self) {
        drop(KillNamespace(self.pid));
        // unshare exits once its child has.
        wait_until(10, || {
            reap();
            !alive(self.unshare)
        });
    }
}

/// Kills a PID namespace's init, and with it the namespace, when dropped, and reaps it.
struct KillNamespace(i32);

impl Drop for KillNamespace {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: plain kill.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
            wait_until(10, || {
                reap();
                !alive(self.0)
            });
        }
    }
}

/// A 0700 folder under `work`.
fn private_dir(work: &Path, name: &str) -> PathBuf {
    let dir = work.join(name);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Receives on a thread of its own with a runtime of its own (a runtime runs one call at a time).
fn receive_on<C: std::os::unix::io::AsFd + Send + 'static>(
    conn: impl FnOnce() -> C + Send + 'static,
    store: PathBuf,
) -> thread::JoinHandle<nucleus_checkpoint::Result<ReceivedMigration>> {
    thread::spawn(move || {
        let conn = conn();
        Runtime::new()?.receive(&conn, &store, None)
    })
}

/// Receives (as [`receive_on`] does) on loopback TCP into `store`; returns the source's end,
/// connected to it, and the receiving thread.
fn receive_over_loopback(
    store: PathBuf,
) -> (TcpStream, thread::JoinHandle<nucleus_checkpoint::Result<ReceivedMigration>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let receiver = receive_on(move || listener.accept().unwrap().0, store);
    (TcpStream::connect(address).unwrap(), receiver)
}

/// The migrated counter is gone here, and its copy restored as `restored` counts on from where it
/// stopped.
fn counts_on_there(counter: &ContainedCounter, restored: i32) {
    assert!(wait_until(10, || {
        reap();
        !alive(counter.pid)
    }));
    let (parent, at_move) = (&counter.parent, count_of(&counter.parent));
    assert!(wait_until(10, || count_of(parent) > at_move + 3), "the migrated counter counts on from {}", at_move);
    assert!(alive(restored));
}

#[test]
fn migration_with_real_criu() {
    let _serial = serial();
    become_subreaper();
    let work = fresh("migration");
    // Signed with Ed25519, the receiver pinned: this process is both ends, so the receiver's key is
    // the source's own.
    let _keys = KeyStoreAt::new(&private_dir(&work, "keys"));
    keygen_ed25519().unwrap();
    let key = public_key().unwrap();
    let (counter, store, out) = (ContainedCounter::start(&work), private_dir(&work, "store"), work.join("out"));
    let parent = &counter.parent;
    let mut rt = Runtime::new().unwrap();

    // A descriptor that is no socket: refused before anything is dumped.
    let file = fs::File::open(parent).unwrap();
    expect_err(rt.migrate("rust-migrate", counter.pid, &out, &file, None), Status::INVALID, "not a connected socket");
    assert!(!out.exists(), "a refused migration left {}", out.display());

    // Loopback TCP: the receiver accepts on its thread, the source connects on this one.
    let (conn, receiver) = receive_over_loopback(store.clone());
    let mut opts = Options::new().unwrap();
    opts.reply_timeout_ms(120_000).unwrap().signing(Signing::ED25519).unwrap().receiver_key(Some(&key.text)).unwrap();
    let start = Instant::now();
    let report = rt.migrate("rust-migrate", counter.pid, &out, &conn, Some(&opts));
    let elapsed = start.elapsed();
    let received = receiver.join().expect("the receiving thread");
    let _restored = KillNamespace(received.as_ref().map_or(0, |r| r.pid));
    let (report, received) = (report.expect("migrate"), received.expect("receive"));
    eprintln!("migrated in {:?}: {:?}", elapsed, report);

    assert!(report.downtime > Duration::ZERO && report.dump > Duration::ZERO, "{:?}", report);
    assert!(report.dump <= report.downtime && report.downtime <= elapsed, "{:?} in {:?}", report, elapsed);
    assert!(report.bytes_sent > 0 && report.rounds == 0 && !report.rounds_reason.is_empty(), "{:?}", report);
    assert!(report.restored_pid > 0 && report.restored_pid == received.pid && report.restored_pid != counter.pid);
    assert_eq!(report.restored_dir.parent(), Some(store.as_path()));
    assert!(report.restored_dir.file_name().unwrap().to_string_lossy().starts_with("migration-"), "{:?}", report);
    let expected_reply = format!("{{\"ok\":true,\"pid\":{},\"dir\":\"{}\",", received.pid, report.restored_dir.display());
    assert!(received.reply.starts_with(&expected_reply), "reply {:?}", received.reply);
    assert!(received.source_told, "the source confirmed, yet source_told is false");
    assert_eq!(report.receiver_key_id, key.key_id, "the receiver's answers proven by the key given");
    verify(&report.restored_dir).expect("the received folder verifies");
    verify(&out).expect("the source's folder verifies");

    // The source's tree is gone, and the restored one counts on from where it stopped.
    counts_on_there(&counter, report.restored_pid);
}

/// Raises `fs.pipe-max-size`, if lower, to the 4 MiB that post-copy needs on the source (root
/// may). It is left raised: other tests running meanwhile may need it too.
fn raise_pipe_max_size() {
    const SYSCTL: &str = "/proc/sys/fs/pipe-max-size";
    const NEEDED: u64 = 4 << 20;
    let now: u64 = fs::read_to_string(SYSCTL).unwrap().trim().parse().unwrap();
    if now < NEEDED {
        fs::write(SYSCTL, NEEDED.to_string()).expect("post-copy needs fs.pipe-max-size >= 4194304");
    }
}

#[test]
fn post_copy_migration_with_real_criu() {
    const MEMORY_MIB: u64 = 16;
    let _serial = serial();
    become_subreaper();
    raise_pipe_max_size();
    let work = fresh("migration-post-copy");
    let memory = MEMORY_MIB.to_string();
    let (counter, store) = (ContainedCounter::filling(&work, &[&memory, "private"]), private_dir(&work, "store"));

    // Loopback TCP, post-copy: the counter's memory is left out of the checkpoint, and follows it
    // once it runs on the receiver.
    let (conn, receiver) = receive_over_loopback(store);
    let mut opts = Options::new().unwrap();
    opts.post_copy(true).unwrap().reply_timeout_ms(120_000).unwrap();
    let mut rt = Runtime::new().unwrap();
    let report = rt.migrate("rust-post-copy", counter.pid, work.join("out"), &conn, Some(&opts));
    let received = receiver.join().expect("the receiving thread");
    let _restored = KillNamespace(received.as_ref().map_or(0, |r| r.pid));
    let (report, received) = (report.expect("migrate post-copy"), received.expect("receive"));
    eprintln!("migrated post-copy: {:?}", report);

    // Most of the counter's memory came through the page stream: the checkpoint did not carry it.
    // (post_copy may be 0: the receiver's CRIU fetches pages from the restore on, so all of a small
    // tree's may be in before its "ok".)
    assert!(report.pages_sent >= MEMORY_MIB * 256 / 2, "{:?}", report);
    assert!(report.restored_pid > 0 && report.restored_pid == received.pid && received.source_told, "{:?}", received);
    assert!(report.receiver_key_id.is_empty(), "HMAC-signed, yet answers proven by an Ed25519 key: {:?}", report);
    counts_on_there(&counter, report.restored_pid);
}

#[test]
fn migration_refused_by_either_side() {
    let _serial = serial();
    become_subreaper();
    let work = fresh("migration-refused");
    // First the source refuses: it signs with Ed25519 and does not trust the key the receiver
    // (this process, at the same time) proves its answers with, so it could not tell the
    // receiver's "ok" from a forged one; nothing is dumped. So it refuses when given another key
    // as the receiver's (text that is no key is refused as it is set). Then the receiver refuses:
    // the source signs with HMAC and the receiver accepts Ed25519 signatures only.
    let other_key = {
        let _other = KeyStoreAt::new(&private_dir(&work, "other-keys"));
        keygen_ed25519().unwrap();
        public_key().unwrap().text
    };
    let keys = private_dir(&work, "keys");
    let _keys = KeyStoreAt::new(&keys);
    keygen_ed25519().unwrap();
    fs::remove_dir_all(keys.join("trusted")).unwrap(); // the key trusted itself: no more
    let (counter, store) = (ContainedCounter::start(&work), private_dir(&work, "store"));
    let parent = &counter.parent;
    let mut ed25519 = Options::new().unwrap();
    ed25519.signing(Signing::ED25519).unwrap();
    let mut pinned = Options::new().unwrap();
    pinned.signing(Signing::ED25519).unwrap();
    let half_a_key = &other_key[..other_key.len() / 2];
    expect_err(pinned.receiver_key(Some(half_a_key)), Status::KEY, "nc_options_set_receiver_key");
    pinned.receiver_key(Some(&other_key)).unwrap();
    for (label, opts, out, signers, said, receiver_status) in [
        ("an untrusted receiver", Some(&ed25519), "out-untrusted", "any", "does not trust", Status::IO),
        ("not the receiver given", Some(&pinned), "out-pinned", "any", "not with the receiver's key given", Status::IO),
        ("a receiver refusing HMAC", None, "out-hmac", "ed25519", "the receiver refused the migration", Status::INTEGRITY),
    ] {
        env::set_var("NUCLEUS_CHECKPOINT_SIGNERS", signers);
        let (source, receiving) = UnixStream::pair().unwrap();
        let receiver = receive_on(move || receiving, store.clone());
        let mut rt = Runtime::new().unwrap();
        let migrated = rt.migrate("rust-refused", counter.pid, work.join(out), &source, opts);
        drop(source); // the receiver, reading what is left of the stream, sees its end
        let received = receiver.join().expect("the receiving thread");
        env::remove_var("NUCLEUS_CHECKPOINT_SIGNERS");
        let _restored = KillNamespace(received.as_ref().map_or(0, |r| r.pid));
        let e = expect_err(migrated, Status::INTEGRITY, said);
        eprintln!("{}: {}", label, e);
        expect_err(received, receiver_status, "");
        let left: Vec<_> = fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{}: a refused migration left {:?} in the receiver's store", label, left);
        // The source runs on (or resumed): the counter counts here.
        let at = count_of(parent);
        assert!(wait_until(10, || count_of(parent) > at + 3) && alive(counter.pid), "{}: the source's counter counts", label);
    }
}

#[test]
fn migration_cut_after_the_commit_runs_on_the_receiver_untold() {
    let _serial = serial();
    become_subreaper();
    let work = fresh("migration-untold");
    let (counter, store) = (ContainedCounter::start(&work), private_dir(&work, "store"));
    let parent = &counter.parent;

    // A relay between the two ends: the receiver's answers passed back, its "ready" noted before
    // the source reads it; the source's stream passed on, and then its commit, once the receiver's
    // side is read no more (its "ok" then meets EPIPE); the source's side is shut after it.
    let (source, mut to_source) = UnixStream::pair().unwrap();
    let (mut to_receiver, receiving) = UnixStream::pair().unwrap();
    let receiver = receive_on(move || receiving, store.clone());
    let ready_passed = Arc::new(AtomicBool::new(false));
    let (mut answers, mut answers_to, passed) =
        (to_receiver.try_clone().unwrap(), to_source.try_clone().unwrap(), ready_passed.clone());
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = match answers.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if String::from_utf8_lossy(&buf[..n]).contains("\"ready\":true") {
                passed.store(true, Ordering::SeqCst);
            }
            if answers_to.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match to_source.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if ready_passed.load(Ordering::SeqCst) {
                let _ = to_receiver.shutdown(Shutdown::Read);
                let _ = to_receiver.write_all(&buf[..n]);
                let _ = to_source.shutdown(Shutdown::Both);
                return;
            }
            if to_receiver.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let mut rt = Runtime::new().unwrap();
    let migrated = rt.migrate("rust-untold", counter.pid, work.join("out"), &source, None);
    let received = receiver.join().expect("the receiving thread");
    let _restored = KillNamespace(received.as_ref().map_or(0, |r| r.pid));
    let received = received.expect("receive");
    assert!(received.pid > 0 && !received.source_told, "{:?}", received);
    expect_err(migrated, Status::UNCONFIRMED, "");
    assert_eq!(state_of(counter.pid), Some('T'), "the source's copy stays stopped");
    let at = count_of(parent);
    assert!(wait_until(10, || count_of(parent) > at + 3), "the received counter counts on from {}", at);
}
