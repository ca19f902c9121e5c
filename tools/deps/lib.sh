# Helpers shared by tools/deps/*.sh (sourced, not run).
# apt_install PKG...: installs only what is missing; `apt-get update` once per
# process and only when something is missing.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "libkoala setup: need root to install: ${missing[*]}" >&2
    return 1
  fi
  echo "libkoala setup: apt-get install ${missing[*]}" >&2
  if [ -z "${KOALA_APT_UPDATED:-}" ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    export KOALA_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >&2
}
