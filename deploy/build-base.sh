#!/usr/bin/env bash
# Builds the base image of nanny's container without any registry: a Debian root assembled from
# the packages installed on this (Debian) machine, the dependency closure of docker-compose (the
# Compose tool the daemon runs inside the container), ca-certificates, libc and a shell, imported
# with `docker import`.
#
#   deploy/build-base.sh            # prints the image it made (or found): nanny-base:<hash>
#
# The tag is a hash of the packages' names and versions and of this script, so a second run with
# nothing changed finds the image and does nothing (about a second). `nanny-base:latest` is
# pointed at it too; deploy/Dockerfile starts FROM it.
set -euo pipefail

roots=(docker-compose ca-certificates libc6 libgcc-s1 dash coreutils)

for tool in dpkg-query docker python3 tar; do
    command -v "$tool" >/dev/null || { echo "build-base: $tool is needed" >&2; exit 1; }
done
for pkg in "${roots[@]}"; do
    if ! dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^ii'; then
        echo "build-base: the Debian package $pkg is not installed here (apt-get install $pkg)" >&2
        exit 1
    fi
done

work=$(mktemp -d -t nanny-base.XXXXXX)
[ -n "$work" ] && [ -d "$work" ] || { echo "build-base: mktemp failed" >&2; exit 1; }
trap 'rm -rf "$work"' EXIT

# The closure, walked over the installed packages (the first installed alternative of each
# dependency; a virtual package resolves to the installed package that provides it).
dpkg-query -W -f='${Package}\t${Version}\t${Provides}\t${Pre-Depends}, ${Depends}\t${db:Status-Abbrev}\n' \
    >"$work/db"
python3 - "$work/db" "${roots[@]}" >"$work/closure" <<'EOF'
import re, sys
db, roots = sys.argv[1], sys.argv[2:]
pkgs, provides = {}, {}
for line in open(db):
    name, version, prov, deps, status = line.rstrip("\n").split("\t")
    if not status.startswith("ii"):
        continue
    pkgs[name] = (version, deps)
    for p in filter(None, (x.strip() for x in prov.split(","))):
        provides.setdefault(p.split()[0], name)
def resolve(alternative):
    name = re.split(r"[\s(]", alternative.strip(), maxsplit=1)[0].split(":")[0]
    return name if name in pkgs else provides.get(name)
seen, todo = set(), list(roots)
while todo:
    pkg = todo.pop()
    if pkg in seen:
        continue
    seen.add(pkg)
    for dep in filter(None, (d.strip() for d in pkgs[pkg][1].split(","))):
        found = [r for r in map(resolve, dep.split("|")) if r]
        if found:
            todo.append(found[0])
for pkg in sorted(seen):
    print(pkg, pkgs[pkg][0])
EOF

hash=$( { cat "$work/closure"; uname -m; cat "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-12)
image="nanny-base:$hash"
if docker image inspect "$image" >/dev/null 2>&1; then
    docker tag "$image" nanny-base:latest
    echo "$image"
    exit 0
fi
echo "build-base: assembling $image from $(wc -l <"$work/closure") installed packages" >&2

# Every file of those packages, at its real path (bookworm's /bin, /lib, /sbin are links into
# /usr: the root gets the same links), without documentation.
cut -d' ' -f1 "$work/closure" | xargs dpkg -L >"$work/paths" 2>/dev/null || true
python3 - "$work/paths" >"$work/files" <<'EOF'
import os, sys
skip = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/locale/", "usr/share/lintian/")
out = set()
def add(path):
    if os.path.isdir(path) and not os.path.islink(path):
        real = os.path.realpath(path)
    else:
        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    rel = real.lstrip("/")
    if rel and not rel.startswith(skip) and os.path.lexists(real):
        out.add(rel)
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("/") and line != "/.":
        add(line)
# The CA bundle ca-certificates generates at install time.
for top, dirs, files in os.walk("/etc/ssl/certs"):
    add(top)
    for f in files:
        add(os.path.join(top, f))
print("\n".join(sorted(out)))
EOF

root="$work/rootfs"
mkdir "$root"
tar -C / --no-recursion -cf - -T "$work/files" | tar -C "$root" -xpf -
for dir in bin sbin lib lib64; do
    if [ -L "/$dir" ] && [ ! -e "$root/$dir" ]; then ln -s "$(readlink "/$dir")" "$root/$dir"; fi
done
mkdir -p "$root/etc" "$root/tmp" "$root/root" "$root/var/run"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' \
    >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

tar -C "$root" -cf - . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "nanny base: $(cut -d' ' -f1 "$work/closure" | tr '\n' ' ')" \
    - "$image" >/dev/null
docker tag "$image" nanny-base:latest
echo "$image"
