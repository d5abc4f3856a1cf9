#!/bin/bash
# Build guardian's Debian package from a clean copy of this tree.
#
#   packaging/build-deb.sh [OUTDIR]      (default: dist/, which git ignores)
#
# The copy holds the files git knows or would add (tracked, plus untracked ones
# that .gitignore does not exclude), never build products, caches or a
# virtualenv; packaging/debian becomes its debian/.  dpkg-buildpackage builds
# the binary package there, lintian checks it, and the .deb, .buildinfo and
# .changes land in OUTDIR.  Nothing is written into the source tree but OUTDIR.
# Build dependencies: see Build-Depends in packaging/debian/control
# (scripts/setup.sh installs them).
set -euo pipefail
# Debian's own python3 and tools only: no virtualenv, pyenv or PYTHONPATH leaks
# into the build (pybuild runs "python3.11" from PATH).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYTHONSTARTUP PIP_REQUIRE_VIRTUALENV

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(dpkg-parsechangelog -l "$top/packaging/debian/changelog" -S Version)
work=$(mktemp -d "${TMPDIR:-/tmp}/guardian-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/guardian-${version%%-*}
mkdir "$src"

cd "$top"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
              if [ -f "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi   # skip deleted
          done \
        | tar --null --no-recursion -T - -cf - | tar -xf - -C "$src"
else
    tar --exclude-vcs --exclude=__pycache__ --exclude='*.egg-info' --exclude=.venv \
        --exclude=.tox --exclude=build --exclude=dist --exclude='.*_cache' \
        --exclude=debian -cf - . | tar -xf - -C "$src"
fi
rm -rf "$src/debian"
cp -a "$src/packaging/debian" "$src/debian"

cd "$src"
dpkg-checkbuilddeps
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -S Timestamp)} \
    dpkg-buildpackage --build=binary --no-sign

cd "$work"
changes=$(ls ./*.changes)
debs=$(ls ./*.deb)
status=0
if command -v lintian >/dev/null; then
    echo "== lintian"
    lintian --info --display-level '>=pedantic' --fail-on error "$changes" $debs || status=$?
fi
cp $debs ./*.buildinfo ./*.changes "$out/"
echo "== built into $out:"
(cd "$out" && ls -l $(basename -a $debs))
exit "$status"
