# Helpers of the dvm lab guest, sourced by /init and by every /etc/lab.d service.

# say prints one line on the console that the host's tests look for.
say() { echo "dvm-lab-guest: $*" >/dev/console; }

# arg NAME prints the value of dvm.NAME=VALUE on the kernel command line, or fails.
arg() {
	for w in $(cat /proc/cmdline); do
		case "$w" in
		"dvm.$1="*) echo "${w#dvm.$1=}"; return 0 ;;
		esac
	done
	return 1
}
