# Shared by scripts/test and scripts/rdkafka-suite: run a command as root, install Debian packages
# (one `apt-get update` per script run). Source it; it expects DEBIAN_FRONTEND=noninteractive.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root apt-get update
        APT_UPDATED=1
    fi
    as_root apt-get install -y --no-install-recommends "$@"
}
