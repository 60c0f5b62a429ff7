# counter: with dvm.counter=ADDR:PORT on the kernel command line, counts on the guest's
# disk and tells a client each value only once the disk holds it. Sector 8 of /dev/vda
# holds "dvm-lab-counter N"; each step writes N+1 there with an fsync (conv=fsync:
# the write and a flush of the virtual disk), then sends "counter N+1" to ADDR:PORT
# over TCP, and says it on the console. The value found at boot is said too:
#   dvm-lab-guest: counter: found N
#   dvm-lab-guest: counter: at N
# If the connection breaks, counting goes on from what the disk holds once it is open
# again.
. /lib/lab.sh
target=$(arg counter) || exit 0
[ -b /dev/vda ] || exit 0
host=${target%:*}
port=${target##*:}
ondisk() {
	v=$(dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | tr -d '\000')
	case $v in
	"dvm-lab-counter "*)
		v=${v#dvm-lab-counter }
		echo "${v%%[!0-9]*}"
		;;
	*) echo 0 ;;
	esac
}
say "counter: found $(ondisk)"
while :; do
	n=$(ondisk)
	while :; do
		n=$((n + 1))
		printf 'dvm-lab-counter %d\n' "$n" | dd of=/dev/vda bs=512 seek=8 count=1 conv=sync,fsync 2>/dev/null || exit 1
		echo "counter $n"
		say "counter: at $n"
		sleep 0.05
	done | nc "$host" "$port"
	sleep 0.5
done
