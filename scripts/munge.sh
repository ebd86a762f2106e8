# Sourced by scripts/local_slurm.sh and scripts/local_slurm_multinode.sh (each defines
# `die`): the munge daemon both clusters authenticate with.

# start_munge DIR: reuse a munged that already authenticates (the other script's, or the
# machine's); else start one and record its pid in DIR/munged.pid, so that the caller's
# `stop` stops only a munged it started.
start_munge() {
    local dir=$1
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    runuser -u munge -- munged --force --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$dir/munged.pid"
    munge -n | unmunge >/dev/null || die "munge does not authenticate"
}
