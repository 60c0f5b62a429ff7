# ping: with dvm.ping=ADDR on the kernel command line, ping ADDR ten times a second
# (from eth0's address, dvm.ip=) and report each probe on the console:
#   dvm-lab-guest: ping ADDR ok seq N
#   dvm-lab-guest: ping ADDR lost seq N
# Probe N is sent N x 100 ms after the first (busybox ping sends on a timer, answered or
# not), so a run of K lost probes is a gap of about K x 100 ms. Lost lines come when the
# next answer arrives (a probe is lost once a later one is answered). If ping itself
# exits, "ping ADDR restart" is said and counting starts again from 0.
. /lib/lab.sh
addr=$(arg ping) || exit 0
# eth0 gets its address from /init before services start; wait for it anyway.
i=0
while ! ip -o addr show dev eth0 2>/dev/null | grep -q ' inet' && [ "$i" -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
say "ping $addr start"
while :; do
	next=0
	ping -i 0.1 "$addr" 2>&1 | while read -r line; do
		case "$line" in
		*" seq="*)
			seq=${line#* seq=}
			seq=${seq%% *}
			[ "$seq" -lt "$next" ] && continue # a duplicate or late answer
			while [ "$next" -lt "$seq" ]; do
				say "ping $addr lost seq $next"
				next=$((next + 1))
			done
			say "ping $addr ok seq $seq"
			next=$((seq + 1))
			;;
		esac
	done
	say "ping $addr restart"
	sleep 1
done
