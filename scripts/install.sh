#!/usr/bin/env bash
# Installs stt-tun on this machine: the binary, the systemd unit template, shell
# completion, and /etc/stt-tun (mode 0700) with an example configuration that is not
# active. Safe to run again, also for an upgrade: it replaces the binary, the unit and
# the example, and never touches a configuration, a key or a seed that is there.
#
#   scripts/install.sh [--prefix DIR [--system]] [--bin FILE] [--genseed]
#
#   --prefix DIR  install the binary and shell completion under DIR instead of
#                 /usr/local (DIR/bin/stt-tun), and write nothing outside DIR: not
#                 /etc/stt-tun, not the systemd unit, unless --system
#   --system      with --prefix, also install /etc/stt-tun and the systemd unit, whose
#                 paths then follow DIR (without --prefix they are always installed)
#   --bin FILE    the binary to install; default bin/stt-tun, built with `make build`
#                 when it is missing
#   --genseed     also create the network seed /etc/stt-tun/seed (mode 0600) if there
#                 is none: do this on the first node only, then copy the file to the
#                 others
#   DESTDIR=DIR   stage everything under DIR (for packages and tests); every path it
#                 prints includes DIR. The unit is installed only if DIR/etc/systemd
#                 exists, as on a systemd machine
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=/usr/local
prefix_given=""
system=""
bin=""
genseed=""
destdir=${DESTDIR:-}
destdir=${destdir%/}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

while (($#)); do
  case $1 in
    --prefix) (($# > 1)) || die "--prefix needs a directory"; prefix=$2; prefix_given=1; shift 2 ;;
    --prefix=*) prefix=${1#*=}; prefix_given=1; shift ;;
    --system) system=1; shift ;;
    --bin) (($# > 1)) || die "--bin needs a file"; bin=$2; shift 2 ;;
    --bin=*) bin=${1#*=}; shift ;;
    --genseed) genseed=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case $prefix in /*) ;; *) die "--prefix must be an absolute path, not '$prefix'" ;; esac
prefix=${prefix%/}
# Outside the prefix: /etc/stt-tun and the unit. Always without --prefix; with it,
# only when asked.
[ -z "$prefix_given" ] && system=1
if [ -n "$genseed" ] && [ -z "$system" ]; then
  die "--genseed writes /etc/stt-tun/seed, outside --prefix $prefix: add --system"
fi

if [ -z "$destdir" ] && [ -n "$system" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (or set DESTDIR to stage the files somewhere else)"
fi
if [ -n "$destdir" ]; then
  say "staging under DESTDIR=$destdir"
fi

if [ -z "$bin" ]; then
  bin=$repo/bin/stt-tun
  if [ ! -x "$bin" ]; then
    say "building $bin"
    command -v go >/dev/null || die "$bin is missing and go is not installed to build it"
    make -C "$repo" --no-print-directory build >/dev/null
  fi
fi
[ -x "$bin" ] || die "$bin is not an executable"
version=$("$bin" version) || die "$bin does not run"

umask 022 # what is not secret is readable by all, whatever the caller's umask
bindir=$destdir$prefix/bin
etc=$destdir/etc/stt-tun
unitdir=$destdir/etc/systemd/system

# The binary: replaced in one rename, so that a running daemon keeps its old inode and a
# command started meanwhile sees either the old or the new file, never half of one.
install -d -m 0755 "$bindir"
install -m 0755 "$bin" "$bindir/.stt-tun.new"
mv -f "$bindir/.stt-tun.new" "$bindir/stt-tun"
say "installed $bindir/stt-tun ($version)"

# Shell completion, where bash-completion and zsh look for it under the prefix.
install -d -m 0755 "$destdir$prefix/share/bash-completion/completions" "$destdir$prefix/share/zsh/site-functions"
"$bin" completion bash >"$destdir$prefix/share/bash-completion/completions/stt-tun"
"$bin" completion zsh >"$destdir$prefix/share/zsh/site-functions/_stt-tun"
say "installed bash and zsh completion in $destdir$prefix/share"

if [ -z "$system" ]; then
  say "skipped /etc/stt-tun and the systemd unit: outside --prefix $prefix (add --system to install them)"
  exit 0
fi

# Configuration directory: secrets live here.
if [ -d "$etc" ] && [ "$(stat -c %a "$etc")" != 700 ]; then
  say "tightened $etc from mode $(stat -c %a "$etc") to 0700"
fi
install -d -m 0700 "$etc"
chmod 0700 "$etc"

# The example is named .toml.sample so that no `stt-tun up NAME` picks it up.
umask 077
cat >"$etc/.example.toml.sample.new" <<'EOF'
# Example stt-tun configuration; see docs/configuration.md for every key.
# To use it: cp example.toml.sample alpha.toml, edit, then `stt-tun up alpha`
# (or `systemctl enable --now stt-tun@alpha`). The link is named after the file.

[interface]
node_name = "alpha"                    # this node's name; peers list it as a [[peer]] name
addresses = ["10.99.0.1/24"]           # this node's address inside the tunnel
listen_port = 51900                    # UDP; open it in the firewall
seed_file = "/etc/stt-tun/seed"        # the network seed: stt-tun genseed, same file on every node
key_file = "/etc/stt-tun/alpha.key"    # created on first start; stt-tun status shows its public key

[[peer]]
name = "beta"                          # the peer's node_name
endpoint = "192.0.2.2:51900"           # where beta listens; leave out if beta dials in
allowed_prefixes = ["10.99.0.2/32"]    # beta's tunnel address, plus any subnet behind it
persistent_keepalive = "25s"           # keeps NAT state open; "0s" (off) on public hosts
EOF
chmod 0600 "$etc/.example.toml.sample.new"
mv -f "$etc/.example.toml.sample.new" "$etc/example.toml.sample"
say "installed $etc/example.toml.sample (not active)"

if [ -n "$genseed" ]; then
  if [ -e "$etc/seed" ]; then
    say "kept the existing $etc/seed"
  else
    "$bin" genseed >"$etc/.seed.new"
    chmod 0600 "$etc/.seed.new"
    mv "$etc/.seed.new" "$etc/seed"
    say "created $etc/seed: copy it to every other node of this network, mode 0600"
  fi
fi
umask 022

if [ -d "$destdir/etc/systemd" ]; then
  install -d -m 0755 "$unitdir"
  sed "s|/usr/local/bin/stt-tun|$prefix/bin/stt-tun|g" "$repo/scripts/stt-tun@.service" >"$unitdir/.stt-tun@.service.new"
  chmod 0644 "$unitdir/.stt-tun@.service.new"
  mv -f "$unitdir/.stt-tun@.service.new" "$unitdir/stt-tun@.service"
  say "installed $unitdir/stt-tun@.service"
  if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
else
  say "no $destdir/etc/systemd: skipped the systemd unit"
fi
