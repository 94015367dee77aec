#!/bin/sh
# SWUpdate with U-Boot's bootcount rollback: run once after boot (e.g. from a
# oneshot unit After=talkie.service). When talkie is ready and healthy, clear
# the "upgrade pending" flags so U-Boot stops counting boots; otherwise leave
# them, reboot, and let bootlimit/altbootcmd fall back to the old system.
# FW_ENV_CONFIG names fw_env.config when it is not /etc/fw_env.config.
set -u
fw() { fw_setenv ${FW_ENV_CONFIG:+-c "$FW_ENV_CONFIG"} "$@"; }
if /usr/bin/talkie health --wait 180; then
    fw upgrade_available 0 && fw bootcount 0 && fw ustate 0
else
    logger -t talkie "new release not healthy: rebooting towards the rollback"
    systemctl reboot
fi
