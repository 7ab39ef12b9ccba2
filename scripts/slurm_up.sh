#!/usr/bin/env bash
# slurm_up.sh -- install, configure and start a single-node Slurm cluster on localhost
# without systemd (containers / CI).  Tested: Debian 12 bookworm, Slurm 22.05.8, root.
#
#   WITH_ACCOUNTING=1 (default)  also run slurmdbd + MariaDB so that `sacct` works.
#                                submitit polls `sacct` for job states: without it a job
#                                that dies without writing its result (scancel, TIMEOUT,
#                                OOM, node failure) makes the Hydra launcher wait forever.
#   WITH_ACCOUNTING=0            lighter: only munge + slurmctld + slurmd (8 packages).
#   SLURM_PARTITION=debug        name of the single (default) partition.
#   SKIP_INSTALL=1               do not call apt-get (packages already present).
#   READY_TIMEOUT=60             seconds to wait for the node to become idle.
#
# PIDs of every daemon this script starts go to /run/slurm-ci/pids (read by slurm_down.sh).
set -euo pipefail

WITH_ACCOUNTING=${WITH_ACCOUNTING:-1}
PARTITION=${SLURM_PARTITION:-debug}
READY_TIMEOUT=${READY_TIMEOUT:-60}
NODE=$(hostname -s)
NCPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)   # a bit below the real value
LOGDIR=/var/log/slurm
PIDDIR=/run/slurm-ci
PIDS=$PIDDIR/pids
DB_PASS=${SLURM_DB_PASS:-slurmdbpass}

T0=$(date +%s%N)
log() { printf '[slurm_up +%6.2fs] %s\n' "$(( $(date +%s%N) - T0 ))e-9" "$*"; }
die() { log "ERROR: $*"; for f in "$LOGDIR"/*.log; do [ -f "$f" ] && { echo "== $f"; tail -n 30 "$f"; }; done; exit 1; }
wait_for() {  # wait_for <timeout_s> <description> <command...>
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && die "timed out after ${t}s waiting for: $what"
    sleep 0.25
  done
}
record_pid() { echo "$1 $2" >> "$PIDS"; log "started $1 (pid $2)"; }

[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
if [ -s "$PIDS" ]; then
  while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then echo "$name (pid $pid) from a previous slurm_up.sh is still running; run slurm_down.sh first" >&2; exit 1; fi
  done < "$PIDS"
fi

# ---------------------------------------------------------------- 1. packages
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  # remember what was installed before, so `PURGE_PKGS=1 slurm_down.sh` removes exactly what we added
  mkdir -p /var/lib/slurm-ci
  [ -s /var/lib/slurm-ci/users.before ] || cut -d: -f1 /etc/passwd | sort > /var/lib/slurm-ci/users.before
  [ -s /var/lib/slurm-ci/pkgs.before ] || dpkg-query -W -f '${db:Status-Status} ${Package}\n' | awk '$1=="installed"{print $2}' | sort > /var/lib/slurm-ci/pkgs.before
  pkgs="slurm-wlm munge"                       # slurm-wlm = slurmctld + slurmd + slurm-client
  [ "$WITH_ACCOUNTING" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  log "apt-get install $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  # --no-install-recommends: without it slurmd/slurmctld pull ~35 extra plugin/hdf5/rocm/ipmi packages
  mkdir -p "$LOGDIR"   # owned by root until the slurm user exists (fixed below)
  { apt-get update -q && apt-get install -y -q --no-install-recommends $pkgs; } > "$LOGDIR/apt.log" 2>&1 \
    || { tail -n 30 "$LOGDIR/apt.log"; die "apt-get failed (full log: $LOGDIR/apt.log)"; }
  log "packages installed"
fi

# ---------------------------------------------------------------- 2. hostname
# slurmd finds its NodeName from `hostname -s`; srun/slurmstepd also resolve it.
if ! getent hosts "$NODE" >/dev/null; then
  log "hostname $NODE does not resolve; adding it to /etc/hosts"
  echo "127.0.0.1 $NODE" >> /etc/hosts
fi

mkdir -p "$PIDDIR"; : > "$PIDS"
install -d -o slurm -g slurm -m 0755 "$LOGDIR" /var/spool/slurmctld
install -d -o root  -g root  -m 0755 /var/spool/slurmd

# ---------------------------------------------------------------- 3. munge
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
  || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running (not started by us)"
else
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged          # daemonizes, writes /run/munge/munged.pid
  wait_for 10 "munged" sh -c 'munge -n | unmunge'
  record_pid munged "$(cat /run/munge/munged.pid)"
fi

# ---------------------------------------------------------------- 4. accounting (optional)
if [ "$WITH_ACCOUNTING" = 1 ]; then
  if mariadb-admin ping >/dev/null 2>&1; then
    log "MariaDB already running (not started by us)"
  else
    install -d -o mysql -g root -m 0755 /run/mysqld
    # unix socket only: no clash with another server on :3306
    nohup /usr/sbin/mariadbd --user=mysql --skip-networking --innodb-buffer-pool-size=64M \
      > "$LOGDIR/mariadbd.log" 2>&1 &
    record_pid mariadbd $!
    wait_for 30 "mariadbd" mariadb-admin ping
  fi
  # fresh accounting DB every time (slurmctld state is wiped too, so job ids restart at 1)
  mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 0600 /etc/slurm/slurmdbd.conf  # slurmdbd refuses otherwise
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

# ---------------------------------------------------------------- 5. slurm.conf
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
# no cgroups anywhere: works in unprivileged containers / cgroup v1 or v2 alike
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
$ACCT
# human-readable history of finished jobs even without slurmdbd
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
SchedulerType=sched/backfill
# run the scheduler every second instead of every 60 s / backfill every 30 s: job arrays
# (what submitit submits) are only started by these loops -> 3-job sweep 6 s -> 3 s
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
# CPUs are consumable, memory is not (jobs without --mem do not grab the whole node)
SelectTypeParameters=CR_CPU
ReturnToService=2
# cancelled / timed-out jobs: SIGKILL 5 s after SIGTERM (default 30; submitit ignores SIGTERM)
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# ---------------------------------------------------------------- 6. daemons
rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*      # fresh state, job ids restart at 1
rm -f /run/slurmdbd.pid /run/slurmctld.pid /run/slurmd.pid   # stale ones would fool the waits below
if [ "$WITH_ACCOUNTING" = 1 ]; then
  /usr/sbin/slurmdbd                                    # daemonizes
  wait_for 15 "slurmdbd pid file" test -s /run/slurmdbd.pid
  record_pid slurmdbd "$(cat /run/slurmdbd.pid)"
  wait_for 30 "slurmdbd answering" sacctmgr -n list cluster
fi
/usr/sbin/slurmctld                                     # daemonizes
wait_for 15 "slurmctld pid file" test -s /run/slurmctld.pid
record_pid slurmctld "$(cat /run/slurmctld.pid)"
wait_for 30 "slurmctld answering" sh -c 'scontrol ping | grep -q UP'
/usr/sbin/slurmd                                        # daemonizes
wait_for 15 "slurmd pid file" test -s /run/slurmd.pid
record_pid slurmd "$(cat /run/slurmd.pid)"

wait_for "$READY_TIMEOUT" "node $NODE idle" sh -c "sinfo -h -n $NODE -o %t | grep -qx idle"
sinfo
log "cluster ready (partition=$PARTITION node=$NODE cpus=$NCPUS accounting=$WITH_ACCOUNTING)"
