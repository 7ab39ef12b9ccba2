#!/usr/bin/env bash
# slurm_down.sh -- stop what slurm_up.sh started (by recorded PID only, never by name).
#   PURGE_STATE=1  also delete Slurm state/spool, logs and slurm.conf/slurmdbd.conf
#   PURGE_PKGS=1   also apt-get purge the packages slurm_up.sh installed (implies PURGE_STATE)
set -uo pipefail
PIDS=/run/slurm-ci/pids
log() { printf '[slurm_down %(%H:%M:%S)T] %s\n' -1 "$*"; }
[ "${PURGE_PKGS:-0}" = 1 ] && PURGE_STATE=1

pid_of() { awk -v n="$1" '$1 == n {print $2}' "$PIDS" 2>/dev/null; }
is_ours() {  # pid still alive and still the program we started (guards against PID reuse)
  local pid=$1 name=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]
}
declare -A PIDFILE=([slurmd]=/run/slurmd.pid [slurmctld]=/run/slurmctld.pid [slurmdbd]=/run/slurmdbd.pid
                    [mariadbd]=/run/mysqld/mysqld.pid [munged]=/run/munge/munged.pid)
stop() {  # stop <name>: SIGTERM, wait up to 20 s, then SIGKILL
  local name=$1 pid; pid=$(pid_of "$name")
  is_ours "$pid" "$name" || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 80); do is_ours "$pid" "$name" || break; sleep 0.25; done
  if is_ours "$pid" "$name"; then log "$name did not exit, SIGKILL"; kill -KILL "$pid" 2>/dev/null; sleep 0.5; fi
  # slurmctld/slurmdbd run as SlurmUser and cannot delete their pid file in /run; a stale
  # /run/slurmctld.pid makes the package's prerm call scancel (which fails) on apt-get purge.
  rm -f "${PIDFILE[$name]}"
}

# 1. cancel all jobs of this private cluster and let them finish (KillWait=5)
if is_ours "$(pid_of slurmctld)" slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// }" ]; then
    log "cancelling jobs: $jobs"; scancel $jobs
    for _ in $(seq 1 60); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

# 2. daemons, reverse start order
for d in slurmd slurmctld slurmdbd mariadbd munged; do stop "$d"; done
rm -f /run/slurm-ci/pids

if [ "${PURGE_PKGS:-0}" = 1 ] && [ -s /var/lib/slurm-ci/pkgs.before ]; then
  added=$(dpkg-query -W -f '${db:Status-Status} ${Package}\n' | awk '$1=="installed"{print $2}' | sort | comm -13 /var/lib/slurm-ci/pkgs.before - | tr '\n' ' ')
  if [ -n "${added// }" ]; then
    log "purging packages added by slurm_up.sh: $added"
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq $added > "${LOG_DIR:-/var/log/slurm}/purge.log" 2>&1 \
      || { log "apt-get purge failed, see "${LOG_DIR:-/var/log/slurm}/purge.log""; exit 1; }
  fi
  for u in slurm munge mysql; do   # system users the packages created and purge leaves behind (mysql)
    if [ -s /var/lib/slurm-ci/users.before ] && getent passwd "$u" >/dev/null && ! grep -qx "$u" /var/lib/slurm-ci/users.before; then
      userdel "$u" 2>/dev/null; getent group "$u" >/dev/null && groupdel "$u" 2>/dev/null
    fi
  done
  rm -rf /var/lib/slurm-ci /var/lib/mysql /etc/mysql /run/mysqld /run/munge
fi
if [ "${PURGE_STATE:-0}" = 1 ]; then
  log "removing state, logs and config"
  rm -rf /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm-ci \
         /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf
fi
log "done"
