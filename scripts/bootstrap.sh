# Sourced by scripts/serve and scripts/test: system packages and the project's virtualenv.
# Works on a fresh Debian 12 as root; installs only what is missing.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${SBR_VENV:-$ROOT/.venv}

# apt_install PKG...: install the Debian packages that are not installed yet.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "sbr: these Debian packages are needed; run as root or install them: ${missing[*]}" >&2
        exit 1
    fi
    echo "sbr: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# make_venv EXTRAS: create the virtualenv if needed and install SBR (editable) with EXTRAS.
make_venv() {
    local python=${PYTHON:-python3}
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "sbr: Python 3.11 or newer is needed ($python is $("$python" --version 2>&1))" >&2
        exit 1
    fi
    [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT$1"
}

BASE_PACKAGES=(python3 python3-venv python3-dev gcc ca-certificates)

# What the KVM tests need: a private libvirtd and virtlogd (tests/libvirtd.py) running TCG
# domains, qemu-img/qemu-io, libvirt's headers for building libvirt-python, libnbd, and
# saslpasswd2 + the SCRAM module for the daemon's SASL login (the wrong-credentials test),
# and e2fsprogs for the agent guest's ext4 disk (tests/guest_agent.py fetches its kernel,
# busybox and qemu-ga itself with apt-get download; nothing of those is installed).
KVM_PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu
              libvirt-clients libvirt-dev pkg-config python3-libnbd libnbd-bin
              sasl2-bin libsasl2-modules e2fsprogs)

# link_libnbd: libnbd's Python binding is not on PyPI; Debian builds it for the system
# Python. Link it into the virtualenv when both Pythons have the same minor version (the
# module is compiled for one); otherwise the tests read NBD exports with qemu-img instead.
link_libnbd() {
    local site system_minor venv_minor so
    system_minor=$(/usr/bin/python3 -c 'import sys; print(sys.version_info[1])' 2>/dev/null) || return 0
    venv_minor=$("$VENV/bin/python" -c 'import sys; print(sys.version_info[1])')
    [ "$system_minor" = "$venv_minor" ] || return 0
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for so in /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod.cpython-3"$venv_minor"-*.so; do
        [ -e "$so" ] && ln -sf "$so" "$site/"
    done
    return 0
}
