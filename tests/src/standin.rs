//! The stand-in for the CNB lifecycle's `creator`: the one test double of
//! locald's build tests (the real lifecycle cannot be installed where they run).
//!
//! [`CREATOR`] is a POSIX sh script, installed as `/cnb/lifecycle/creator` by
//! [`BuilderSpec::busybox`](crate::builder::BuilderSpec::busybox). It runs under
//! dash with coreutils on the host (the native runner) and under busybox sh in
//! a builder's root (the container runner). It checks the contract of a
//! Platform API 0.12+ `creator` invocation and fails loudly, exit
//! [`EXIT_INVALID_ARGS`] with `ERROR: stand-in creator: <what is wrong>` on
//! stderr, when anything is off:
//!
//! - flags: `-app -layers -platform -cache-dir -run-image -layout -layout-dir
//!   -uid -gid` required; `-log-level`, `-skip-restore`, `-buildpacks`, `-order`,
//!   `-run`, `-launcher` optional (the last four default to `/cnb/...`, so the
//!   native runner must pass them); `-flag=value` is accepted as Go's flag
//!   package does; any other flag fails; the output image name must be the last
//!   argument;
//! - environment: `CNB_PLATFORM_API` one of the `[apis.platform] supported` of
//!   the `lifecycle.toml` next to the script (and 0.12 or later),
//!   `CNB_EXPERIMENTAL_MODE=warn`, `LOCALD_TEST_BUILDER_ENV=from-builder-config`
//!   (from the builder's config `Env`), `CNB_USER_ID` and `CNB_GROUP_ID` set;
//! - user: started by root, it hands the layers and cache directories to
//!   `-uid`/`-gid` and becomes them (util-linux `setpriv`), as the lifecycle's
//!   `priv.EnsureOwner`/`priv.RunAs` do; not root, `-uid`/`-gid` must be its own
//!   ids (else exit [`EXIT_FAILED`], `failed to exec as user`); either way the uid
//!   is looked up in `/etc/passwd` for `HOME` and `USER` (unknown: exit
//!   [`EXIT_FAILED`], `user: unknown userid N`); a `CNB_PLATFORM_API` the
//!   lifecycle does not list exits [`EXIT_INCOMPATIBLE_PLATFORM_API`];
//! - directories: app readable and writable, layers, cache and layout dir
//!   writable (a file is created and removed, as the build user), platform
//!   readable; the order file, and every buildpack it names under the
//!   buildpacks dir; the launcher (`-launcher`, else `/cnb/lifecycle/launcher`)
//!   an executable file;
//! - run image: a single-manifest OCI layout at
//!   `<layout-dir>/<layout path of -run-image>` ([`layout_path_for`]), every
//!   blob present and hashing to its digest.
//!
//! It reports `[probe] launcher PATH` and `[probe] build-config-dir DIR` (the
//! value of `CNB_BUILD_CONFIG_DIR`, `unset` without it: never required).
//!
//! Then it builds as the lifecycle does, in miniature (`===> DETECTING`,
//! `===> RESTORING`, `===> BUILDING`, `===> EXPORTING`, `Saving <image>...`):
//! each `[[order]]` group in turn, each buildpack's `bin/detect` run in the app
//! directory unless its `[[targets]]` miss the run image's os/arch (an error, as
//! is a detect exit other than 0 or 100: exit 21); the first group that passes
//! goes to `<layers>/group.toml` (`[[group]]` with `id`, `version`, `api`;
//! nothing when detection fails, exit 20). Layers marked `cache = true` in an
//! earlier build come back from the cache directory (not with `-skip-restore`).
//! Each buildpack's `bin/build LAYERS PLATFORM PLAN` runs in the app directory
//! (`Running build for buildpack ID@VERSION` first, at `-log-level debug` only;
//! a failure is exit 51). The export writes a single-manifest OCI layout at
//! `<layout-dir>/<layout path of the image name>`: the run image's layers (Docker
//! media types rewritten to OCI), then a gzip layer for each `launch = true`
//! layer, the app (at the `-app` path), the launcher, the launch config and the
//! process types (`/cnb/process/TYPE`, the default process the entrypoint); the
//! labels `io.buildpacks.build.metadata` (buildpacks, processes) and
//! `io.buildpacks.lifecycle.metadata` (each layer's diff id by role), and the tag
//! as `org.opencontainers.image.ref.name`, as the lifecycle's layout export
//! names it. A layer whose content the previous image at that path already has
//! is reused (`Reusing layer 'ID'`), not written again when its blob is absent.
//! As the lifecycle's, the layouts may be sparse: a run image or previous image
//! layer whose blob is absent is taken from the config (its diff ID), and the
//! export then lacks that blob too.
//!
//! What a build does is the test buildpacks' business
//! ([`crate::builder::BUSYBOX_BUILD`]): files in the app select behaviours
//! ([`FAIL_DETECT`], [`FAIL_BUILD`], [`WAIT_FOR_SIGNAL`], [`PROBE_SANDBOX`]),
//! and lines starting with `[probe] ` are for the tests ([`probes`],
//! [`probe_value`]).

use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// The `/cnb/lifecycle/creator` script.
pub const CREATOR: &str = r##"#!/bin/sh
# locald-tests stand-in for the CNB lifecycle's `creator` (Platform API 0.12+).
#
# Called as the launcher (`/cnb/lifecycle/launcher`, or a `/cnb/process/TYPE`
# link to it, in an exported image) it is the launcher instead: it finds the
# process type's command in <layers>/config/metadata.toml, puts the launch
# layers' bin directories on PATH, and runs it in the app directory with the
# arguments it was given, as the lifecycle's launcher does.
case $0 in
*/cnb/process/* | */launcher)
    l_layers=${CNB_LAYERS_DIR:-/layers}
    l_app=${CNB_APP_DIR:-/workspace}
    l_type=$(basename "$0")
    [ "$l_type" = launcher ] && l_type=${CNB_PROCESS_TYPE:-}
    l_cmd=$(awk -v t="$l_type" '
        /^[[:space:]]*\[\[processes\]\]/ { ty = "" }
        /^[[:space:]]*type[[:space:]]*=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); ty = v }
        /^[[:space:]]*command[[:space:]]*=/ && ty == t { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); print v; exit }
    ' "$l_layers/config/metadata.toml" 2>/dev/null)
    if [ -z "$l_cmd" ]; then
        echo "ERROR: failed to launch: process type '$l_type' not found" >&2
        exit 1
    fi
    for l_bin in "$l_layers"/*/*/bin; do
        [ -d "$l_bin" ] && PATH=$l_bin:$PATH
    done
    export PATH
    cd "$l_app" || exit 1
    exec "$l_cmd" "$@"
    ;;
esac
#
# The real lifecycle cannot be installed where locald's tests run, so this script
# checks the contract locald gives it (flags, environment, user, directories, the
# launcher, the run image in the layout dir) and fails loudly, exit 3 (the
# lifecycle's invalid-arguments code), naming what is wrong. Then it does what the
# lifecycle does where a build depends on it: drop privileges, detect (each
# buildpack's bin/detect, with [[targets]] filtering), restore cache layers,
# build (each bin/build), and export an OCI image into the layout dir (gzip
# layers, layers of the previous image reused). Lines starting with `[probe] `
# are for the tests.
#
# POSIX sh only: it runs under dash with coreutils on the host (native runner) and
# under busybox sh inside the sandbox (container runner).
set -u

fail() {
    echo "ERROR: stand-in creator: $*" >&2
    [ -z "${plan_dir:-}" ] || rm -rf "$plan_dir"
    exit 3
}
probe() {
    echo "[probe] $*"
}

# The one place that maps an image reference to its directory in the layout dir,
# as the lifecycle does (layout.ParseRefToPath over go-containerregistry's name
# package): <registry>/<repository>/<tag>, or .../<algorithm>/<hex> for a digest.
# Docker Hub is index.docker.io, its one-word repositories are under library/; the
# first component is a registry only when it holds a '.' or a ':'; the tag defaults
# to latest.
layout_path() {
    lp_ref=$1
    case $lp_ref in
    *@*)
        lp_name=${lp_ref%%@*}
        lp_id=${lp_ref#*@}
        lp_id=${lp_id%%:*}/${lp_id#*:}
        case ${lp_name##*/} in
        *:*) lp_name=${lp_name%:*} ;;
        esac
        ;;
    *)
        case ${lp_ref##*/} in
        *:*)
            lp_name=${lp_ref%:*}
            lp_id=${lp_ref##*:}
            ;;
        *)
            lp_name=$lp_ref
            lp_id=latest
            ;;
        esac
        ;;
    esac
    lp_reg=index.docker.io
    lp_repo=$lp_name
    case $lp_name in
    */*)
        case ${lp_name%%/*} in
        *.* | *:*)
            lp_reg=${lp_name%%/*}
            lp_repo=${lp_name#*/}
            ;;
        esac
        ;;
    esac
    if [ "$lp_reg" = docker.io ]; then
        lp_reg=index.docker.io
    fi
    if [ "$lp_reg" = index.docker.io ]; then
        case $lp_repo in
        */*) ;;
        *) lp_repo=library/$lp_repo ;;
        esac
    fi
    echo "$lp_reg/$lp_repo/$lp_id"
}

# Test hook, never passed by locald (the lifecycle has no double-dash flags).
if [ "${1:-}" = "--layout-path-of" ]; then
    layout_path "$2"
    exit 0
fi

# ---------------------------------------------------------------------------
# Privileges, as the lifecycle's creator does before anything else: started by
# root it hands the layers and cache directories to -uid/-gid (priv.EnsureOwner)
# and drops to them (priv.RunAs: here a re-exec through setpriv); then, root or
# not, it looks the uid up in /etc/passwd and sets HOME and USER from it
# (priv.SetEnvironmentForUser; an unknown uid fails, exit 1).

pre_uid= pre_gid= pre_layers= pre_cache=
pre_next=
for a in "$@"; do
    if [ -n "$pre_next" ]; then
        eval "$pre_next=\$a"
        pre_next=
        continue
    fi
    case $a in
    -uid=*) pre_uid=${a#*=} ;;
    -gid=*) pre_gid=${a#*=} ;;
    -layers=*) pre_layers=${a#*=} ;;
    -cache-dir=*) pre_cache=${a#*=} ;;
    -uid) pre_next=pre_uid ;;
    -gid) pre_next=pre_gid ;;
    -layers) pre_next=pre_layers ;;
    -cache-dir) pre_next=pre_cache ;;
    esac
done
# (Bad values are left to the flag parsing below, which fails with exit 3.)
case $pre_uid in *[!0-9]*) pre_uid= ;; esac
case $pre_gid in *[!0-9]*) pre_gid= ;; esac
# (util-linux setpriv: busybox's cannot switch ids. Inside the sandbox the creator
# starts as the build user, so only a native run by root gets here.)
if [ "$(id -u)" = 0 ] && [ -n "$pre_uid" ] && [ -n "$pre_gid" ] && [ "$pre_uid" != 0 ]; then
    for d in "$pre_cache" "$pre_layers"; do
        [ -n "$d" ] && [ -d "$d" ] || continue
        d_owner=$(stat -c %u "$d")
        [ "$d_owner" = "$pre_uid" ] && continue
        chown -R "$pre_uid:$pre_gid" "$d" || {
            echo "ERROR: failed to chown volumes: cannot chown $d" >&2
            exit 1
        }
    done
    command -v setpriv >/dev/null 2>&1 || {
        echo "ERROR: failed to exec as user $pre_uid:$pre_gid: no setpriv to drop privileges with" >&2
        exit 1
    }
    exec setpriv --reuid "$pre_uid" --regid "$pre_gid" --clear-groups -- "$0" "$@"
fi
if [ -n "$pre_uid" ]; then
    if [ "$(id -u)" != "$pre_uid" ] || { [ -n "$pre_gid" ] && [ "$(id -g)" != "$pre_gid" ]; }; then
        echo "ERROR: failed to exec as user $pre_uid:$pre_gid: operation not permitted (running as uid $(id -u) gid $(id -g))" >&2
        exit 1
    fi
    pw_line=$(awk -F: -v u="$pre_uid" '$3 == u { print; exit }' /etc/passwd 2>/dev/null)
    if [ -z "$pw_line" ]; then
        echo "ERROR: failed to set environment for user $pre_uid: user: unknown userid $pre_uid" >&2
        exit 1
    fi
    HOME=$(echo "$pw_line" | cut -d: -f6)
    USER=$(echo "$pw_line" | cut -d: -f5 | cut -d, -f1)
    export HOME USER
fi

# ---------------------------------------------------------------------------
# Flags

app= layers= platform= cache_dir= run_image= layout=false layout_dir= uid= gid=
log_level= skip_restore=false buildpacks= order= run_toml= launcher= image= process_type=
[ $# -gt 0 ] || fail "no arguments: expected the creator's flags and the output image name last"
while [ $# -gt 0 ]; do
    flag=$1
    value=
    has_value=false
    case $flag in
    -*=*)
        value=${flag#*=}
        flag=${flag%%=*}
        has_value=true
        ;;
    esac
    case $flag in
    -app | -layers | -platform | -cache-dir | -run-image | -layout-dir | -uid | -gid | \
        -log-level | -buildpacks | -order | -run | -launcher | -process-type)
        if [ "$has_value" = false ]; then
            [ $# -ge 2 ] || fail "flag $flag needs a value"
            value=$2
            shift
        fi
        shift
        [ -n "$value" ] || fail "flag $flag has an empty value"
        case $flag in
        -app) app=$value ;;
        -layers) layers=$value ;;
        -platform) platform=$value ;;
        -cache-dir) cache_dir=$value ;;
        -run-image) run_image=$value ;;
        -layout-dir) layout_dir=$value ;;
        -uid) uid=$value ;;
        -gid) gid=$value ;;
        -log-level) log_level=$value ;;
        -buildpacks) buildpacks=$value ;;
        -order) order=$value ;;
        -run) run_toml=$value ;;
        -launcher) launcher=$value ;;
        -process-type) process_type=$value ;;
        esac
        ;;
    -layout | -skip-restore | -no-color)
        [ "$has_value" = false ] || fail "flag $flag takes no value (got $1)"
        case $flag in
        -layout) layout=true ;;
        -skip-restore) skip_restore=true ;;
        esac
        shift
        ;;
    -*)
        fail "unknown flag $flag (the stand-in accepts -app -layers -platform -cache-dir -run-image -layout -layout-dir -uid -gid -log-level -skip-restore -no-color -buildpacks -order -run -launcher -process-type)"
        ;;
    *)
        [ $# -eq 1 ] || fail "unexpected argument '$1' before the end: the output image name must be the last argument"
        image=$1
        shift
        ;;
    esac
done

[ -n "$image" ] || fail "missing the output image name (the last argument)"
for required in app:-app layers:-layers platform:-platform cache_dir:-cache-dir \
    run_image:-run-image layout_dir:-layout-dir uid:-uid gid:-gid; do
    eval "v=\${${required%%:*}}"
    [ -n "$v" ] || fail "missing flag ${required#*:}"
done
[ "$layout" = true ] || fail "missing flag -layout: locald exports into an OCI layout (with -layout-dir)"
case $uid in '' | *[!0-9]*) fail "-uid '$uid' is not a number" ;; esac
case $gid in '' | *[!0-9]*) fail "-gid '$gid' is not a number" ;; esac
case $log_level in
'' | debug | info | warn | error) ;;
*) fail "-log-level '$log_level' is not one of debug, info, warn, error" ;;
esac

# ---------------------------------------------------------------------------
# Environment

lifecycle_dir=$(cd "$(dirname "$0")" && pwd) || fail "cannot find the directory of $0"
lifecycle_toml=$lifecycle_dir/lifecycle.toml
[ -r "$lifecycle_toml" ] || fail "cannot read $lifecycle_toml next to the creator"
supported=$(sed -n '/^\[apis\.platform\]/,/^\[/p' "$lifecycle_toml" |
    sed -n 's/^[[:space:]]*supported[[:space:]]*=[[:space:]]*\[\(.*\)\].*/\1/p' |
    tr -d '" ' | tr ',' ' ')
[ -n "$supported" ] || fail "$lifecycle_toml lists no supported Platform API"
api_fail() { # the lifecycle's CodeForIncompatiblePlatformAPI
    echo "ERROR: $*" >&2
    exit 11
}
[ -n "${CNB_PLATFORM_API:-}" ] || api_fail "failed to get platform API version; please set 'CNB_PLATFORM_API' to specify the desired platform API version (supported: $supported)"
api_ok=false
for v in $supported; do
    [ "$v" = "$CNB_PLATFORM_API" ] && api_ok=true
done
[ "$api_ok" = true ] || api_fail "failed to set platform API: platform API version '$CNB_PLATFORM_API' is incompatible with the lifecycle (supported: $supported)"
case $CNB_PLATFORM_API in
0.[0-9] | 0.1[01]) fail "CNB_PLATFORM_API=$CNB_PLATFORM_API cannot export to an OCI layout: that needs 0.12 or later" ;;
esac
[ "${CNB_EXPERIMENTAL_MODE:-}" = warn ] ||
    fail "CNB_EXPERIMENTAL_MODE must be 'warn' for -layout (got '${CNB_EXPERIMENTAL_MODE:-<unset>}')"
[ "${LOCALD_TEST_BUILDER_ENV:-}" = from-builder-config ] ||
    fail "LOCALD_TEST_BUILDER_ENV must be 'from-builder-config' (the builder image's config Env did not reach the lifecycle; got '${LOCALD_TEST_BUILDER_ENV:-<unset>}')"
[ -n "${CNB_USER_ID:-}" ] || fail "CNB_USER_ID is not set (the builder image's config Env did not reach the lifecycle)"
[ -n "${CNB_GROUP_ID:-}" ] || fail "CNB_GROUP_ID is not set (the builder image's config Env did not reach the lifecycle)"

# ---------------------------------------------------------------------------
# User

cur_uid=$(id -u) || fail "id -u failed"
cur_gid=$(id -g) || fail "id -g failed"
# (dropped to -uid/-gid above, as the lifecycle does)
probe "user uid=$cur_uid gid=$cur_gid home=${HOME:-} user=${USER:-}"

# ---------------------------------------------------------------------------
# Directories

must_write() { # DIR WHAT
    [ -d "$1" ] || fail "$2 directory $1 does not exist"
    mw_probe=$1/.locald-standin-probe.$$
    (: >"$mw_probe") 2>/dev/null || fail "$2 directory $1 is not writable by uid $cur_uid"
    rm -f "$mw_probe" || fail "cannot remove $mw_probe"
}
[ -d "$app" ] && [ -r "$app" ] && [ -x "$app" ] || fail "app directory $app is not a readable directory"
ls "$app" >/dev/null 2>&1 || fail "cannot list the app directory $app"
must_write "$app" app
must_write "$layers" layers
must_write "$cache_dir" cache
must_write "$layout_dir" layout
[ -d "$platform" ] && [ -r "$platform" ] && [ -x "$platform" ] ||
    fail "platform directory $platform is not a readable directory"

order_file=${order:-/cnb/order.toml}
[ -r "$order_file" ] || fail "order file $order_file is not readable (pass -order FILE when /cnb is not at the root)"
buildpacks_dir=${buildpacks:-/cnb/buildpacks}
[ -d "$buildpacks_dir" ] || fail "buildpacks directory $buildpacks_dir does not exist (pass -buildpacks DIR when /cnb is not at the root)"
if [ -n "$run_toml" ]; then
    [ -r "$run_toml" ] || fail "run file $run_toml is not readable"
fi
launcher_path=${launcher:-/cnb/lifecycle/launcher}
[ -f "$launcher_path" ] && [ -x "$launcher_path" ] ||
    fail "launcher $launcher_path is not an executable file (pass -launcher PATH when /cnb is not at the root)"

# The order: one line "N ID VERSION" per buildpack, N the number of its [[order]]
# group (id before version in each [[order.group]], as pack writes them).
order_lines=$(awk '
    function flush() {
        if (id != "" && v != "") print n + 0, id, v, (opt ? "optional" : "required")
        id = ""; v = ""; opt = 0
    }
    /^[[:space:]]*\[\[order\]\]/ { flush(); n++; next }
    /^[[:space:]]*\[\[order\.group\]\]/ { flush(); next }
    /^[[:space:]]*id[[:space:]]*=/ { id = $0; sub(/^[^"]*"/, "", id); sub(/".*/, "", id); next }
    /^[[:space:]]*version[[:space:]]*=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); next }
    /^[[:space:]]*optional[[:space:]]*=[[:space:]]*true/ { opt = 1 }
    END { flush() }
' "$order_file") || fail "cannot read $order_file"
[ -n "$order_lines" ] || fail "$order_file names no buildpack"

bp_dir_of() { # ID VERSION
    echo "$buildpacks_dir/$(echo "$1" | tr / _)/$2"
}

# ---------------------------------------------------------------------------
# The run image: a single-manifest OCI layout at its layout path

flat() { # FILE: the JSON on one line
    tr -d '\n\r\t' <"$1"
}
blob_path() { # LAYOUT DIGEST
    echo "$1/blobs/${2%%:*}/${2#*:}"
}
check_blob() { # LAYOUT DIGEST WHAT
    cb_path=$(blob_path "$1" "$2")
    [ -f "$cb_path" ] || fail "$3 blob $2 is missing from $1"
    cb_sum=$(sha256sum <"$cb_path" | cut -d' ' -f1)
    [ "sha256:$cb_sum" = "$2" ] || fail "$3 blob $cb_path does not hash to $2 (sha256:$cb_sum)"
}

run_rel=$(layout_path "$run_image")
run_dir=$layout_dir/$run_rel
[ -d "$run_dir" ] || fail "run image $run_image is not in the layout dir at $run_rel ($run_dir does not exist)"
[ -f "$run_dir/oci-layout" ] || fail "run image layout $run_dir has no oci-layout file"
grep -q imageLayoutVersion "$run_dir/oci-layout" || fail "$run_dir/oci-layout has no imageLayoutVersion"
[ -f "$run_dir/index.json" ] || fail "run image layout $run_dir has no index.json"
run_index=$(flat "$run_dir/index.json")
n=$(printf "%s\n" "$run_index" | grep -o 'sha256:[0-9a-f]\{64\}' | wc -l | tr -d ' ')
[ "$n" = 1 ] || fail "run image layout $run_dir/index.json must list exactly one manifest (found $n digests)"
run_manifest_digest=$(printf "%s\n" "$run_index" | grep -o 'sha256:[0-9a-f]\{64\}')
check_blob "$run_dir" "$run_manifest_digest" "run image manifest"
run_manifest=$(flat "$(blob_path "$run_dir" "$run_manifest_digest")")
case $run_manifest in
*'"layers"'*) ;;
*) fail "run image manifest $run_manifest_digest is not an image manifest (no layers)" ;;
esac
run_config_digest=$(printf "%s\n" "$run_manifest" |
    sed -n 's/.*"config"[[:space:]]*:[[:space:]]*{[^}]*"digest"[[:space:]]*:[[:space:]]*"\(sha256:[0-9a-f]*\)".*/\1/p')
[ -n "$run_config_digest" ] || fail "run image manifest $run_manifest_digest has no config digest"
check_blob "$run_dir" "$run_config_digest" "run image config"
run_layers=$(printf "%s\n" "$run_manifest" | sed -n 's/.*"layers"[[:space:]]*:[[:space:]]*\[\([^]]*\)\].*/\1/p')
run_layer_digests=$(printf "%s\n" "$run_layers" | grep -o 'sha256:[0-9a-f]\{64\}')
# A layer blob may be absent (a sparse layout): the lifecycle then takes the
# layer's diff ID from the config, and does not write the layer when it exports.
for d in $run_layer_digests; do
    [ -e "$(blob_path "$run_dir" "$d")" ] || continue
    check_blob "$run_dir" "$d" "run image layer"
done
run_config=$(flat "$(blob_path "$run_dir" "$run_config_digest")")
run_diff_ids=$(printf "%s\n" "$run_config" | sed -n 's/.*"diff_ids"[[:space:]]*:[[:space:]]*\[\([^]]*\)\].*/\1/p')
run_arch=$(printf "%s\n" "$run_config" | sed -n 's/.*"architecture"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
run_os=$(printf "%s\n" "$run_config" | sed -n 's/.*"os"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
run_stack=$(printf "%s\n" "$run_config" | sed -n 's/.*"io\.buildpacks\.stack\.id"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')

probe "contract ok platform-api=$CNB_PLATFORM_API uid=$cur_uid gid=$cur_gid run-image=$run_image"
probe "launcher $launcher_path"
probe "build-config-dir ${CNB_BUILD_CONFIG_DIR:-unset}"
if [ "$log_level" = debug ]; then
    echo "Debug: app=$app layers=$layers platform=$platform cache=$cache_dir layout=$layout_dir"
fi

# ---------------------------------------------------------------------------
# Detect: as the lifecycle does, each [[order]] group in turn, each buildpack's
# bin/detect run in the app directory (PLATFORM_DIR PLAN_PATH; 0 passes, 100
# fails, anything else is an error); the first group whose buildpacks all pass
# is written to <layers>/group.toml.

# Every buildpack of the order must be there (the lifecycle reads them all).
while read -r g_no g_id g_version g_opt; do
    [ -r "$(bp_dir_of "$g_id" "$g_version")/buildpack.toml" ] ||
        fail "buildpack $g_id@$g_version is not at $(bp_dir_of "$g_id" "$g_version")"
done <<EOF
$order_lines
EOF

echo "===> ANALYZING"
echo "Image with name \"$image\" not found"
echo "===> DETECTING"
plan_dir=$layers/.locald-standin-plan
mkdir -p "$plan_dir" || fail "cannot create $plan_dir"
group=
detect_errors=false
for g_no in $(printf '%s\n' "$order_lines" | cut -d' ' -f1 | uniq); do
    members=$(printf '%s\n' "$order_lines" | awk -v n="$g_no" '$1 == n { print $2, $3, $4 }')
    # A group passes when every required buildpack passes and at least one does;
    # an optional one that fails is left out of it.
    passed=true
    participants=
    while read -r g_id g_version g_opt; do
        g_dir=$(bp_dir_of "$g_id" "$g_version")
        [ -r "$g_dir/buildpack.toml" ] || fail "buildpack $g_id@$g_version is not at $g_dir"
        [ -x "$g_dir/bin/detect" ] || fail "buildpack $g_id@$g_version has no bin/detect"
        # Platform API 0.12+: a buildpack whose [[targets]] the run image does not
        # satisfy (os and arch; empty is a wildcard) is an error, not run.
        g_targets=$(awk '
            /^\[\[targets\]\]/ { if (t) print os "/" arch; t = 1; os = ""; arch = ""; next }
            /^\[/ { if (t) print os "/" arch; t = 0; next }
            t && /^[[:space:]]*os[[:space:]]*=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); os = v }
            t && /^[[:space:]]*arch[[:space:]]*=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); arch = v }
            END { if (t) print os "/" arch }
        ' "$g_dir/buildpack.toml")
        g_match=false
        [ -n "$g_targets" ] || g_match=true
        for g_t in $g_targets; do
            g_os=${g_t%/*}
            g_arch=${g_t#*/}
            if { [ -z "$g_os" ] || [ -z "$run_os" ] || [ "$g_os" = "$run_os" ]; } &&
                { [ -z "$g_arch" ] || [ -z "$run_arch" ] || [ "$g_arch" = "$run_arch" ]; }; then
                g_match=true
            fi
        done
        if [ "$g_match" = false ] && [ "$g_opt" = required ]; then
            echo "======== Error: $g_id@$g_version ========"
            echo "unable to satisfy target os/arch constraints; run image: {\"os\":\"$run_os\",\"arch\":\"$run_arch\"}, buildpack: $g_targets"
            echo "err:  $g_id@$g_version"
            detect_errors=true
            passed=false
            continue
        fi
        : >"$plan_dir/plan.toml"
        (cd "$app" && CNB_BUILDPACK_DIR=$g_dir CNB_PLATFORM_DIR=$platform \
            CNB_BUILD_PLAN_PATH=$plan_dir/plan.toml \
            "$g_dir/bin/detect" "$platform" "$plan_dir/plan.toml" </dev/null) >"$plan_dir/out" 2>&1
        code=$?
        if [ -s "$plan_dir/out" ] &&
            { [ "$log_level" = debug ] || { [ "$code" -ne 0 ] && [ "$code" -ne 100 ]; }; }; then
            echo "======== Output: $g_id@$g_version ========"
            cat "$plan_dir/out"
        fi
        case $code in
        0)
            participants="$participants$g_id $g_version
"
            ;;
        100) [ "$g_opt" = optional ] || passed=false ;;
        *)
            echo "err:  $g_id@$g_version ($code)"
            detect_errors=true
            [ "$g_opt" = optional ] || passed=false
            ;;
        esac
    done <<EOF
$members
EOF
    if [ "$passed" = true ] && [ -n "$participants" ]; then
        group=${participants%?}
        n_members=$(printf '%s\n' "$members" | wc -l | tr -d ' ')
        n_group=$(printf '%s\n' "$group" | wc -l | tr -d ' ')
        [ "$n_group" = "$n_members" ] || echo "$n_group of $n_members buildpacks participating"
        break
    fi
done
rm -rf "$plan_dir"
if [ -z "$group" ]; then
    echo "======== Results ========"
    echo "ERROR: No buildpack groups passed detection." >&2
    if [ "$detect_errors" = true ]; then
        echo "ERROR: failed to detect: buildpack(s) failed with err" >&2
        exit 21
    fi
    echo "ERROR: failed to detect: no buildpacks participating" >&2
    exit 20
fi
group_toml=
md_buildpacks=
group_size=0
while read -r g_id g_version; do
    g_dir=$(bp_dir_of "$g_id" "$g_version")
    g_api=$(sed -n 's/^api[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$g_dir/buildpack.toml" | sed -n 1p)
    [ -n "$g_api" ] || fail "$g_dir/buildpack.toml has no api"
    group_toml="$group_toml[[group]]
  id = \"$g_id\"
  version = \"$g_version\"
  api = \"$g_api\"

"
    [ -z "$md_buildpacks" ] || md_buildpacks="$md_buildpacks,"
    md_buildpacks="$md_buildpacks{\\\"id\\\":\\\"$g_id\\\",\\\"version\\\":\\\"$g_version\\\"}"
    group_size=$((group_size + 1))
done <<EOF
$group
EOF
while read -r g_id g_version; do
    echo "$g_id $g_version"
done <<EOF
$group
EOF
printf '%s' "$group_toml" >"$layers/group.toml" || fail "cannot write $layers/group.toml"

# ---------------------------------------------------------------------------
# Restore: the layers a buildpack marked `cache = true` in an earlier build come
# back from the cache directory (not with -skip-restore).

cache_store=$cache_dir/locald-standin-layers
if [ "$skip_restore" = true ]; then
    probe "skip-restore"
else
    echo "===> RESTORING"
    for c in "$cache_store"/*/*.toml; do
        [ -f "$c" ] || continue
        c_bp=$(basename "$(dirname "$c")")
        c_name=$(basename "$c" .toml)
        mkdir -p "$layers/$c_bp" || fail "cannot create $layers/$c_bp"
        rm -rf "${layers:?}/$c_bp/$c_name"
        { cp -R "${c%.toml}" "$layers/$c_bp/$c_name" && cp "$c" "$layers/$c_bp/"; } ||
            fail "cannot restore cache layer $c_bp:$c_name"
        echo "Restoring data for \"$(echo "$c_bp" | tr _ /):$c_name\" from cache"
    done
fi

# ---------------------------------------------------------------------------
# Build: each buildpack of the group in turn, bin/build LAYERS PLATFORM PLAN in
# the app directory; the lifecycle logs "Running build for buildpack" at debug
# level only.

echo "===> BUILDING"
while read -r g_id g_version; do
    if [ "$log_level" = debug ]; then
        echo "Running build for buildpack $g_id@$g_version"
    fi
    g_dir=$(bp_dir_of "$g_id" "$g_version")
    g_layers=$layers/$(echo "$g_id" | tr / _)
    mkdir -p "$g_layers" || fail "cannot create $g_layers"
    : >"$layers/plan.toml"
    if [ -x "$g_dir/bin/build" ]; then
        # In the background so that a SIGINT or SIGTERM reaches the buildpack too
        # (the lifecycle dies of them; its buildpack must not outlive it).
        # (TERM for both: a background job starts with SIGINT ignored.) The traps
        # are set first, so that no signal falls between the start and them.
        bp_pid=
        trap '[ -z "$bp_pid" ] || { kill -TERM "$bp_pid" 2>/dev/null; wait "$bp_pid"; }; exit 130' INT TERM
        (cd "$app" && CNB_BUILDPACK_DIR=$g_dir CNB_LAYERS_DIR=$g_layers \
            CNB_PLATFORM_DIR=$platform CNB_BP_PLAN_PATH=$layers/plan.toml \
            exec "$g_dir/bin/build" "$g_layers" "$platform" "$layers/plan.toml" </dev/null) &
        bp_pid=$!
        wait "$bp_pid"
        code=$?
        trap - INT TERM
        if [ "$code" -ne 0 ]; then
            echo "ERROR: failed to build: exit status $code" >&2
            exit 51
        fi
    fi
    # SBOM files, as the lifecycle's builder moves them: LAYER.sbom.cdx.json of
    # a launch layer to <layers>/sbom/launch/<bp>/LAYER/sbom.cdx.json, and the
    # buildpack's launch.sbom.cdx.json to <layers>/sbom/launch/<bp>/.
    g_esc=$(echo "$g_id" | tr / _)
    for sb in "$g_layers"/*.sbom.cdx.json; do
        [ -f "$sb" ] || continue
        sb_layer=$(basename "$sb" .sbom.cdx.json)
        case $sb_layer in
        launch) sb_dir=$layers/sbom/launch/$g_esc ;;
        build) sb_dir=$layers/sbom/build/$g_esc ;;
        *)
            grep -q '^[[:space:]]*launch[[:space:]]*=[[:space:]]*true' "$g_layers/$sb_layer.toml" 2>/dev/null || continue
            sb_dir=$layers/sbom/launch/$g_esc/$sb_layer
            ;;
        esac
        { mkdir -p "$sb_dir" && cp "$sb" "$sb_dir/sbom.cdx.json"; } || fail "cannot copy the SBOM $sb"
    done
done <<EOF
$group
EOF

# Cache: every layer marked `cache = true` is kept for the next build.
{ rm -rf "$cache_store" && mkdir -p "$cache_store"; } || fail "cannot write $cache_store"
for t in "$layers"/*/*.toml; do
    [ -f "$t" ] || continue
    grep -q '^[[:space:]]*cache[[:space:]]*=[[:space:]]*true' "$t" || continue
    t_bp=$(basename "$(dirname "$t")")
    t_name=$(basename "$t" .toml)
    [ -d "${t%.toml}" ] || continue
    { mkdir -p "$cache_store/$t_bp" && cp -R "${t%.toml}" "$cache_store/$t_bp/$t_name" &&
        cp "$t" "$cache_store/$t_bp/"; } || fail "cannot cache layer $t_bp:$t_name"
done

# ---------------------------------------------------------------------------
# Export, as the lifecycle's exporter does into a layout: the run image's layers,
# then a gzip layer for each launch layer of each buildpack (group order), the
# app, the launcher, the launch config and the process types. Each layer's
# content key is kept in a label; a layer whose key the previous image at the same
# path already has is reused ("Reusing layer"), its blob kept.

export_fail() {
    echo "ERROR: failed to export: $*" >&2
    exit 62
}

echo "===> EXPORTING"
out_rel=$(layout_path "$image")
out=$layout_dir/$out_rel
scratch=$layers/.locald-standin-export
rm -rf "$scratch" || export_fail "cannot clear $scratch"
mkdir -p "$scratch" "$out/blobs/sha256" || export_fail "cannot create $out"

# The previous image's layers: "ID KEY DIGEST DIFF_ID SIZE" lines.
prev_keys=
if [ -f "$out/index.json" ]; then
    prev_manifest_digest=$(flat "$out/index.json" | grep -o 'sha256:[0-9a-f]\{64\}' | sed -n 1p)
    prev_manifest=$(blob_path "$out" "$prev_manifest_digest")
    if [ -n "$prev_manifest_digest" ] && [ -f "$prev_manifest" ]; then
        prev_config_digest=$(flat "$prev_manifest" |
            sed -n 's/.*"config"[[:space:]]*:[[:space:]]*{[^}]*"digest"[[:space:]]*:[[:space:]]*"\(sha256:[0-9a-f]*\)".*/\1/p')
        prev_config=$(blob_path "$out" "$prev_config_digest")
        if [ -n "$prev_config_digest" ] && [ -f "$prev_config" ]; then
            prev_keys=$(flat "$prev_config" |
                sed -n 's/.*"io\.locald\.standin\.layers"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' | tr ';' '\n')
        fi
    fi
fi

content_key() { # DIR: a hash of the tree's names, types, modes and contents
    [ -d "$1" ] || return 1
    (cd "$1" && find . | LC_ALL=C sort | while IFS= read -r f; do
        if [ -L "$f" ]; then
            echo "l $f $(readlink "$f")"
        elif [ -d "$f" ]; then
            echo "d $f $(stat -c %a "$f")"
        else
            echo "f $f $(stat -c %a "$f") $(sha256sum <"$f" | cut -d' ' -f1)"
        fi
    done) | sha256sum | cut -d' ' -f1
}

new_layers=
new_diff_ids=
new_keys=
add_layer() { # ID ROOT: ROOT holds the layer's files at their paths under /
    al_id=$1
    al_root=$2
    al_key=$(content_key "$al_root")
    case $al_key in
    [0-9a-f]*) [ ${#al_key} -eq 64 ] || export_fail "cannot read layer $al_id" ;;
    *) export_fail "cannot read layer $al_id" ;;
    esac
    al_digest= al_diff= al_size= al_reused=false
    read -r al_pdigest al_pdiff al_psize <<EOF_PREV
$(printf '%s\n' "$prev_keys" | awk -v id="$al_id" -v k="$al_key" '$1 == id && $2 == k { print $3, $4, $5; exit }')
EOF_PREV
    # Reused by the previous image's record, whether or not its blob is there
    # (as the lifecycle reuses a layer of a sparse previous image, unwritten).
    if [ -n "$al_pdigest" ]; then
        al_digest=$al_pdigest al_diff=$al_pdiff al_size=$al_psize al_reused=true
        echo "Reusing layer '$al_id'"
    fi
    if [ -z "$al_digest" ]; then
        # The root's top-level names (no word splitting of paths with spaces).
        (cd "$al_root" && set -- * && [ -e "$1" ] && tar -cf - "$@") >"$scratch/layer.tar" ||
            export_fail "cannot tar layer $al_id"
        al_diff=sha256:$(sha256sum <"$scratch/layer.tar" | cut -d' ' -f1)
        gzip -c <"$scratch/layer.tar" >"$scratch/layer.tar.gz" || export_fail "cannot compress layer $al_id"
        al_digest=sha256:$(sha256sum <"$scratch/layer.tar.gz" | cut -d' ' -f1)
        al_size=$(wc -c <"$scratch/layer.tar.gz" | tr -d ' ')
        mv "$scratch/layer.tar.gz" "$(blob_path "$out" "$al_digest")" || export_fail "cannot store layer $al_id"
        rm -f "$scratch/layer.tar"
        echo "Adding layer '$al_id'"
    fi
    new_layers="$new_layers,{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$al_digest\",\"size\":$al_size}"
    new_diff_ids="$new_diff_ids,\"$al_diff\""
    new_keys="$new_keys;$al_id $al_key $al_digest $al_diff $al_size"
}
# The lifecycle's metadata label (io.buildpacks.lifecycle.metadata): each
# layer's diff id by role, as the exporter records them.
md_layers=
md_bp_open=
md_bp_layers=
md_close_bp() {
    if [ -n "$md_bp_open" ]; then
        [ -z "$md_layers" ] || md_layers="$md_layers,"
        md_layers="$md_layers$md_bp_open{$md_bp_layers}}"
    fi
    md_bp_open=
    md_bp_layers=
}

for d in $run_layer_digests; do
    [ -e "$(blob_path "$run_dir" "$d")" ] || continue
    cp "$(blob_path "$run_dir" "$d")" "$(blob_path "$out" "$d")" || export_fail "cannot copy layer $d"
done

# Buildpack layers marked `launch = true`, and the processes of launch.toml.
processes=
proc_cmds=
default_process=
md_processes=
while read -r g_id g_version; do
    g_esc=$(echo "$g_id" | tr / _)
    md_close_bp
    md_bp_open="{\\\"key\\\":\\\"$g_id\\\",\\\"version\\\":\\\"$g_version\\\",\\\"layers\\\":"
    for t in "$layers/$g_esc"/*.toml; do
        [ -f "$t" ] || continue
        t_name=$(basename "$t" .toml)
        case $t_name in launch | build | store) continue ;; esac
        grep -q '^[[:space:]]*launch[[:space:]]*=[[:space:]]*true' "$t" || continue
        [ -d "${t%.toml}" ] || continue
        l_root=$scratch/layer-$g_esc-$t_name
        mkdir -p "$l_root$layers/$g_esc" || export_fail "cannot stage $g_id:$t_name"
        cp -R "${t%.toml}" "$l_root$layers/$g_esc/$t_name" || export_fail "cannot stage $g_id:$t_name"
        add_layer "$g_id:$t_name" "$l_root"
        [ -z "$md_bp_layers" ] || md_bp_layers="$md_bp_layers,"
        md_bp_layers="$md_bp_layers\\\"$t_name\\\":{\\\"sha\\\":\\\"$al_diff\\\",\\\"launch\\\":true}"
    done
    if [ -f "$layers/$g_esc/launch.toml" ]; then
        for p_line in $(awk '
            /^[[:space:]]*\[\[processes\]\]/ { if (type != "") print type ":" def ":" cmd; type = ""; def = "false"; cmd = ""; next }
            /^[[:space:]]*type[[:space:]]*=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); type = v }
            /^[[:space:]]*default[[:space:]]*=[[:space:]]*true/ { def = "true" }
            /^[[:space:]]*command[[:space:]]*=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); cmd = v }
            END { if (type != "") print type ":" def ":" cmd }
        ' "$layers/$g_esc/launch.toml"); do
            p_type=${p_line%%:*}
            p_rest=${p_line#*:}
            processes="$processes $p_type"
            proc_cmds="$proc_cmds $p_type=${p_rest#*:}"
            [ "${p_rest%%:*}" = true ] && default_process=$p_type
            [ -z "$md_processes" ] || md_processes="$md_processes,"
            md_processes="$md_processes{\\\"type\\\":\\\"$p_type\\\",\\\"buildpackID\\\":\\\"$g_id\\\"}"
        done
    fi
done <<EOF
$group
EOF
md_close_bp

# The app, at the path the lifecycle was given (as the real exporter does: run
# natively, that is a host path, and so are WorkingDir and CNB_APP_DIR).
mkdir -p "$scratch/app$app" || export_fail "cannot stage the app"
cp -R "$app/." "$scratch/app$app/" || export_fail "cannot copy the app"
add_layer "slice-1" "$scratch/app" >/dev/null
md_app=$al_diff
# A fault for the tests: an app holding `corrupt-export` gets an app layer blob
# that is not what the manifest says (a byte too many), as a failing disk would.
if [ -e "$app/corrupt-export" ] && [ "$al_reused" = false ]; then
    echo x >>"$(blob_path "$out" "$al_digest")" || export_fail "cannot corrupt"
fi
if [ "$al_reused" = true ]; then
    echo "Reusing 1/1 app layer(s)"
else
    echo "Adding 1/1 app layer(s)"
fi

# The launcher, the launch config and a /cnb/process link per process type.
mkdir -p "$scratch/launcher/cnb/lifecycle" || export_fail "cannot stage the launcher"
cp "$launcher_path" "$scratch/launcher/cnb/lifecycle/launcher" || export_fail "cannot copy the launcher"
add_layer "buildpacksio/lifecycle:launcher" "$scratch/launcher"
md_launcher=$al_diff
mkdir -p "$scratch/config$layers/config" || export_fail "cannot stage the config"
{
    for p_type in $processes; do
        p_cmd=
        for pc in $proc_cmds; do
            [ "${pc%%=*}" = "$p_type" ] && p_cmd=${pc#*=}
        done
        printf '[[processes]]\n  type = "%s"\n  command = ["%s"]\n' "$p_type" "$p_cmd"
    done
    printf '\n'
    printf '%s' "$group_toml" | sed 's/^\[\[group\]\]/[[buildpacks]]/'
} >"$scratch/config$layers/config/metadata.toml" || export_fail "cannot write the launch metadata"
add_layer "buildpacksio/lifecycle:config" "$scratch/config"
md_config=$al_diff
if [ -n "$processes" ]; then
    mkdir -p "$scratch/process/cnb/process" || export_fail "cannot stage the process types"
    for p_type in $processes; do
        ln -sf /cnb/lifecycle/launcher "$scratch/process/cnb/process/$p_type" || export_fail "cannot link $p_type"
    done
    add_layer "buildpacksio/lifecycle:process-types" "$scratch/process"
fi

if [ -n "$process_type" ]; then
    case " $processes " in
    *" $process_type "*) default_process=$process_type ;;
    *) export_fail "tried to set $process_type to default but it doesn't exist" ;;
    esac
fi
entrypoint=/cnb/lifecycle/launcher
[ -z "$default_process" ] || entrypoint=/cnb/process/$default_process
# The created time: SOURCE_DATE_EPOCH when set (an invalid one is ignored with a
# warning), else 1980-01-01T00:00:01Z, as the lifecycle's exporter sets it.
created=1980-01-01T00:00:01Z
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    case $SOURCE_DATE_EPOCH in
    *[!0-9]*) echo "Warning: Ignoring invalid SOURCE_DATE_EPOCH" ;;
    *) created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ) || export_fail "cannot format SOURCE_DATE_EPOCH" ;;
    esac
fi
build_md="{\\\"buildpacks\\\":[$md_buildpacks],\\\"processes\\\":[$md_processes],\\\"launcher\\\":{\\\"version\\\":\\\"stand-in\\\"}}"
lifecycle_md="{\\\"app\\\":[{\\\"sha\\\":\\\"$md_app\\\"}],\\\"buildpacks\\\":[$md_layers],\\\"launcher\\\":{\\\"sha\\\":\\\"$md_launcher\\\"},\\\"config\\\":{\\\"sha\\\":\\\"$md_config\\\"}}"
labels="\"io.buildpacks.build.metadata\":\"$build_md\",\"io.buildpacks.lifecycle.metadata\":\"$lifecycle_md\",\"io.locald.standin.layers\":\"${new_keys#;}\""
[ -z "$run_stack" ] || labels="$labels,\"io.buildpacks.stack.id\":\"$run_stack\""
diff_ids=$run_diff_ids$new_diff_ids
diff_ids=${diff_ids#,}
printf '%s' "{\"architecture\":\"${run_arch:-amd64}\",\"os\":\"${run_os:-linux}\",\"created\":\"$created\",\"config\":{\"Env\":[\"PATH=/cnb/process:/cnb/lifecycle:/usr/local/bin:/usr/bin:/bin\",\"CNB_APP_DIR=$app\",\"CNB_LAYERS_DIR=$layers\",\"CNB_PLATFORM_API=$CNB_PLATFORM_API\"],\"Entrypoint\":[\"$entrypoint\"],\"WorkingDir\":\"$app\",\"User\":\"$uid:$gid\",\"Labels\":{$labels}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diff_ids]}}" \
    >"$scratch/config.json" || export_fail "cannot write the config"
config_hex=$(sha256sum <"$scratch/config.json" | cut -d' ' -f1)
config_size=$(wc -c <"$scratch/config.json" | tr -d ' ')
mv "$scratch/config.json" "$out/blobs/sha256/$config_hex" || export_fail "cannot store the config"

oci_layers=$(printf "%s\n" "$run_layers" |
    sed -e 's#application/vnd\.docker\.image\.rootfs\.diff\.tar\.gzip#application/vnd.oci.image.layer.v1.tar+gzip#g' \
        -e 's#application/vnd\.docker\.image\.rootfs\.diff\.tar#application/vnd.oci.image.layer.v1.tar#g')
all_layers=$oci_layers$new_layers
all_layers=${all_layers#,}
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_hex\",\"size\":$config_size},\"layers\":[$all_layers]}" \
    >"$scratch/manifest.json" || export_fail "cannot write the manifest"
manifest_hex=$(sha256sum <"$scratch/manifest.json" | cut -d' ' -f1)
manifest_size=$(wc -c <"$scratch/manifest.json" | tr -d ' ')
mv "$scratch/manifest.json" "$out/blobs/sha256/$manifest_hex" || export_fail "cannot store the manifest"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout" || export_fail "cannot write oci-layout"
ref_tag=${image##*/}
case $ref_tag in *:*) ref_tag=${ref_tag##*:} ;; *) ref_tag=latest ;; esac
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_hex\",\"size\":$manifest_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$ref_tag\"}}]}" \
    >"$scratch/index.json" || export_fail "cannot write index.json"
mv "$scratch/index.json" "$out/index.json" || export_fail "cannot write index.json"
rm -rf "$scratch"
echo "Saving $image..."
echo "*** Images (sha256:$manifest_hex):"
echo "      $image"
probe "exported $out_rel sha256:$manifest_hex"
exit 0
"##;

/// The lifecycle's exit code for invalid arguments: every contract violation.
pub const EXIT_INVALID_ARGS: i32 = 3;
/// The lifecycle's exit code for a Platform API it does not support.
pub const EXIT_INCOMPATIBLE_PLATFORM_API: i32 = 11;
/// The lifecycle's exit code for a failure of its own (privileges, users).
pub const EXIT_FAILED: i32 = 1;
/// No buildpack group passed detection.
pub const EXIT_FAILED_DETECT: i32 = 20;
/// A buildpack's build failed.
pub const EXIT_FAILED_BUILD: i32 = 51;
/// Exporting the image failed.
pub const EXIT_FAILED_EXPORT: i32 = 62;
/// Stopped by SIGINT or SIGTERM during [`WAIT_FOR_SIGNAL`].
pub const EXIT_INTERRUPTED: i32 = 130;

/// App file: every test buildpack's `bin/detect` fails, so no group passes
/// (`ERROR: No buildpack groups passed detection.`), exit [`EXIT_FAILED_DETECT`].
pub const FAIL_DETECT: &str = "fail-detect";
/// App file: the test buildpack whose id the file holds fails its build (all of
/// them when it is empty), exit [`EXIT_FAILED_BUILD`]. Detection is not changed:
/// to have a later group pass, the app also holds the earlier buildpacks'
/// [`crate::builder::skip_marker`]. The buildpacks before it in its group build;
/// `Running build for buildpack <id>@<version>` is logged for each at
/// `-log-level debug` only, as the lifecycle does.
pub const FAIL_BUILD: &str = "fail-build";
/// App file: `[probe] waiting`, then wait until SIGINT/SIGTERM, which print
/// `[probe] got signal` and exit [`EXIT_INTERRUPTED`].
pub const WAIT_FOR_SIGNAL: &str = "wait-for-signal";
/// App file: report what the process sees, as probes:
/// `host-path hidden|visible|readable PATH` (or `host-path unset`) for
/// `PROBE_HOST_PATH` (environment, else `<platform>/env/PROBE_HOST_PATH`),
/// `host-pid hidden|visible PID` likewise for `PROBE_HOST_PID`,
/// `write /cnb allowed|denied`, `write /usr allowed|denied`,
/// `id uid=N gid=N`, `pid N`, `pid1 <cmdline of pid 1, NULs as spaces>`,
/// `dev-null ok|broken`.
pub const PROBE_SANDBOX: &str = "probe-sandbox";
/// What starts a probe line (possibly after a runner's `[creator] ` prefix).
pub const PROBE_PREFIX: &str = "[probe] ";

/// The directory of an image in a lifecycle layout dir, relative to it, as the
/// lifecycle computes it (`layout.ParseRefToPath` over go-containerregistry's
/// `name` package) and as [`CREATOR`] does:
/// `<registry>/<repository>/<tag>`, or `<registry>/<repository>/<alg>/<hex>` for a
/// digest reference. Docker Hub is `index.docker.io` (`docker.io` too) and its
/// one-component repositories are under `library/`; the first component is a
/// registry only when it holds a `.` or a `:` (so `localhost/x` is Docker
/// Hub's, as in go-containerregistry); the tag defaults to `latest`.
///
/// ```
/// use locald_tests::standin::layout_path_for;
/// assert_eq!(layout_path_for("foo:1"), "index.docker.io/library/foo/1");
/// assert_eq!(layout_path_for("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b/latest");
/// ```
pub fn layout_path_for(reference: &str) -> String {
    // `name:tag` -> (name, Some(tag)); a ':' before the last '/' is a port.
    fn split_tag(s: &str) -> (&str, Option<&str>) {
        let last = s.rsplit('/').next().unwrap_or(s);
        match last.rsplit_once(':') {
            Some((_, tag)) => (&s[..s.len() - tag.len() - 1], Some(tag)),
            None => (s, None),
        }
    }
    let (name, id) = match reference.split_once('@') {
        Some((name, digest)) => (split_tag(name).0, digest.replacen(':', "/", 1)),
        None => {
            let (name, tag) = split_tag(reference);
            (name, tag.unwrap_or("latest").to_owned())
        }
    };
    let (mut registry, mut repo) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') => {
            (first.to_owned(), rest.to_owned())
        }
        _ => ("index.docker.io".to_owned(), name.to_owned()),
    };
    if registry == "docker.io" {
        registry = "index.docker.io".to_owned();
    }
    if registry == "index.docker.io" && !repo.contains('/') {
        repo = format!("library/{repo}");
    }
    format!("{registry}/{repo}/{id}")
}

/// The probes in `output`: for each line holding [`PROBE_PREFIX`], what follows
/// it (`cache builds=2`, `env FOO=bar`, ...).
pub fn probes(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            l.find(PROBE_PREFIX)
                .map(|i| l[i + PROBE_PREFIX.len()..].to_owned())
        })
        .collect()
}

/// The rest of the first probe that starts with `key` followed by a space or
/// `=`: `probe_value(out, "cache builds")` is `Some("2")` for
/// `[probe] cache builds=2`, `probe_value(out, "pid1")` the cmdline.
pub fn probe_value(output: &str, key: &str) -> Option<String> {
    probes(output).into_iter().find_map(|p| {
        let rest = p.strip_prefix(key)?;
        rest.strip_prefix(' ')
            .or_else(|| rest.strip_prefix('='))
            .map(str::to_owned)
    })
}

/// The unprivileged user tests run locald as when they run as root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestUser {
    /// The login name ([`TEST_USER`]).
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// The name of the user [`test_user`] makes.
pub const TEST_USER: &str = "locald-test";

static USERADD: Mutex<()> = Mutex::new(());

/// An unprivileged user to run things as: [`TEST_USER`], made with `useradd`
/// when absent. Only root can switch users: Err says why there is none (the
/// caller prints it and skips).
pub fn test_user() -> Result<TestUser, String> {
    if !crate::peers::is_root() {
        return Err("not running as root: cannot run anything as another user".into());
    }
    // The builders' build uid first, so that the test user never takes it.
    ensure_host_uid(crate::builder::BUSYBOX_UID)?;
    let _serial = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(user) = lookup_user(TEST_USER) {
        return Ok(user);
    }
    let made = crate::peers::run(
        "useradd",
        [
            "--no-create-home",
            "--user-group",
            "--shell",
            "/bin/sh",
            TEST_USER,
        ],
    );
    // Another test binary may have made it meanwhile.
    lookup_user(TEST_USER).map_err(|e| match made {
        Err(useradd) => format!("cannot make the user {TEST_USER}: {useradd}"),
        Ok(_) => e,
    })
}

/// The host account the busybox builder's build user maps to when the native
/// runner is started by root: the lifecycle switches to the build uid and looks
/// it up in the host's `/etc/passwd` (an unknown uid fails the build).
pub const BUILD_USER: &str = "locald-build";

/// Makes sure the host's `/etc/passwd` has an entry for `uid` (as root: a
/// [`BUILD_USER`] with that uid when none has it). Not root: nothing to do, the
/// lifecycle runs as the caller.
pub fn ensure_host_uid(uid: u32) -> Result<(), String> {
    if !crate::peers::is_root() {
        return Ok(());
    }
    let has = |passwd: &str| {
        passwd
            .lines()
            .any(|l| l.split(':').nth(2).and_then(|u| u.parse::<u32>().ok()) == Some(uid))
    };
    let _serial = USERADD.lock().unwrap_or_else(|e| e.into_inner());
    if has(&std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?) {
        return Ok(());
    }
    let made = crate::peers::run(
        "useradd",
        [
            "--uid",
            &uid.to_string(),
            "--no-create-home",
            "--user-group",
            "--shell",
            "/bin/sh",
            BUILD_USER,
        ],
    );
    if has(&std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?) {
        return Ok(());
    }
    Err(format!(
        "no host user with uid {uid} for native builds as root: {}",
        made.err().unwrap_or_default()
    ))
}

/// The user `name`'s uid and primary gid, as `id` reports them.
pub fn lookup_user(name: &str) -> Result<TestUser, String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = crate::peers::run("id", [flag, name])?;
        out.trim()
            .parse()
            .map_err(|e| format!("id {flag} {name}: {e}: {out:?}"))
    };
    Ok(TestUser {
        name: name.to_owned(),
        uid: id("-u")?,
        gid: id("-g")?,
    })
}

/// `chown -R uid:gid path` without following symlinks.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Runs [`CREATOR`]'s own mapping (`creator --layout-path-of REF`) with `sh`:
/// what the script will look for, to compare with [`layout_path_for`].
pub fn script_layout_path(script: &Path, reference: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .arg(script)
        .arg("--layout-path-of")
        .arg(reference)
        .output()
        .map_err(|e| format!("sh {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// The entry paths (without a trailing `/`) of the last layer of the one image
/// in the OCI layout at `dir`, decompressed as its bytes say: in a build's
/// output, the layer holding the app (`workspace`, `workspace/hello.txt`, ...).
pub fn app_layer_paths(dir: &Path) -> Result<Vec<String>, String> {
    let blob = |digest: &str| -> Result<Vec<u8>, String> {
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| format!("{}: bad digest {digest:?}", dir.display()))?;
        let p = dir.join("blobs").join(alg).join(hex);
        std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let json = |bytes: &[u8], what: &str| -> Result<serde_json::Value, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("{}: {what}: {e}", dir.display()))
    };
    let index_path = dir.join("index.json");
    let index = json(
        &std::fs::read(&index_path).map_err(|e| format!("{}: {e}", index_path.display()))?,
        "index.json",
    )?;
    let digest = match index["manifests"].as_array().map(Vec::as_slice) {
        Some([one]) => one["digest"].as_str().unwrap_or_default().to_owned(),
        _ => return Err(format!("{}: not one manifest: {index}", dir.display())),
    };
    let manifest = json(&blob(&digest)?, "manifest")?;
    // The app layer is the one whose diff id the lifecycle's metadata label
    // records as `app` (the real exporter and the stand-in both write it).
    let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
    let config = json(&blob(config_digest)?, "config")?;
    let md = config["config"]["Labels"]["io.buildpacks.lifecycle.metadata"]
        .as_str()
        .ok_or_else(|| format!("{}: no lifecycle metadata label", dir.display()))?;
    let md = json(md.as_bytes(), "io.buildpacks.lifecycle.metadata")?;
    let app_diff = md["app"][0]["sha"].as_str().unwrap_or_default();
    let position = config["rootfs"]["diff_ids"]
        .as_array()
        .and_then(|d| d.iter().position(|x| x.as_str() == Some(app_diff)))
        .ok_or_else(|| {
            format!(
                "{}: no layer has the app's diff id {app_diff}",
                dir.display()
            )
        })?;
    let layer = manifest["layers"][position]["digest"]
        .as_str()
        .ok_or_else(|| format!("{}: no layer {position}: {manifest}", dir.display()))?;
    let bytes = blob(layer)?;
    let tar_bytes = crate::fixture::Compression::detect(&bytes)
        .decompress(&bytes)
        .map_err(|e| format!("{}: layer {layer}: {e}", dir.display()))?;
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut paths = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| format!("{}: layer {layer}: {e}", dir.display()))?
    {
        let entry = entry.map_err(|e| format!("{}: layer {layer}: {e}", dir.display()))?;
        let path = entry
            .path()
            .map_err(|e| format!("{}: layer {layer}: {e}", dir.display()))?;
        paths.push(path.to_string_lossy().trim_end_matches('/').to_owned());
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{buildpack_dir, BuilderSpec, BUSYBOX_APPLETS, BUSYBOX_BUILDPACKS};
    use crate::fixture::{sha256_digest, Compression, LayoutBuilder, REF_NAME};
    use serde_json::Value;
    use std::collections::BTreeMap;
    use std::io::{BufRead, Read};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    const RUN: &str = "registry.example:5000/locald/run:7";
    const IMAGE: &str = "locald-test/app:1";

    struct Out {
        code: i32,
        stdout: String,
        stderr: String,
    }

    impl std::fmt::Display for Out {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "exit {}\n--- stdout\n{}--- stderr\n{}",
                self.code, self.stdout, self.stderr
            )
        }
    }

    fn output(c: &mut Command) -> Out {
        let o = c.output().unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn write(path: &Path, content: impl AsRef<[u8]>, mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A builder's `/cnb` and a build's directories on the host, as the native
    /// runner lays them out, with the run image in the layout dir.
    struct Rig {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        spec: BuilderSpec,
        uid: u32,
        gid: u32,
    }

    impl Rig {
        fn new() -> Rig {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().to_path_buf();
            let spec = BuilderSpec::busybox_with(b"unused", RUN);
            let cnb = root.join("cnb");
            write(&cnb.join("lifecycle/creator"), CREATOR, 0o755);
            // As in the builder: the other phases are links to the creator.
            std::os::unix::fs::symlink("creator", cnb.join("lifecycle/launcher")).unwrap();
            write(
                &cnb.join("lifecycle/lifecycle.toml"),
                spec.lifecycle_toml(),
                0o644,
            );
            write(&cnb.join("order.toml"), spec.order_toml(), 0o644);
            write(&cnb.join("run.toml"), spec.run_toml(), 0o644);
            for (id, v) in &spec.buildpacks {
                let dir = root.join(buildpack_dir(id, v));
                write(
                    &dir.join("buildpack.toml"),
                    spec.buildpack_toml(id, v),
                    0o644,
                );
                let (detect, build) = &spec.scripts[id];
                write(&dir.join("bin/detect"), detect, 0o755);
                write(&dir.join("bin/build"), build, 0o755);
            }
            write(&root.join("app/hello.txt"), "hello from the app\n", 0o644);
            write(&root.join("app/sub/deep.txt"), "deep\n", 0o644);
            for d in ["layers", "platform/env", "cache", "layout"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            let mut b = LayoutBuilder::new(root.join("layout").join(layout_path_for(RUN)));
            b.add_image(spec.run_image_spec().ref_name(RUN));
            b.write().unwrap();
            let (uid, gid) = if crate::peers::is_root() {
                // The creator drops to the build user (as the lifecycle does),
                // which the host must know and which must own the build's dirs.
                ensure_host_uid(spec.uid).unwrap();
                chown_tree(&root, spec.uid, spec.gid).unwrap();
                (spec.uid, spec.gid)
            } else {
                (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                )
            };
            Rig {
                _tmp: tmp,
                root,
                spec,
                uid,
                gid,
            }
        }

        fn p(&self, rel: &str) -> String {
            self.root.join(rel).to_str().unwrap().to_owned()
        }

        fn creator(&self) -> PathBuf {
            self.root.join("cnb/lifecycle/creator")
        }

        /// What the native runner passes.
        fn args(&self) -> Vec<String> {
            let mut a: Vec<String> = Vec::new();
            for (flag, value) in [
                ("-app", self.p("app")),
                ("-layers", self.p("layers")),
                ("-platform", self.p("platform")),
                ("-cache-dir", self.p("cache")),
                ("-run-image", RUN.to_owned()),
                ("-layout-dir", self.p("layout")),
                ("-uid", self.uid.to_string()),
                ("-gid", self.gid.to_string()),
                ("-buildpacks", self.p("cnb/buildpacks")),
                ("-order", self.p("cnb/order.toml")),
                ("-run", self.p("cnb/run.toml")),
                ("-launcher", self.p("cnb/lifecycle/launcher")),
            ] {
                a.push(flag.to_owned());
                a.push(value);
            }
            a.push("-layout".into());
            a.push("-log-level".into());
            a.push("debug".into());
            a.push(IMAGE.into());
            a
        }

        fn env(&self) -> Vec<(String, String)> {
            vec![
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
                ("CNB_PLATFORM_API".into(), "0.13".into()),
                ("CNB_EXPERIMENTAL_MODE".into(), "warn".into()),
                (
                    "LOCALD_TEST_BUILDER_ENV".into(),
                    "from-builder-config".into(),
                ),
                ("CNB_USER_ID".into(), self.spec.uid.to_string()),
                ("CNB_GROUP_ID".into(), self.spec.gid.to_string()),
            ]
        }

        fn command(&self, args: &[String], env: &[(String, String)]) -> Command {
            let mut c = Command::new(self.creator());
            c.args(args)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(self.root.join("app"));
            c
        }

        fn run(&self, args: &[String], env: &[(String, String)]) -> Out {
            output(&mut self.command(args, env))
        }

        fn run_ok(&self) -> Out {
            let out = self.run(&self.args(), &self.env());
            assert_eq!(out.code, 0, "{out}");
            out
        }

        /// Where the app's `rel` is in the image: the app directory the creator
        /// was given (a host path, as the lifecycle run natively keeps it).
        fn in_image(&self, rel: &str) -> String {
            self.p("app").trim_start_matches('/').to_owned() + "/" + rel
        }

        fn touch_app(&self, name: &str) {
            std::fs::write(self.root.join("app").join(name), "").unwrap();
        }

        fn output_dir(&self) -> PathBuf {
            self.root.join("layout").join(layout_path_for(IMAGE))
        }

        /// `<layers>/group.toml` as `(id, version, api)` per `[[group]]`;
        /// None when absent.
        fn group(&self) -> Option<Vec<(String, String, String)>> {
            let text = std::fs::read_to_string(self.root.join("layers/group.toml")).ok()?;
            let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            let s = |t: &toml::Value, k: &str| t[k].as_str().unwrap_or_default().to_owned();
            Some(
                v["group"]
                    .as_array()
                    .unwrap_or_else(|| panic!("no [[group]]: {text}"))
                    .iter()
                    .map(|t| (s(t, "id"), s(t, "version"), s(t, "api")))
                    .collect(),
            )
        }

        /// One group of every buildpack, in order, as the only order group.
        fn one_group_of_all(&self) {
            self.one_group_with_optional(&[]);
        }

        /// One order group of every buildpack, those in `optional` optional.
        fn one_group_with_optional(&self, optional: &[&str]) {
            let mut spec = self.spec.clone();
            spec.order = vec![spec
                .buildpacks
                .iter()
                .map(|(id, v)| (id.clone(), v.clone(), optional.contains(&id.as_str())))
                .collect()];
            write(&self.root.join("cnb/order.toml"), spec.order_toml(), 0o644);
        }

        /// The args with `-log-level` set to `level`.
        fn args_at(&self, level: &str) -> Vec<String> {
            let mut a = self.args();
            let i = a.iter().position(|x| x == "-log-level").unwrap();
            a[i + 1] = level.to_owned();
            a
        }
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn blob(dir: &Path, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(dir.join("blobs/sha256").join(hex))
            .unwrap_or_else(|e| panic!("blob {digest}: {e}"));
        assert_eq!(sha256_digest(&bytes), digest, "blob content");
        bytes
    }

    /// The exported image, checked from disk as any CNB app image: one manifest
    /// named by IMAGE's tag (as the lifecycle's layout export names it), every
    /// blob hashing to its digest, the run image's layers first, then gzip layers
    /// whose diff ids match, the `web` process as the entrypoint. Returns the
    /// files of the layers added to the run image, by path (no leading `/`).
    fn check_export(rig: &Rig) -> BTreeMap<String, Vec<u8>> {
        let dir = rig.output_dir();
        assert!(dir.join("oci-layout").is_file());
        let index = read_json(&dir.join("index.json"));
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{index}");
        assert_eq!(manifests[0]["annotations"][REF_NAME], "1");
        let mbytes = blob(&dir, manifests[0]["digest"].as_str().unwrap());
        assert_eq!(manifests[0]["size"], mbytes.len());
        let manifest: Value = serde_json::from_slice(&mbytes).unwrap();
        let config: Value =
            serde_json::from_slice(&blob(&dir, manifest["config"]["digest"].as_str().unwrap()))
                .unwrap();
        let run = rig.spec.run_image_spec();
        let layers = manifest["layers"].as_array().unwrap();
        // The buildpack's launch layer, the app, the launcher, the launch config
        // and the process types at least.
        assert!(layers.len() >= run.layers.len() + 5, "{manifest}");
        for (l, want) in layers.iter().zip(&run.layers) {
            assert_eq!(l["digest"], want.digest());
        }
        let mut diff_ids: Vec<String> = run.layers.iter().map(|l| l.diff_id()).collect();
        let mut files = BTreeMap::new();
        for l in &layers[run.layers.len()..] {
            assert_eq!(
                l["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let gz = blob(&dir, l["digest"].as_str().unwrap());
            assert_eq!(l["size"], gz.len());
            let tar_bytes = Compression::Gzip.decompress(&gz).unwrap();
            diff_ids.push(sha256_digest(&tar_bytes));
            let mut a = tar::Archive::new(&tar_bytes[..]);
            for e in a.entries().unwrap() {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                let path = path
                    .trim_start_matches("./")
                    .trim_end_matches('/')
                    .to_owned();
                files.insert(path, content);
            }
        }
        assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
        assert_eq!(config["architecture"], crate::builder::host_arch());
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/cnb/process/web"])
        );
        let labels = &config["config"]["Labels"];
        let md: Value =
            serde_json::from_str(labels["io.buildpacks.build.metadata"].as_str().unwrap()).unwrap();
        assert_eq!(md["buildpacks"][0]["id"], BUSYBOX_BUILDPACKS[0].0);
        assert_eq!(md["processes"][0]["type"], "web");
        assert_eq!(labels["io.buildpacks.stack.id"], rig.spec.stack_id.as_str());
        files
    }

    #[test]
    fn layout_paths_table() {
        let table = [
            ("foo", "index.docker.io/library/foo/latest"),
            ("foo:1", "index.docker.io/library/foo/1"),
            ("docker.io/foo:1", "index.docker.io/library/foo/1"),
            ("docker.io/library/foo:1", "index.docker.io/library/foo/1"),
            ("index.docker.io/acme/foo", "index.docker.io/acme/foo/latest"),
            ("acme/foo:v2", "index.docker.io/acme/foo/v2"),
            ("localhost/foo:1", "index.docker.io/localhost/foo/1"),
            ("localhost:5000/foo", "localhost:5000/foo/latest"),
            ("127.0.0.1:5000/a/b/c:9", "127.0.0.1:5000/a/b/c/9"),
            ("ghcr.io/acme/run:22-cnb", "ghcr.io/acme/run/22-cnb"),
            (
                "quay.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "quay.io/a/b/sha256/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            (
                "foo:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "index.docker.io/library/foo/sha256/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            (
                "reg:5000/foo:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "reg:5000/foo/sha256/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
        ];
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("creator");
        std::fs::write(&script, CREATOR).unwrap();
        for (reference, want) in table {
            assert_eq!(layout_path_for(reference), want, "{reference}");
            assert_eq!(
                script_layout_path(&script, reference).unwrap(),
                want,
                "the script's mapping of {reference}"
            );
        }
    }

    #[test]
    fn probe_parsing() {
        let out = "[creator] [probe] cache builds=2\n[probe] env FOO=a=b\nno probe\n[creator] [probe] pid1 /sbin/init splash \n";
        assert_eq!(probes(out).len(), 3);
        assert_eq!(probe_value(out, "cache builds").as_deref(), Some("2"));
        assert_eq!(probe_value(out, "env FOO").as_deref(), Some("a=b"));
        assert_eq!(
            probe_value(out, "pid1").as_deref(),
            Some("/sbin/init splash ")
        );
        assert_eq!(probe_value(out, "pid"), None);
        assert_eq!(probe_value(out, "cache"), Some("builds=2".into()));
    }

    #[test]
    fn builds_exports_and_counts() {
        let rig = Rig::new();
        write(&rig.root.join("platform/env/FOO"), "bar", 0o644);
        let out = rig.run_ok();
        for want in [
            "===> DETECTING",
            "===> BUILDING",
            "Running build for buildpack locald-test/first@1.0.0",
            "stand-in build: locald-test/first@1.0.0",
            "===> EXPORTING",
            "Saving locald-test/app:1...",
            "[probe] contract ok platform-api=0.13",
            "[probe] env FOO=bar",
            "[probe] cache builds=1",
        ] {
            assert!(out.stdout.contains(want), "{want:?} missing:\n{out}");
        }
        assert_eq!(
            probe_value(&out.stdout, "launcher"),
            Some(rig.p("cnb/lifecycle/launcher")),
            "{out}"
        );
        assert_eq!(
            probe_value(&out.stdout, "build-config-dir").as_deref(),
            Some("unset"),
            "{out}"
        );
        let files = check_export(&rig);
        assert_eq!(files[&rig.in_image("hello.txt")], b"hello from the app\n");
        assert_eq!(files[&rig.in_image("sub/deep.txt")], b"deep\n");
        assert!(!files.keys().any(|k| k.contains("standin")), "{files:?}");
        // The app layer as app_layer_paths reads it.
        let paths = app_layer_paths(&rig.output_dir()).unwrap();
        assert!(
            paths.iter().any(|p| *p == rig.in_image("sub/deep.txt")),
            "{paths:?}"
        );
        assert!(
            paths.iter().all(|p| files.contains_key(p)),
            "{paths:?} vs {files:?}"
        );
        // The web process's program in the buildpack's launch layer, and its link.
        let web = rig.p("layers/locald-test_first/web/bin/locald-web");
        assert!(files.contains_key(web.trim_start_matches('/')), "{files:?}");
        assert!(files.contains_key("cnb/process/web"), "{files:?}");
        // The group that passed detection, as the lifecycle writes it.
        let api = rig.spec.buildpack_apis.last().unwrap().clone();
        let (id, v) = BUSYBOX_BUILDPACKS[0];
        assert_eq!(rig.group(), Some(vec![(id.into(), v.into(), api)]));
        let leftovers: Vec<_> = std::fs::read_dir(rig.root.join("layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| {
                n != "group.toml" && n != "plan.toml" && n != "locald-test_first" && n != "sbom"
            })
            .collect();
        assert!(
            leftovers.is_empty(),
            "scratch left in layers: {leftovers:?}"
        );
        // The launch layer's SBOM, where the lifecycle's builder moves it.
        assert!(
            rig.root
                .join("layers/sbom/launch/locald-test_first/web/sbom.cdx.json")
                .is_file(),
            "no SBOM in <layers>/sbom"
        );

        // CNB_BUILD_CONFIG_DIR is reported, not required.
        let mut env = rig.env();
        env.push(("CNB_BUILD_CONFIG_DIR".into(), rig.p("cnb/build-config")));
        let out = rig.run(&rig.args(), &env);
        assert_eq!(out.code, 0, "{out}");
        assert_eq!(
            probe_value(&out.stdout, "build-config-dir"),
            Some(rig.p("cnb/build-config")),
            "{out}"
        );
        // That run counted a second build (its cache layer came back).
        assert_eq!(
            probe_value(&out.stdout, "cache builds").as_deref(),
            Some("2"),
            "{out}"
        );

        // Again, with the app changed: the counter goes on, the app layer is new,
        // the buildpack's unchanged launch layer and the launcher are reused.
        std::fs::write(rig.root.join("app/hello.txt"), "changed\n").unwrap();
        let out = rig.run_ok();
        assert_eq!(
            probe_value(&out.stdout, "cache builds").as_deref(),
            Some("3")
        );
        for want in [
            "Reusing layer 'locald-test/first:web'",
            "Reusing layer 'buildpacksio/lifecycle:launcher'",
            "Adding 1/1 app layer(s)",
        ] {
            assert!(out.stdout.contains(want), "{want:?} missing:\n{out}");
        }
        assert_eq!(check_export(&rig)[&rig.in_image("hello.txt")], b"changed\n");

        // Real peers agree it is an image.
        let dir = rig.output_dir();
        if crate::require::tool("skopeo") {
            let inspect =
                crate::peers::skopeo(&["inspect", &format!("oci:{}", dir.display())]).unwrap();
            let v: Value = serde_json::from_str(&inspect).unwrap();
            assert!(v["Layers"].as_array().unwrap().len() >= 7, "{v}");
            assert_eq!(v["Architecture"], crate::builder::host_arch());
        }
        if crate::require::tool("umoci") && crate::require::tool("skopeo") {
            let copy = rig.root.join("copy");
            crate::peers::skopeo_copy(
                &format!("oci:{}:1", dir.display()),
                &format!("oci:{}:app", copy.display()),
                &[],
            )
            .unwrap();
            let rootfs =
                crate::peers::umoci_unpack(&copy, "app", &rig.root.join("bundle")).unwrap();
            assert_eq!(
                std::fs::read_to_string(rootfs.join(rig.in_image("hello.txt"))).unwrap(),
                "changed\n"
            );
            assert!(rootfs.join("etc/locald-run-image").is_file());
        }
    }

    /// Under busybox sh with only busybox applets on PATH (as in the sandbox).
    #[test]
    fn runs_under_busybox() {
        let Some(busybox) =
            crate::require::ok(crate::builder::find_busybox(), "the static busybox")
        else {
            return;
        };
        let rig = Rig::new();
        let bin = rig.root.join("bb");
        std::fs::create_dir(&bin).unwrap();
        for a in BUSYBOX_APPLETS {
            std::os::unix::fs::symlink(&busybox, bin.join(a)).unwrap();
        }
        let mut env = rig.env();
        env[0].1 = bin.to_str().unwrap().to_owned();
        write(&rig.root.join("platform/env/FOO"), "bar", 0o644);
        rig.touch_app(PROBE_SANDBOX);
        // As in the sandbox, where the creator starts as the build user.
        let out = output(
            std::os::unix::process::CommandExt::gid(
                std::os::unix::process::CommandExt::uid(&mut Command::new(&busybox), rig.uid),
                rig.gid,
            )
            .arg("sh")
            .arg(rig.creator())
            .args(rig.args())
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v))),
        );
        assert_eq!(out.code, 0, "{out}");
        assert!(!out.stderr.contains("not found"), "{out}");
        assert_eq!(probe_value(&out.stdout, "env FOO").as_deref(), Some("bar"));
        assert_eq!(
            probe_value(&out.stdout, "dev-null").as_deref(),
            Some("ok"),
            "{out}"
        );
        assert_eq!(
            probe_value(&out.stdout, "host-path").as_deref(),
            Some("unset"),
            "{out}"
        );
        assert!(probe_value(&out.stdout, "pid1").is_some(), "{out}");
        let files = check_export(&rig);
        assert_eq!(files[&rig.in_image("hello.txt")], b"hello from the app\n");
    }

    #[test]
    fn contract_violations_exit_3_naming_the_problem() {
        let rig = Rig::new();
        let base = rig.args();
        let env = rig.env();
        let set = |k: &str, v: Option<&str>| -> Vec<(String, String)> {
            let mut e: Vec<(String, String)> =
                env.iter().filter(|(n, _)| n != k).cloned().collect();
            if let Some(v) = v {
                e.push((k.to_owned(), v.to_owned()));
            }
            e
        };
        let with = |flag: &str, value: &str| -> Vec<String> {
            let mut a = base.clone();
            let i = a.iter().position(|x| x == flag).unwrap();
            a[i + 1] = value.to_owned();
            a
        };
        let without = |flag: &str, takes_value: bool| -> Vec<String> {
            let mut a = base.clone();
            let i = a.iter().position(|x| x == flag).unwrap();
            a.drain(i..i + 1 + usize::from(takes_value));
            a
        };
        // A second run image manifest, and a corrupt blob, in copies of the layout.
        let two = "registry.example:5000/locald/two:1";
        let mut b = LayoutBuilder::new(rig.root.join("layout").join(layout_path_for(two)));
        b.add_image(rig.spec.run_image_spec().ref_name("a"));
        b.add_image(BuilderSpec::default().image().ref_name("b"));
        b.write().unwrap();
        let bad = "registry.example:5000/locald/bad:1";
        let mut b = LayoutBuilder::new(rig.root.join("layout").join(layout_path_for(bad)));
        let mut spec = rig.spec.run_image_spec();
        spec.layers[1] = spec.layers[1].clone().corrupted();
        b.add_image(spec);
        b.write().unwrap();

        let mut unknown = base.clone();
        unknown.insert(0, "-bogus".into());
        unknown.insert(1, "1".into());
        let mut name_first = base.clone();
        let name = name_first.pop().unwrap();
        name_first.insert(0, name);
        let mut no_name = base.clone();
        no_name.pop();

        type Case<'a> = (&'a str, Vec<String>, Vec<(String, String)>, &'a str);
        let mut cases: Vec<Case<'_>> = vec![
            ("unknown flag", unknown, env.clone(), "unknown flag -bogus"),
            (
                "name not last",
                name_first,
                env.clone(),
                "must be the last argument",
            ),
            (
                "no name",
                no_name,
                env.clone(),
                "missing the output image name",
            ),
            (
                "no -layout",
                without("-layout", false),
                env.clone(),
                "missing flag -layout",
            ),
            (
                "no -cache-dir",
                without("-cache-dir", true),
                env.clone(),
                "missing flag -cache-dir",
            ),
            (
                "no -run-image",
                without("-run-image", true),
                env.clone(),
                "missing flag -run-image",
            ),
            (
                "bad -uid",
                with("-uid", "cnb"),
                env.clone(),
                "-uid 'cnb' is not a number",
            ),
            (
                "api too old for layout",
                base.clone(),
                set("CNB_PLATFORM_API", Some("0.11")),
                "needs 0.12",
            ),
            (
                "experimental mode",
                base.clone(),
                set("CNB_EXPERIMENTAL_MODE", Some("error")),
                "CNB_EXPERIMENTAL_MODE must be 'warn'",
            ),
            (
                "builder env lost",
                base.clone(),
                set("LOCALD_TEST_BUILDER_ENV", None),
                "LOCALD_TEST_BUILDER_ENV must be",
            ),
            (
                "no CNB_USER_ID",
                base.clone(),
                set("CNB_USER_ID", None),
                "CNB_USER_ID is not set",
            ),
            (
                "no CNB_GROUP_ID",
                base.clone(),
                set("CNB_GROUP_ID", None),
                "CNB_GROUP_ID is not set",
            ),
            (
                "no app",
                with("-app", &rig.p("nope")),
                env.clone(),
                "app directory",
            ),
            (
                "no layers",
                with("-layers", &rig.p("nope")),
                env.clone(),
                "layers directory",
            ),
            (
                "platform is a file",
                with("-platform", &rig.p("app/hello.txt")),
                env.clone(),
                "platform directory",
            ),
            (
                "no order",
                with("-order", &rig.p("nope.toml")),
                env.clone(),
                "order file",
            ),
            (
                "buildpack missing",
                with("-buildpacks", &rig.p("layers")),
                env.clone(),
                "buildpack locald-test/first@1.0.0 is not at",
            ),
            (
                "launcher absent",
                with("-launcher", &rig.p("cnb/lifecycle/nope")),
                env.clone(),
                "is not an executable file",
            ),
            (
                "launcher not executable",
                with("-launcher", &rig.p("cnb/order.toml")),
                env.clone(),
                "cnb/order.toml is not an executable file",
            ),
            (
                "launcher is a directory",
                with("-launcher", &rig.p("cnb/lifecycle")),
                env.clone(),
                "is not an executable file",
            ),
            (
                "run image absent",
                with("-run-image", "registry.example:5000/locald/absent:1"),
                env.clone(),
                "is not in the layout dir at registry.example:5000/locald/absent/1",
            ),
            (
                "run image two manifests",
                with("-run-image", two),
                env.clone(),
                "exactly one manifest",
            ),
            (
                "run image corrupt",
                with("-run-image", bad),
                env.clone(),
                "does not hash to",
            ),
        ];
        if !Path::new("/cnb").exists() {
            cases.push((
                "no -order off /cnb",
                without("-order", true),
                env.clone(),
                "order file /cnb/order.toml is not readable",
            ));
            cases.push((
                "no -launcher off /cnb",
                without("-launcher", true),
                env.clone(),
                "launcher /cnb/lifecycle/launcher is not an executable file",
            ));
        }
        let mut failed = Vec::new();
        for (what, args, env, want) in cases {
            let out = rig.run(&args, &env);
            if out.code != EXIT_INVALID_ARGS
                || !out.stderr.contains("ERROR: stand-in creator: ")
                || !out.stderr.contains(want)
                || out.stdout.contains("===> DETECTING")
            {
                failed.push(format!("{what}: wanted exit 3 and {want:?}\n{out}"));
            }
        }
        // A Platform API the lifecycle does not support: exit 11 as the
        // lifecycle's (CodeForIncompatiblePlatformAPI), with its sentence.
        for (what, api, want) in [
            ("no api", None, "please set 'CNB_PLATFORM_API'"),
            (
                "unsupported api",
                Some("0.14"),
                "platform API version '0.14' is incompatible with the lifecycle",
            ),
        ] {
            let out = rig.run(&base, &set("CNB_PLATFORM_API", api));
            if out.code != EXIT_INCOMPATIBLE_PLATFORM_API
                || !out.stderr.contains(want)
                || out.stdout.contains("===> DETECTING")
            {
                failed.push(format!("{what}: wanted exit 11 and {want:?}\n{out}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n\n"));
        // None of it touched the cache.
        assert!(!rig.root.join("cache/locald-standin-layers").exists());
        // And the rig itself passes.
        rig.run_ok();
        // `-flag=value` is Go's flag syntax, which the lifecycle accepts.
        let mut eq = base.clone();
        let i = eq.iter().position(|x| x == "-app").unwrap();
        let v = eq.remove(i + 1);
        eq[i] = format!("-app={v}");
        let out = rig.run(&eq, &rig.env());
        assert_eq!(out.code, 0, "{out}");
    }

    /// Started by root, the creator hands the layers and cache to the build
    /// user, becomes it and takes HOME and USER from /etc/passwd, as the
    /// lifecycle does; a uid the passwd does not know fails, exit 1.
    #[test]
    fn root_drops_to_the_build_user() {
        if !crate::require::root("dropping privileges") {
            return;
        }
        let rig = Rig::new();
        std::os::unix::fs::chown(rig.root.join("cache"), Some(0), Some(0)).unwrap();
        let out = rig.run_ok();
        let user = probe_value(&out.stdout, "user").unwrap_or_default();
        assert!(
            user.starts_with(&format!("uid={} gid={} home=", rig.uid, rig.gid)),
            "{out}"
        );
        let owner = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata(rig.root.join("cache")).unwrap(),
        );
        assert_eq!(owner, rig.uid, "the cache was not handed to the build user");
        let unknown = 3_999_999u32;
        assert!(!std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains(&format!(":{unknown}:")));
        let mut args = rig.args();
        let i = args.iter().position(|x| x == "-uid").unwrap();
        args[i + 1] = unknown.to_string();
        let out = rig.run(&args, &rig.env());
        assert_eq!(out.code, EXIT_FAILED, "{out}");
        assert!(
            out.stderr.contains(&format!(
                "failed to set environment for user {unknown}: user: unknown userid {unknown}"
            )),
            "{out}"
        );
        assert!(!out.stdout.contains("===> DETECTING"), "{out}");
    }

    /// As root, the uid check is exercised as an unprivileged user.
    #[test]
    fn uid_must_match_when_not_root() {
        let Some(user) = crate::require::ok(test_user(), "the unprivileged test user") else {
            return;
        };
        let rig = Rig::new();
        chown_tree(&rig.root, user.uid, user.gid).unwrap();
        let run_as = |uid: u32, gid: u32| {
            let mut a = rig.args();
            let i = a.iter().position(|x| x == "-uid").unwrap();
            a[i + 1] = uid.to_string();
            let i = a.iter().position(|x| x == "-gid").unwrap();
            a[i + 1] = gid.to_string();
            let mut c = rig.command(&a, &rig.env());
            c.uid(user.uid).gid(user.gid);
            output(&mut c)
        };
        // Not root, the lifecycle cannot switch to other ids (setresuid: EPERM).
        let out = run_as(user.uid + 1, user.gid);
        assert_eq!(out.code, EXIT_FAILED, "{out}");
        assert!(
            out.stderr.contains(&format!(
                "failed to exec as user {}:{}",
                user.uid + 1,
                user.gid
            )),
            "{out}"
        );
        let out = run_as(user.uid, user.gid + 1);
        assert_eq!(out.code, EXIT_FAILED, "{out}");
        assert!(out.stderr.contains("failed to exec as user"), "{out}");
        let out = run_as(user.uid, user.gid);
        assert_eq!(out.code, 0, "{out}");
        assert_eq!(
            probe_value(&out.stdout, "contract ok")
                .map(|v| v.contains(&format!("uid={}", user.uid))),
            Some(true),
            "{out}"
        );
    }

    #[test]
    fn detect_and_build_failures() {
        let rig = Rig::new();
        let api = rig.spec.buildpack_apis.last().unwrap().clone();
        let bp = |i: usize| {
            let (id, v) = BUSYBOX_BUILDPACKS[i];
            (id.to_owned(), v.to_owned(), api.clone())
        };
        rig.touch_app(FAIL_DETECT);
        let out = rig.run(&rig.args(), &rig.env());
        assert_eq!(out.code, EXIT_FAILED_DETECT, "{out}");
        assert!(
            out.stderr
                .contains("ERROR: No buildpack groups passed detection."),
            "{out}"
        );
        assert!(!rig.output_dir().exists());
        assert_eq!(rig.group(), None, "group.toml after a failed detection");

        std::fs::remove_file(rig.root.join("app").join(FAIL_DETECT)).unwrap();
        rig.touch_app(FAIL_BUILD);
        let out = rig.run(&rig.args(), &rig.env());
        assert_eq!(out.code, EXIT_FAILED_BUILD, "{out}");
        assert!(
            out.stdout.contains(
                "Running build for buildpack locald-test/first@1.0.0\n\
                 stand-in build: locald-test/first@1.0.0\n"
            ),
            "{out}"
        );
        assert!(
            out.stderr.contains("locald-test/first: failing on purpose"),
            "{out}"
        );
        assert!(!rig.output_dir().exists());
        assert_eq!(rig.group(), Some(vec![bp(0)]));

        // At the default log level (and at info) the lifecycle does not say
        // which buildpack it runs: group.toml is what names it.
        for level in [None, Some("info")] {
            let args = match level {
                Some(l) => rig.args_at(l),
                None => {
                    let mut a = rig.args();
                    let i = a.iter().position(|x| x == "-log-level").unwrap();
                    a.drain(i..i + 2);
                    a
                }
            };
            std::fs::remove_file(rig.root.join("layers/group.toml")).unwrap();
            let out = rig.run(&args, &rig.env());
            assert_eq!(out.code, EXIT_FAILED_BUILD, "{level:?}: {out}");
            assert!(
                !out.stdout.contains("Running build for"),
                "{level:?}: {out}"
            );
            assert!(!out.stdout.contains("Debug:"), "{level:?}: {out}");
            assert_eq!(rig.group(), Some(vec![bp(0)]), "{level:?}");
        }

        // A detect that errs (not 0, not 100) fails detection with errors: 21.
        std::fs::remove_file(rig.root.join("app").join(FAIL_BUILD)).unwrap();
        for (id, v) in BUSYBOX_BUILDPACKS {
            write(
                &rig.root.join(buildpack_dir(id, v)).join("bin/detect"),
                "#!/bin/sh\necho broken detect\nexit 3\n",
                0o755,
            );
        }
        let out = rig.run(&rig.args(), &rig.env());
        assert_eq!(out.code, 21, "{out}");
        assert!(
            out.stdout.contains("err:  locald-test/first@1.0.0 (3)"),
            "{out}"
        );
        assert!(out.stdout.contains("broken detect"), "{out}");

        // A buildpack whose [[targets]] the run image does not satisfy is not
        // run: an error of detection.
        for (id, v) in BUSYBOX_BUILDPACKS {
            let dir = rig.root.join(buildpack_dir(id, v));
            write(&dir.join("bin/detect"), "#!/bin/sh\nexit 0\n", 0o755);
            let toml = std::fs::read_to_string(dir.join("buildpack.toml")).unwrap();
            let other = if crate::builder::host_arch() == "arm64" {
                "amd64"
            } else {
                "arm64"
            };
            let toml = toml.replace(
                &format!("arch = \"{}\"", crate::builder::host_arch()),
                &format!("arch = \"{other}\""),
            );
            write(&dir.join("buildpack.toml"), toml, 0o644);
        }
        let out = rig.run(&rig.args(), &rig.env());
        assert_eq!(out.code, 21, "{out}");
        assert!(
            out.stdout
                .contains("unable to satisfy target os/arch constraints"),
            "{out}"
        );
    }

    /// An optional buildpack that fails detection is left out of its group, which
    /// passes with the others; a required one that fails fails the group.
    #[test]
    fn optional_buildpacks_may_fail_detection() {
        let rig = Rig::new();
        let (first, v1) = BUSYBOX_BUILDPACKS[0];
        let (second, v2) = BUSYBOX_BUILDPACKS[1];
        rig.one_group_with_optional(&[first]);
        rig.touch_app(&crate::builder::skip_marker(first));
        let out = rig.run(&rig.args(), &rig.env());
        assert_eq!(out.code, 0, "{out}");
        assert!(
            out.stdout
                .contains(&format!("1 of 2 buildpacks participating\n{second} {v2}\n")),
            "{out}"
        );
        let api = rig.spec.buildpack_apis.last().unwrap().clone();
        assert_eq!(
            rig.group(),
            Some(vec![(second.to_owned(), v2.to_owned(), api)])
        );
        assert!(
            !out.stdout.contains(&format!("stand-in build: {first}")),
            "{out}"
        );

        rig.one_group_with_optional(&[second]);
        let out = rig.run(&rig.args(), &rig.env());
        assert_eq!(out.code, EXIT_FAILED_DETECT, "{out}");
        assert!(!out.stdout.contains(&format!("{first} {v1}")), "{out}");
    }

    /// An order group of two buildpacks: both build, both are in group.toml and
    /// the build metadata; a failure of the second comes after the first built.
    #[test]
    fn a_group_of_two() {
        let rig = Rig::new();
        rig.one_group_of_all();
        let api = rig.spec.buildpack_apis.last().unwrap().clone();
        let group: Vec<_> = BUSYBOX_BUILDPACKS
            .iter()
            .map(|(id, v)| ((*id).to_owned(), (*v).to_owned(), api.clone()))
            .collect();
        let out = rig.run_ok();
        assert!(
            out.stdout
                .contains("===> DETECTING\nlocald-test/first 1.0.0\nlocald-test/second 2.0.0\n"),
            "{out}"
        );
        let mut at = 0;
        for want in [
            "Running build for buildpack locald-test/first@1.0.0",
            "stand-in build: locald-test/first@1.0.0",
            "Running build for buildpack locald-test/second@2.0.0",
            "stand-in build: locald-test/second@2.0.0",
        ] {
            let i = out.stdout[at..]
                .find(want)
                .unwrap_or_else(|| panic!("{want:?} missing or out of order:\n{out}"));
            at += i + want.len();
        }
        assert_eq!(rig.group(), Some(group.clone()));
        let index = read_json(&rig.output_dir().join("index.json"));
        let manifest: Value = serde_json::from_slice(&blob(
            &rig.output_dir(),
            index["manifests"][0]["digest"].as_str().unwrap(),
        ))
        .unwrap();
        let config: Value = serde_json::from_slice(&blob(
            &rig.output_dir(),
            manifest["config"]["digest"].as_str().unwrap(),
        ))
        .unwrap();
        let md: Value = serde_json::from_str(
            config["config"]["Labels"]["io.buildpacks.build.metadata"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let ids: Vec<_> = md["buildpacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                format!(
                    "{}@{}",
                    b["id"].as_str().unwrap(),
                    b["version"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(ids, ["locald-test/first@1.0.0", "locald-test/second@2.0.0"]);

        std::fs::remove_dir_all(rig.output_dir()).unwrap();
        std::fs::write(rig.root.join("app").join(FAIL_BUILD), "locald-test/second").unwrap();
        let out = rig.run(&rig.args(), &rig.env());
        assert_eq!(out.code, EXIT_FAILED_BUILD, "{out}");
        assert!(
            out.stdout
                .contains("stand-in build: locald-test/first@1.0.0"),
            "{out}"
        );
        assert!(
            out.stdout.trim_end().ends_with(
                "Running build for buildpack locald-test/second@2.0.0\n\
                 stand-in build: locald-test/second@2.0.0"
            ),
            "{out}"
        );
        assert!(
            out.stderr
                .contains("locald-test/second: failing on purpose"),
            "{out}"
        );
        assert!(
            out.stderr.contains("ERROR: failed to build: exit status 1"),
            "{out}"
        );
        assert_eq!(rig.group(), Some(group));
        assert!(!rig.output_dir().exists());
    }

    /// Children of `pid` (from /proc/*/stat).
    fn children(pid: u32) -> Vec<u32> {
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(n) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            if ppid == Some(pid) {
                v.push(n);
            }
        }
        v
    }

    /// Whether `pid` runs (exists and is not a zombie).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            let state = s.rsplit_once(')').map_or("", |(_, r)| r).trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
    }

    #[test]
    fn waits_for_a_signal_and_leaves_nothing_behind() {
        let rig = Rig::new();
        rig.touch_app(WAIT_FOR_SIGNAL);
        let mut child = rig
            .command(&rig.args(), &rig.env())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no '[probe] waiting' in:\n{}", seen.join("\n")));
            let done = line == "[probe] waiting";
            seen.push(line);
            if done {
                break;
            }
        }
        let pid = child.id();
        // Let the loop start its sleep, then interrupt.
        std::thread::sleep(Duration::from_millis(200));
        let kids = children(pid);
        let sent = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::INT,
        )
        .unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if sent.elapsed() > Duration::from_secs(5) {
                child.kill().ok();
                panic!("still running 5 s after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        reader.join().unwrap();
        seen.extend(rx.try_iter());
        assert_eq!(status.code(), Some(EXIT_INTERRUPTED), "{}", seen.join("\n"));
        assert!(seen.iter().any(|l| l == "[probe] got signal"), "{seen:?}");
        let deadline = Instant::now() + Duration::from_secs(2);
        while kids.iter().any(|k| alive(*k)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<_> = kids.iter().filter(|k| alive(**k)).collect();
        assert!(left.is_empty(), "children left running: {left:?}");
        assert!(!rig.output_dir().exists());
    }

    #[test]
    fn sandbox_probes_report_natively() {
        let rig = Rig::new();
        rig.touch_app(PROBE_SANDBOX);
        let secret = rig.root.join("secret");
        std::fs::write(&secret, "s").unwrap();
        write(
            &rig.root.join("platform/env/PROBE_HOST_PATH"),
            secret.to_str().unwrap(),
            0o644,
        );
        let mut env = rig.env();
        env.push(("PROBE_HOST_PID".into(), std::process::id().to_string()));
        env.push(("PROBE_HOST_PATH".into(), rig.p("nothing-here")));
        let out = rig.run(&rig.args(), &env);
        assert_eq!(out.code, 0, "{out}");
        let p = |k: &str| probe_value(&out.stdout, k).unwrap_or_else(|| panic!("{k}: {out}"));
        // The environment wins over the platform env file.
        assert_eq!(p("host-path"), format!("hidden {}", rig.p("nothing-here")));
        assert_eq!(p("host-pid"), format!("visible {}", std::process::id()));
        assert_eq!(p("dev-null"), "ok");
        assert_eq!(p("write /cnb"), "denied");
        assert!(p("pid").parse::<u32>().is_ok());
        // The build user (the creator dropped to it when started by root).
        assert!(p("id").starts_with(&format!("uid={} ", rig.uid)), "{out}");
        let host_pid1 = std::fs::read("/proc/1/cmdline").unwrap_or_default();
        let host_pid1: String = String::from_utf8_lossy(&host_pid1).replace('\0', " ");
        assert_eq!(p("pid1"), host_pid1);
        // Without the environment variable, the platform env file is used.
        env.pop();
        let out = rig.run(&rig.args(), &env);
        assert_eq!(
            probe_value(&out.stdout, "host-path"),
            Some(format!("readable {}", secret.display())),
            "{out}"
        );
    }

    #[test]
    fn docker_media_types_become_oci() {
        let rig = Rig::new();
        let dir = rig.root.join("layout").join(layout_path_for(RUN));
        std::fs::remove_dir_all(&dir).unwrap();
        let mut b = LayoutBuilder::new(&dir);
        b.add_image(rig.spec.run_image_spec().docker());
        b.write().unwrap();
        rig.run_ok();
        let index = read_json(&rig.output_dir().join("index.json"));
        let manifest: Value = serde_json::from_slice(&blob(
            &rig.output_dir(),
            index["manifests"][0]["digest"].as_str().unwrap(),
        ))
        .unwrap();
        let types: Vec<&str> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap())
            .collect();
        // The run image's two layers in OCI types, then the build's gzip layers.
        assert_eq!(
            types[..2],
            [
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.oci.image.layer.v1.tar",
            ]
        );
        assert!(
            types[2..]
                .iter()
                .all(|t| *t == "application/vnd.oci.image.layer.v1.tar+gzip"),
            "{types:?}"
        );
    }
}
