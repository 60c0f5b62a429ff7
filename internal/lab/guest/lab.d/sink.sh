# sink: with dvm.sink=PORT on the kernel command line, takes TCP connections on PORT
# one at a time and says each line received on the console:
#   dvm-lab-guest: sink: LINE
. /lib/lab.sh
port=$(arg sink) || exit 0
while :; do
	nc -l -p "$port" | while read -r line; do say "sink: $line"; done
done
