# tick: a heartbeat on the console, once a second, so a test sees the guest run on
# (after a migration, too: the count goes on).
. /lib/lab.sh
n=0
while :; do
	n=$((n + 1))
	say "tick $n"
	sleep 1
done
