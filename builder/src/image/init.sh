#!/bin/busybox sh
# /init of the initramfs written by `nodeforge image` (initrd.img and rootfs.cpio.gz).
#
# Contract (README "Booting the image"): the test-vm harness and the guest agent rely on it.
#   disk mode:    console=ttyS0 root=LABEL=root rw panic=-1     (root=/dev/vda also accepted)
#   netboot mode: nodeforge.netboot=1 console=ttyS0 panic=-1    (the tree is this initramfs)
#   nodeforge.init=PATH   run PATH instead of /sbin/init after switch_root (tests);
#                         words after `--` on the command line are passed to it as arguments
#   /nodeforge/ (appended by the harness): units/* -> /run/systemd/system/, everything else
#                         (agent, expect.json) -> /run/nodeforge/, on a tmpfs /run;
#                         nothing is written to disk
#   failure: a line "nodeforge-initramfs: FATAL: <reason>", then poweroff -f
#   success: "nodeforge-initramfs: switching root", then switch_root
#
# Every tool is called through busybox by path: in netboot mode /bin holds Debian's tools,
# whose options differ, and in disk mode there is nothing else.
BB=/bin/busybox
MODULES=/usr/lib/nodeforge-initramfs/modules

log() { echo "nodeforge-initramfs: $*"; }
fatal() {
	echo "nodeforge-initramfs: FATAL: $*"
	$BB sync
	$BB poweroff -f
	# poweroff -f does not return; if it ever did, exiting would panic (panic=-1 reboots).
	while :; do $BB sleep 3600; done
}

$BB mkdir -p /proc /sys /dev /newroot
$BB mount -t proc -o nosuid,nodev,noexec proc /proc || fatal "cannot mount /proc"
$BB mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || fatal "cannot mount /sys"
$BB mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev || fatal "cannot mount devtmpfs on /dev"
# The kernel opened the console before devtmpfs existed, from the archive's /dev/console;
# reopen it so output keeps flowing once that node is hidden.
exec </dev/console >/dev/console 2>&1

root=
netboot=0
next_init=/sbin/init
for arg in $($BB cat /proc/cmdline); do
	case "$arg" in
	--) break ;;
	root=*) root=${arg#root=} ;;
	nodeforge.netboot=1) netboot=1 ;;
	nodeforge.init=*) next_init=${arg#nodeforge.init=} ;;
	esac
done

for m in "$MODULES"/*.ko; do
	[ -e "$m" ] || continue
	name=${m##*/}
	name=${name#*-}
	name=${name%.ko}
	[ -d "/sys/module/$name" ] && continue
	$BB insmod "$m" || fatal "insmod $m failed (is this initramfs built for $($BB uname -r)?)"
done

if [ "$netboot" = 1 ]; then
	# The tree is this initramfs (rootfs), which cannot be pivot_root'ed: systemd and runc
	# need a real mount. Copy it to a tmpfs sized to hold it.
	$BB mount -t tmpfs -o mode=0755,size=90% tmpfs /newroot || fatal "cannot mount a tmpfs on /newroot"
	for e in /* /.[!.]*; do
		case "$e" in
		/proc | /sys | /dev | /newroot | /init | '/.[!.]*') continue ;;
		esac
		[ -e "$e" ] || [ -h "$e" ] || continue
		$BB cp -a "$e" /newroot/ || fatal "copying $e to the tmpfs root failed (give the VM more memory)"
	done
	$BB mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/run
else
	dev=
	case "$root" in
	LABEL=?*) ;;
	/dev/?*) ;;
	'') fatal "no root= on the kernel command line (and no nodeforge.netboot=1)" ;;
	*) fatal "unsupported root=$root (use root=LABEL=<label> or root=/dev/<name>)" ;;
	esac
	tries=0
	while :; do
		case "$root" in
		LABEL=*) dev=$($BB findfs "$root" 2>/dev/null) ;;
		*) dev=$root ;;
		esac
		[ -n "$dev" ] && [ -b "$dev" ] && break
		tries=$((tries + 1))
		[ "$tries" -ge 300 ] && fatal "root device $root did not appear within 30 s"
		$BB usleep 100000
	done
	$BB mount -t ext4 -o rw "$dev" /newroot || fatal "cannot mount $dev ($root) as ext4 on /newroot"
fi

if [ -d /nodeforge ]; then
	$BB mkdir -p /newroot/run
	if ! $BB grep -q '^[^ ]* /newroot/run ' /proc/mounts; then
		$BB mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fatal "cannot mount a tmpfs on /run"
	fi
	# Everything but the units (the agent, its expect.json) goes to /run/nodeforge/.
	$BB mkdir -p /newroot/run/nodeforge || fatal "cannot create /run/nodeforge"
	for f in /nodeforge/*; do
		[ "$f" = /nodeforge/units ] && continue
		[ -e "$f" ] || continue
		$BB cp -a "$f" /newroot/run/nodeforge/ || fatal "cannot copy $f to /run/nodeforge"
	done
	if [ -e /newroot/run/nodeforge/agent ]; then
		$BB chmod 0755 /newroot/run/nodeforge/agent || fatal "cannot chmod the agent"
	fi
	if [ -d /nodeforge/units ]; then
		$BB mkdir -p /newroot/run/systemd/system || fatal "cannot create /run/systemd/system"
		$BB cp -a /nodeforge/units/. /newroot/run/systemd/system/ || fatal "cannot copy the agent's units"
	fi
	log "agent hook installed into /run"
fi

[ -e "/newroot$next_init" ] || [ -h "/newroot$next_init" ] || fatal "no $next_init in the root filesystem"
for fs in dev proc sys; do
	$BB mkdir -p "/newroot/$fs"
	$BB mount --move "/$fs" "/newroot/$fs" || fatal "cannot move /$fs into the new root"
done
log "switching root"
exec $BB switch_root /newroot "$next_init" "$@"
fatal "switch_root failed"
