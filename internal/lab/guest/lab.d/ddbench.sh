# ddbench: with dvm.ddbench=SECONDS on the kernel command line, measures the guest's
# direct (uncached) write throughput to its disk every SECONDS, the first time SECONDS
# after boot: 16 MiB in 64 KiB
# writes from 1 MiB into /dev/vda (oflag=direct, then fsync), timed on /proc/uptime
# (hundredths of a second), and says it on the console:
#   dvm-lab-guest: ddbench: 16777216 bytes in 123 cs
. /lib/lab.sh
every=$(arg ddbench) || exit 0
[ -b /dev/vda ] || exit 0
while :; do
	sleep "$every"
	t0=$(cut -d' ' -f1 /proc/uptime)
	if dd if=/dev/zero of=/dev/vda bs=64k seek=16 count=256 oflag=direct conv=fsync 2>/dev/null; then
		t1=$(cut -d' ' -f1 /proc/uptime)
		say "ddbench: 16777216 bytes in $((${t1%.*}${t1#*.} - ${t0%.*}${t0#*.})) cs"
	else
		say "ddbench: write failed"
	fi
done
