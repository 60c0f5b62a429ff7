# acpi: power off cleanly on the ACPI power button, so `vmctl vm stop` (libvirt's
# shutdown) stops the guest without forcing it off.
. /lib/lab.sh
mkdir -p /etc/acpi/PWRF
cat >/etc/acpi/PWRF/00000080 <<'EOT'
#!/bin/sh
. /lib/lab.sh
say "power button: powering off"
sync
poweroff -f
EOT
chmod +x /etc/acpi/PWRF/00000080
mkdir -p /var/log /run
acpid -c /etc/acpi -l /var/log/acpid.log -p /run/acpid.pid
i=0
while [ ! -s /run/acpid.pid ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
# Tests wait for this line before they ask for a shutdown: a power button pressed
# before acpid runs is lost.
say "acpi ready"
