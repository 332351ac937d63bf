# Shared by the scripts/bench-* benchmarks (sourced, not run).
#
# Deleting many files slows down creating files for minutes afterwards on ext4
# without a journal (as on these machines): before it reuses an inode, ext4
# checks whether it was freed in the last minute (six while its inode table block
# is dirty) and skips it if so, so each new file scans past every inode freed
# recently. Measured here: 3000 file creations took 2.4 s right after a
# `rm -rf` of 20000 files, 0.6-1.8 s two to four minutes later, 0.18 s after six.
# Whichever tool runs first after a cleanup would pay for it. So the benchmarks
# never delete between timed steps; each deletes its outputs at the end and
# notes the time, and the next one waits until six minutes have passed (set
# BENCH_NO_WAIT=1 to skip the wait, e.g. on a filesystem with a journal).
# Deletions by anything else on the machine are not seen: run the benchmarks on
# an otherwise quiet machine.

bench_settle=360

# bench_wait_for_cleanup DIR: waits until the last cleanup noted in DIR is
# $bench_settle seconds old.
bench_wait_for_cleanup() {
    local stamp=$1/.last-cleanup
    [ -f "$stamp" ] && [ "${BENCH_NO_WAIT:-}" != 1 ] || return 0
    local left=$(( $(stat -c %Y "$stamp") + bench_settle - $(date +%s) ))
    if [ "$left" -gt 0 ]; then
        echo "waiting ${left}s: the last benchmark's cleanup would still slow down file creation (see scripts/bench-lib.sh)" >&2
        sleep "$left"
    fi
}

# bench_cleanup DIR PATH...: deletes PATHs and notes the time in DIR.
bench_cleanup() {
    local dir=$1; shift
    rm -rf "$@"
    sync
    touch "$dir/.last-cleanup"
}

# measure NAME CMD...: runs CMD once, appending "wall-seconds peak-RSS-KiB" to
# $dir/NAME.times (stderr in $dir/NAME.err; a failure stops the benchmark). Each
# tool starts with no dirty pages of the previous step still to be written back:
# that write-back would otherwise land on whoever runs next.
measure() {
    local name=$1; shift
    sync
    /usr/bin/time -f "%e %M" -o "$dir/time.out" "$@" >/dev/null 2>"$dir/$name.err" || {
        echo "$name failed:"; cat "$dir/$name.err"; exit 1; }
    cat "$dir/time.out" >> "$dir/$name.times"
}

# median: the median of the numbers on stdin, one a line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# bench_move_aside DIR PATH...: moves the PATHs that exist (leftovers of an earlier
# run) into a new $trash folder in DIR, to be deleted by bench_cleanup at the end.
bench_move_aside() {
    local dir=$1; shift
    trash=$dir/trash.$$
    mkdir -p "$trash"
    local old
    for old in "$@"; do
        if [ -e "$old" ] || [ -L "$old" ]; then mv "$old" "$trash/"; fi
    done
}
# bench_start_registry DIR: an empty distribution registry (docker-registry) storing
# in DIR/data, its access log in DIR/log, on a free loopback port; sets $port,
# adds its pid to $bench_registry_pids (kill them on exit) and waits until it
# answers (the benchmark stops with its log if it does not).
bench_registry_pids=()
bench_start_registry() {
    local reg=$1
    mkdir -p "$reg"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$reg/config.yml" <<YAML
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $reg/data
http:
  addr: 127.0.0.1:$port
YAML
    docker-registry serve "$reg/config.yml" > "$reg/log" 2>&1 &
    bench_registry_pids+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && return 0; sleep 0.1; done
    echo "the registry did not start:"; cat "$reg/log"; exit 1
}
# bench_stop_registries: kills the registries bench_start_registry started.
bench_stop_registries() {
    local p
    for p in "${bench_registry_pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
