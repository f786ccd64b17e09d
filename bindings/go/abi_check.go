package checkpoint

// #include <nucleus/checkpoint.h>
import "C"

// Each constant of this package has the value of the C ABI's (they never change): a constant that
// differed would index these arrays out of range, and not compile.
var _ = [...]struct{}{
	[1]struct{}{}[StatusOK-C.NC_OK],
	[1]struct{}{}[StatusInvalid-C.NC_E_INVALID],
	[1]struct{}{}[StatusPermission-C.NC_E_PERMISSION],
	[1]struct{}{}[StatusNotFound-C.NC_E_NOT_FOUND],
	[1]struct{}{}[StatusState-C.NC_E_STATE],
	[1]struct{}{}[StatusCRIU-C.NC_E_CRIU],
	[1]struct{}{}[StatusIntegrity-C.NC_E_INTEGRITY],
	[1]struct{}{}[StatusIO-C.NC_E_IO],
	[1]struct{}{}[StatusKey-C.NC_E_KEY],
	[1]struct{}{}[StatusNoMem-C.NC_E_NOMEM],
	[1]struct{}{}[StatusInternal-C.NC_E_INTERNAL],
	[1]struct{}{}[StatusUnsupported-C.NC_E_UNSUPPORTED],
	[1]struct{}{}[CgroupDefault-C.NC_CGROUP_DEFAULT],
	[1]struct{}{}[CgroupSoft-C.NC_CGROUP_SOFT],
	[1]struct{}{}[CgroupFull-C.NC_CGROUP_FULL],
	[1]struct{}{}[CgroupStrict-C.NC_CGROUP_STRICT],
	[1]struct{}{}[CgroupIgnore-C.NC_CGROUP_IGNORE],
	[1]struct{}{}[RestoreDetached-C.NC_RESTORE_DETACHED],
	[1]struct{}{}[RestoreChild-C.NC_RESTORE_CHILD],
	[1]struct{}{}[SignatureSeed-C.NC_SIGNATURE_SEED],
	[1]struct{}{}[SignatureChunked-C.NC_SIGNATURE_CHUNKED],
	[1]struct{}{}[SignatureManifest-C.NC_SIGNATURE_MANIFEST],
	[1]struct{}{}[NetworkLockDefault-C.NC_NETWORK_LOCK_DEFAULT],
	[1]struct{}{}[NetworkLockIPTables-C.NC_NETWORK_LOCK_IPTABLES],
	[1]struct{}{}[NetworkLockNFTables-C.NC_NETWORK_LOCK_NFTABLES],
	[1]struct{}{}[NetworkLockSkip-C.NC_NETWORK_LOCK_SKIP],
	[1]struct{}{}[NotifyPreDump-C.NC_NOTIFY_PRE_DUMP],
	[1]struct{}{}[NotifyPostDump-C.NC_NOTIFY_POST_DUMP],
	[1]struct{}{}[NotifyPreRestore-C.NC_NOTIFY_PRE_RESTORE],
	[1]struct{}{}[NotifyPostRestore-C.NC_NOTIFY_POST_RESTORE],
	[1]struct{}{}[NotifyNetworkLock-C.NC_NOTIFY_NETWORK_LOCK],
	[1]struct{}{}[NotifyNetworkUnlock-C.NC_NOTIFY_NETWORK_UNLOCK],
	[1]struct{}{}[NotifySetupNamespaces-C.NC_NOTIFY_SETUP_NAMESPACES],
	[1]struct{}{}[NotifyPostSetupNamespaces-C.NC_NOTIFY_POST_SETUP_NAMESPACES],
	[1]struct{}{}[NotifyPreResume-C.NC_NOTIFY_PRE_RESUME],
	[1]struct{}{}[NotifyPostResume-C.NC_NOTIFY_POST_RESUME],
	[1]struct{}{}[NotifyStatusReady-C.NC_NOTIFY_STATUS_READY],
}
