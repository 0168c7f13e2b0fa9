#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian's slurm-wlm + munge, no accounting
# database) to try the SLURM profile without a real cluster. Needs root. Afterwards:
#   pytest -m slurm            or            snakemake all --profile workflow/profiles/slurm \
#       --slurm-status-command squeue --slurm-no-account --default-resources slurm_partition=cpu ...
set -euo pipefail
command -v slurmctld >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; }
mkdir -p /etc/slurm /var/spool/ct25d-slurmctld /var/spool/ct25d-slurmd /var/log/slurm /run/munge
chown munge:munge /run/munge && chmod 711 /run/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mem=$(( $(free -m | awk '/Mem:/{print $2}') - 2048 ))
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ct25d-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/ct25d-slurmctld
SlurmdSpoolDir=/var/spool/ct25d-slurmd
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x munged >/dev/null || runuser -u munge -- munged --socket=/run/munge/munge.socket.2
# Foreground daemons detached with setsid: the classic daemon mode needs pid-file paths that
# Debian's package does not create.
pgrep -x slurmctld >/dev/null || { setsid -f slurmctld -D -i >>/var/log/slurm/slurmctld.out 2>&1; sleep 2; }
pgrep -x slurmd >/dev/null || setsid -f slurmd -D -N localhost >>/var/log/slurm/slurmd.out 2>&1
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && { sinfo; exit 0; }; sleep 1; done
echo "SLURM did not come up; see /var/log/slurm/" >&2
exit 1
