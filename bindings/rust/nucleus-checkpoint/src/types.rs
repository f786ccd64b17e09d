//! The C ABI's enums as integer newtypes: a value added by a later library is an ordinary value
//! here, never undefined behaviour. Match on the constants with a `_` arm.
use std::fmt;

use nucleus_checkpoint_sys as sys;

macro_rules! int_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$cdoc:meta])* $konst:ident = $value:expr,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(transparent)]
        pub struct $name(pub i32);

        impl $name {
            $($(#[$cdoc])* pub const $konst: $name = $name($value);)*

            /// The constant's name, or `None` for a value this crate does not know.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $($name::$konst => Some(stringify!($konst)),)*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => write!(f, "{}::{}", stringify!($name), name),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl From<$name> for i32 {
            fn from(v: $name) -> i32 {
                v.0
            }
        }
    };
}

int_enum! {
    /// How a checkpoint is signed (`nc_signature_format`); the README specifies each.
    SignatureFormat {
        /// nucleus-container 0.3.3's: one serial HMAC-SHA256 over the sorted tree.
        SEED = sys::NC_SIGNATURE_SEED,
        /// Per-file chunked SHA-256 digests bound by one HMAC-SHA256.
        CHUNKED = sys::NC_SIGNATURE_CHUNKED,
        /// Chunked, every chunk's digest listed under the HMAC; what dumps write by default.
        MANIFEST = sys::NC_SIGNATURE_MANIFEST,
    }
}

int_enum! {
    /// The kind of key that signs a checkpoint (`nc_signing`). Since 0.3.
    Signing {
        /// The key store's HMAC key: whoever verifies can also sign (the default).
        HMAC = sys::NC_SIGNING_HMAC,
        /// The key store's Ed25519 key: verified with its public key alone, by a host that trusts
        /// it ([`crate::trust_key`]). Needs the chunked or manifest format.
        ED25519 = sys::NC_SIGNING_ED25519,
    }
}

int_enum! {
    /// How [`crate::export`] compresses its stream (`nc_compression`); an import reads either.
    /// Since 0.3.
    Compression {
        /// The default.
        NONE = sys::NC_COMPRESSION_NONE,
        /// zstd level 1.
        ZSTD = sys::NC_COMPRESSION_ZSTD,
    }
}

int_enum! {
    /// CRIU's `--manage-cgroups` mode (`nc_cgroup_mode`).
    CgroupMode {
        DEFAULT = sys::NC_CGROUP_DEFAULT,
        SOFT = sys::NC_CGROUP_SOFT,
        FULL = sys::NC_CGROUP_FULL,
        STRICT = sys::NC_CGROUP_STRICT,
        IGNORE = sys::NC_CGROUP_IGNORE,
    }
}

int_enum! {
    /// Whose child the restored tree is (`nc_restore_mode`).
    RestoreMode {
        /// Reparented to the nearest subreaper or PID 1 (the default).
        DETACHED = sys::NC_RESTORE_DETACHED,
        /// The caller's child, which it can wait for (CRIU's `--restore-sibling`).
        CHILD = sys::NC_RESTORE_CHILD,
    }
}

int_enum! {
    /// How CRIU keeps a network namespace quiet during a dump (`nc_network_lock`).
    NetworkLock {
        DEFAULT = sys::NC_NETWORK_LOCK_DEFAULT,
        IPTABLES = sys::NC_NETWORK_LOCK_IPTABLES,
        NFTABLES = sys::NC_NETWORK_LOCK_NFTABLES,
        SKIP = sys::NC_NETWORK_LOCK_SKIP,
    }
}

int_enum! {
    /// CRIU's notifications (`nc_notification`). Later libraries may add values: go on for those.
    Notification {
        PRE_DUMP = sys::NC_NOTIFY_PRE_DUMP,
        /// The images are written; the tree is still frozen.
        POST_DUMP = sys::NC_NOTIFY_POST_DUMP,
        PRE_RESTORE = sys::NC_NOTIFY_PRE_RESTORE,
        /// The tree is restored, not yet running.
        POST_RESTORE = sys::NC_NOTIFY_POST_RESTORE,
        NETWORK_LOCK = sys::NC_NOTIFY_NETWORK_LOCK,
        NETWORK_UNLOCK = sys::NC_NOTIFY_NETWORK_UNLOCK,
        /// The namespaces exist: configure them.
        SETUP_NAMESPACES = sys::NC_NOTIFY_SETUP_NAMESPACES,
        POST_SETUP_NAMESPACES = sys::NC_NOTIFY_POST_SETUP_NAMESPACES,
        /// The last moment before the restored tree runs.
        PRE_RESUME = sys::NC_NOTIFY_PRE_RESUME,
        POST_RESUME = sys::NC_NOTIFY_POST_RESUME,
        STATUS_READY = sys::NC_NOTIFY_STATUS_READY,
    }
}
