#!/usr/bin/env bash
# What a new user does, before a release (issue 28): a fresh clone into a temporary folder, the README's
# two set-up commands verbatim (read from the README's "Set-up" block, the lines marked "# 1." and
# "# 2."), then the main job (`python -m bench.run` with the environment active); prints the three exit
# codes and wall-clock times, and exits 0 only if all three did.
#
#   scripts/newcomer.sh [SOURCE] [--keep]
#
# SOURCE: what to clone (default: this repository; a local clone takes its committed HEAD, not the
# working tree). Needs the network for pip (PyPI). Everything it writes stays in its temporary folder,
# removed at the end (--keep: kept, and its path printed): HOME, TMPDIR, pip's and matplotlib's caches,
# pytest's and Ray's temporary folders all point inside it. Like a newcomer's machine, it has no
# reference fixtures (SCOREBENCH_FIXTURES and SCOREBENCH_REQUIRE_FIXTURES are unset), so the tests
# that replay them skip, as do those needing a Debian package that is not installed (README: Tests).
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
source_repo="$here"
keep=0
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) source_repo="$arg" ;;
    esac
done

root="$(mktemp -d "${TMPDIR:-/tmp}/scorebench-newcomer.XXXXXX")"
cleanup() { if [ "$keep" = 1 ]; then echo "kept: $root"; else rm -rf "$root"; fi; }
trap cleanup EXIT
mkdir -p "$root/home" "$root/tmp"
export HOME="$root/home" TMPDIR="$root/tmp" XDG_CACHE_HOME="$root/home/.cache" XDG_CONFIG_HOME="$root/home/.config"
export PIP_CACHE_DIR="$root/home/.cache/pip" MPLCONFIGDIR="$root/home/.config/matplotlib" RAY_TMPDIR="$root/tmp"
unset SCOREBENCH_FIXTURES SCOREBENCH_REQUIRE_FIXTURES VIRTUAL_ENV PYTHONPATH

log="$root/log"
mkdir -p "$log"
echo "newcomer: cloning $source_repo into $root/scorebench"
if ! git clone -q "$source_repo" "$root/scorebench"; then
    echo "newcomer: git clone failed" >&2
    exit 1
fi
cd "$root/scorebench" || exit 1
echo "newcomer: commit $(git rev-parse --short HEAD)"

# The README's two set-up commands, verbatim (the trailing comment is part of the shell line).
setup_step() { awk '/^## Set-up/{on=1} on && /^```bash/{inblock=1; next} inblock && /^```/{exit} inblock' README.md \
               | grep -E "# $1\. " | head -n 1; }
install_cmd="$(setup_step 1)"
test_cmd="$(setup_step 2)"
if [ -z "$install_cmd" ] || [ -z "$test_cmd" ]; then
    echo "newcomer: README.md has no set-up lines marked '# 1.' and '# 2.' in its Set-up block" >&2
    exit 1
fi
main_cmd='. .venv/bin/activate && python -m bench.run'

names=(install tests "main job")
cmds=("$install_cmd" "$test_cmd" "$main_cmd")
codes=()
times=()
for i in 0 1 2; do
    echo "newcomer: [${names[$i]}] \$ ${cmds[$i]}"
    start=$(date +%s.%N)
    bash -c "${cmds[$i]}" >"$log/$i.out" 2>&1
    codes+=("$?")
    times+=("$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')")
    tail -n 3 "$log/$i.out" | sed 's/^/    /'
done

echo "newcomer: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
for i in 0 1 2; do
    printf 'newcomer: %-9s exit %s  %7.1f s\n' "${names[$i]}" "${codes[$i]}" "${times[$i]}"
    [ "${codes[$i]}" = 0 ] || status=1
done
if grep -q "skipped" "$log/1.out"; then
    echo "newcomer: skipped tests (their reasons):"
    grep -E "^SKIPPED" "$log/1.out" | sed 's/^/    /'
fi
if [ "$status" != 0 ]; then
    for i in 0 1 2; do
        [ "${codes[$i]}" = 0 ] || { echo "newcomer: last lines of ${names[$i]}:"; tail -n 30 "$log/$i.out" | sed 's/^/    /'; }
    done
fi
exit "$status"
