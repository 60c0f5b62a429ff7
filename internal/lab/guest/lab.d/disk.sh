# disk: counts the guest's boots on its disk, so a test sees its data outlive a
# restart on another node. The first sector of /dev/vda holds "dvm-lab-disk boots N"
# (a blank disk: no boot yet); each boot prints the count it found, then writes it
# one higher. A disk holding anything else is left alone.
. /lib/lab.sh
[ -b /dev/vda ] || exit 0
head=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\000')
case $head in
"dvm-lab-disk boots "*)
	n=${head#dvm-lab-disk boots }
	n=${n%%[!0-9]*}
	;;
"") n=0 ;;
*)
	say "disk: /dev/vda holds other data: boots not counted"
	exit 0
	;;
esac
say "disk: boots before this one: $n"
n=$((n + 1))
if printf 'dvm-lab-disk boots %d\n' "$n" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; then
	say "disk: boots $n written"
else
	say "disk: writing boots $n failed"
fi
