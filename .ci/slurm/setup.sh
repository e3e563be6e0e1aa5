#!/usr/bin/env bash
# A real single-node SLURM on this machine, for CI and for trying profiles/slurm:
#   munge (authentication), MariaDB + slurmdbd (accounting: sacct, which tests/workflow/test_slurm.py reads and the
#   executor plugin falls back on), slurmctld and slurmd, with partitions `cpu` (default) and `gpu` on this node.
#
#   .ci/slurm/setup.sh          as root; safe to run again: well under a second when everything already answers
#   .ci/slurm/setup.sh --dry-run   says what it would install and start, changes nothing (`make test` says it first)
#
# Without root or apt-get it changes nothing and exits 0 (the SLURM tests then skip, as they do anywhere
# `sinfo` does not answer). Daemon logs: /var/log/slurm/. Settings (environment): SLURM_CI_CLUSTER (ci),
# SLURM_CI_MEM_MB (the memory the node declares, see below), SLURM_CI_GPUS and SLURM_CI_GPU_MODEL (2 x a100,
# the stand-in GPUs the node declares).
set -euo pipefail

CLUSTER=${SLURM_CI_CLUSTER:-ci}
NODE=$(hostname -s)
CPUS=$(nproc)
# The demo's jobs ask for the study's memory (up to 32 GB, doubled on a retry) while using under 1.5 GB, so the
# node declares more than the machine has; SlurmdParameters=config_overrides keeps slurmd from draining it.
MEM_MB=${SLURM_CI_MEM_MB:-131072}
# No GPU here: the node declares this many GPUs of the profile's model, backed by stand-in device files (null
# devices in /var/lib/slurm-ci), so that jobs asking for `--gpus=<model>:<n>` are scheduled and accounted as on a
# cluster (SLURM sets CUDA_VISIBLE_DEVICES). Torch finds no CUDA in them and runs on the CPU.
GPUS=${SLURM_CI_GPUS:-2}
GPU_MODEL=${SLURM_CI_GPU_MODEL:-a100}
GPU_FILES=/var/lib/slurm-ci
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
DB=slurm_acct_db
DB_USER=slurm

say() { echo "slurm-setup: $*"; }

DRY_RUN=0
[[ ${1:-} == --dry-run ]] && DRY_RUN=1

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    say "not root or no apt-get: leaving this machine alone (SLURM tests will skip)"
    exit 0
fi

# ------------------------------------------------------------------------------ configuration files
slurm_conf() {
    cat <<EOF
# Written by .ci/slurm/setup.sh: one node, partitions cpu (default) and gpu.
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu,gres/gpu:$GPU_MODEL
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobRequeue=1
MinJobAge=300
KillWait=10
GresTypes=gpu
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPU_MODEL:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
}

gres_conf() {
    echo "NodeName=$NODE Name=gpu Type=$GPU_MODEL File=$GPU_FILES/gpu[0-$((GPUS - 1))]"
}

make_gpu_files() {
    mkdir -p $GPU_FILES
    for ((i = 0; i < GPUS; i++)); do
        [[ -c $GPU_FILES/gpu$i ]] || { rm -f $GPU_FILES/gpu$i; mknod $GPU_FILES/gpu$i c 1 3; }
    done
}

slurmdbd_conf() {
    cat <<EOF
# Written by .ci/slurm/setup.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB
StorageUser=$DB_USER
StoragePass=$1
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF
}

# Writes $1 with stdin's content when it differs; prints "changed" then.
write_if_changed() {
    local target=$1 mode=$2 new
    new=$(cat)
    if [[ ! -f $target ]] || [[ "$(cat "$target")" != "$new" ]]; then
        printf '%s\n' "$new" >"$target"
        chmod "$mode" "$target"
        echo changed
    fi
}

# ------------------------------------------------------------------------------ daemons
running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stops a daemon this script started, by the process id in its pid file.
stop() {
    local pidfile=$1 pid
    running "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    say "process $pid ($pidfile) did not stop"
    return 1
}

wait_for() {
    local what=$1; shift
    for _ in $(seq 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    say "$what did not come up; see $LOG_DIR"
    return 1
}

node_ready() { timeout 10 sinfo -h -n "$NODE" -o %t | grep -Eq '^(idle|mix|alloc|comp)$'; }

# The fast path: every daemon answers and the configuration is the one this script writes.
already_up() {
    command -v sinfo >/dev/null || return 1
    [[ -f $CONF_DIR/slurm.conf && "$(cat $CONF_DIR/slurm.conf)" == "$(slurm_conf)" ]] || return 1
    [[ -f $CONF_DIR/gres.conf && "$(cat $CONF_DIR/gres.conf)" == "$(gres_conf)" ]] || return 1
    running /run/slurmdbd.pid && running /run/slurmctld.pid && running /run/slurmd.pid || return 1
    timeout 10 sacct -n -X --starttime now-1minutes >/dev/null 2>&1 || return 1
    [[ $(timeout 10 sinfo -h -o %R | sort | tr '\n' ' ') == "cpu gpu " ]] || return 1
    node_ready
}

if already_up; then
    say "SLURM already up: $(sinfo -h -o '%R' | tr '\n' ' ')on $NODE; nothing to install or start"
    exit 0
fi

packages=(slurm-wlm munge mariadb-server slurmdbd)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [[ $DRY_RUN -eq 1 ]]; then
    say "as root, will ${missing[*]:+install ${missing[*]} with apt-get and }start munged, MariaDB," \
        "slurmdbd, slurmctld and slurmd: a one-node SLURM (cluster $CLUSTER) for tests/workflow/test_slurm.py" \
        "(config in $CONF_DIR, logs in $LOG_DIR)"
    exit 0
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing ${missing[*]} (apt-get; log in /tmp/slurm-setup-apt.log)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/slurm-setup-apt.log 2>&1 \
        || { apt-get update -q >>/tmp/slurm-setup-apt.log 2>&1 \
             && apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/slurm-setup-apt.log 2>&1; } \
        || { say "apt-get failed, see /tmp/slurm-setup-apt.log"; exit 1; }
fi
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd

# munge: one key for every daemon and client on the machine
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged </dev/null >>$LOG_DIR/munged.out 2>&1
    wait_for munged bash -c 'munge -n | unmunge'
fi

# MariaDB with the accounting database and its user
if ! mysqladmin ping >/dev/null 2>&1; then
    say "starting MariaDB"
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    setsid mysqld_safe --user=mysql </dev/null >>$LOG_DIR/mysqld_safe.out 2>&1 &
    wait_for MariaDB mysqladmin ping
fi
db_pass=$(sed -n 's/^StoragePass=//p' $CONF_DIR/slurmdbd.conf 2>/dev/null || true)
[[ -n $db_pass ]] || db_pass=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
mysql -u root <<EOF
CREATE DATABASE IF NOT EXISTS $DB;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$db_pass';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$db_pass';
GRANT ALL ON $DB.* TO '$DB_USER'@'localhost';
EOF

# Configuration first (the SLURM clients read slurm.conf); a daemon whose file changed is restarted.
dbd_changed=$(slurmdbd_conf "$db_pass" | write_if_changed $CONF_DIR/slurmdbd.conf 600)
conf_changed=$(slurm_conf | write_if_changed $CONF_DIR/slurm.conf 644)
conf_changed+=$(gres_conf | write_if_changed $CONF_DIR/gres.conf 644)
make_gpu_files
if [[ -n $conf_changed ]]; then stop /run/slurmd.pid; stop /run/slurmctld.pid; fi
if [[ -n $dbd_changed ]]; then stop /run/slurmdbd.pid; fi

if ! running /run/slurmdbd.pid; then
    say "starting slurmdbd"
    slurmdbd </dev/null >>$LOG_DIR/slurmdbd.out 2>&1
fi
wait_for slurmdbd sacctmgr -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

if ! running /run/slurmctld.pid; then
    say "starting slurmctld"
    slurmctld </dev/null >>$LOG_DIR/slurmctld.out 2>&1
fi
wait_for slurmctld bash -c 'scontrol ping | grep -q UP'
if ! running /run/slurmd.pid; then
    say "starting slurmd"
    slurmd </dev/null >>$LOG_DIR/slurmd.out 2>&1
fi
if ! wait_for "node $NODE" node_ready; then
    scontrol update nodename="$NODE" state=resume 2>/dev/null || true
    wait_for "node $NODE" node_ready
fi
wait_for sacct sacct -n -X --starttime now-1minutes
say "SLURM up: partitions $(sinfo -h -o '%R' | tr '\n' ' ')on $NODE ($CPUS CPUs, cluster $CLUSTER)"
