#!/bin/sh
# SWUpdate with U-Boot's bootcount rollback: run once after boot (e.g. from a
# oneshot unit After=talkie.service). When talkie is ready and healthy, clear
# the "upgrade pending" flags so U-Boot stops counting boots; otherwise leave
# them, reboot, and let bootlimit/altbootcmd fall back to the old system.
set -u
if /usr/bin/talkie health --wait 180; then
    fw_setenv upgrade_available 0
    fw_setenv bootcount 0
    fw_setenv ustate 0
else
    logger -t talkie "new release not healthy: rebooting towards the rollback"
    systemctl reboot
fi
